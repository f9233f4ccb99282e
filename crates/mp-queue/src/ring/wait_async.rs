//! The async side of the ring's waits (feature `async`): a consumer or producer counts itself
//! in `c_waiters` / `p_waiters` exactly as a sleeping one does, so that producers and
//! consumers wake it, and awaits the wake word through mp-core's reactor instead of sleeping
//! in `futex::wait`.

use std::any::Any;
use std::sync::Arc;

use super::*;

/// A waiter counted in `c_waiters` or `p_waiters` until dropped (also when its future is).
pub(crate) struct Counted<'a>(&'a AtomicU32);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ring {
    /// Counts a consumer as waiting (the first half of the handshake of `wait_for_data`):
    /// returns the wake word's value read before, and the count to keep while it waits.
    pub(crate) fn announce_consumer(&self) -> (u32, Counted<'_>) {
        let m = self.meta();
        let seq = m.data_seq.load(Ordering::Acquire);
        // SeqCst: pairs with the SeqCst load of `c_waiters` in `wake_consumers`.
        m.c_waiters.fetch_add(1, Ordering::SeqCst);
        (seq, Counted(&m.c_waiters))
    }

    /// Counts a producer as waiting for room (as `put` does before its last try).
    pub(crate) fn announce_producer(&self) -> (u32, Counted<'_>) {
        let m = self.meta();
        let seq = m.space_seq.load(Ordering::SeqCst);
        m.p_waiters.fetch_add(1, Ordering::SeqCst);
        (seq, Counted(&m.p_waiters))
    }

    /// Resolves when a message was published after `seq` was read, or after a nap (to look
    /// again for dead peers, as the blocking wait does).
    pub(crate) async fn data_after(&self, seq: u32, keep: Arc<dyn Any + Send + Sync>) {
        let m = self.meta();
        // SeqCst: the consumer's re-check of the Dekker handshake (see `wake_consumers`).
        if m.tail.load(Ordering::SeqCst) == m.head.load(Ordering::SeqCst)
            && m.data_seq.load(Ordering::SeqCst) == seq
        {
            mp_core::reactor::changed(&m.data_seq, seq, keep, NAP).await;
        }
    }

    /// Resolves when a consumer made room after `seq` was read, or after a nap.
    pub(crate) async fn space_after(&self, seq: u32, keep: Arc<dyn Any + Send + Sync>) {
        let m = self.meta();
        if m.space_seq.load(Ordering::SeqCst) == seq {
            mp_core::reactor::changed(&m.space_seq, seq, keep, NAP).await;
        }
    }
}
