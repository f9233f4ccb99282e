//! [`Queue::get_async`] and [`Queue::put_async`] (feature `async`).

use std::any::Any;
use std::sync::Arc;

use mp_core::Message;

use crate::error::{Error, PutError};
use crate::queue::Queue;

impl<T: Message> Queue<T> {
    /// [`get`](Self::get) for async code (feature `async`): resolves with the oldest item.
    /// The task neither spins nor holds a thread while the queue is empty: it is counted
    /// among the queue's sleeping consumers (so a producer in any process wakes it) and mp-core's
    /// reactor sleeps on the queue's wake word for every waiting future of the process.
    ///
    /// Dropping the future loses nothing: an item is taken only in the poll that returns it.
    /// Each try is [`get_nowait`](Self::get_nowait), which may wait a few milliseconds for
    /// another consumer that holds the consumer lock.
    pub async fn get_async(&self) -> Result<T, Error> {
        let keep: Arc<dyn Any + Send + Sync> = Arc::new(self.ring().region().clone());
        loop {
            let (seq, _counted) = self.ring().announce_consumer();
            match self.get_nowait() {
                Err(Error::Empty) => {}
                r => return r,
            }
            self.ring().data_after(seq, keep.clone()).await;
        }
    }

    /// [`put`](Self::put) for async code (feature `async`): resolves when `item` is in the
    /// queue, waiting for room without spinning or holding a thread (counted among the
    /// queue's waiting producers, woken by a consumer in any process). A failure other than
    /// "full" gives the item back, as `put` does; dropping the future drops the item unsent.
    pub async fn put_async(&self, item: T) -> Result<(), PutError<T>> {
        let keep: Arc<dyn Any + Send + Sync> = Arc::new(self.ring().region().clone());
        let mut item = item;
        loop {
            let (seq, _counted) = self.ring().announce_producer();
            match self.put_nowait(item) {
                Err(PutError::Full(back)) => item = back,
                r => return r,
            }
            self.ring().space_after(seq, keep.clone()).await;
        }
    }
}
