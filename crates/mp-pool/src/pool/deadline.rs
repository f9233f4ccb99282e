//! Timeouts: the supervisor stops a task that runs past its deadline (SIGKILL to its
//! worker, which is then replaced like any dead worker, failing the task with
//! `TaskTimeout`; see `slot` for the protocol), and kills a worker whose initializer runs
//! past `worker_init_timeout` (which breaks the pool with `InitTimeout`).

use std::sync::atomic::Ordering;

use super::{Inner, Workers};
use crate::slot::{mono_ns, nanos};

impl Inner {
    /// Kills the workers whose task or initializer ran past its deadline. Called by the
    /// supervisor every few milliseconds, with the workers lock held.
    pub(super) fn check_deadlines(&self, w: &mut Workers) {
        let now = mono_ns();
        let init_timeout = match (&self.cfg.init, self.cfg.init_timeout) {
            (Some(_), Some(t)) => Some(nanos(t)),
            _ => None,
        };
        for e in w.list.iter_mut() {
            let Some(child) = &e.child else {
                continue;
            };
            if let Some(word) = e.slot.expired(now) {
                // The swap keeps the worker on the expired item (see `slot`): the kill hits
                // that task and no other.
                if e.slot.stop(word) {
                    let _ = child.kill();
                }
                continue;
            }
            if let Some(t) = init_timeout {
                // Relaxed: a stale 0 only delays the kill to the next look; `ready` is read
                // again after the worker died, ordered by its death.
                let ready = e.slot.ready.load(Ordering::Relaxed) != 0;
                let spawned = e.slot.spawned.load(Ordering::Relaxed);
                if !ready && !e.init_timed_out && now.saturating_sub(spawned) >= t {
                    e.init_timed_out = true;
                    let _ = child.kill();
                }
            }
        }
    }
}
