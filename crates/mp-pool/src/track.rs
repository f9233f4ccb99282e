//! [`Progress`]: progress of one or more calls (a `map`, an `imap_unordered`, a batch of
//! `apply_async`), with an ETA, reported to a callback (and, with the cargo feature
//! `progress`, drawn as an indicatif bar).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::lock;

/// Where tracked work stands, as given to a [`Progress`] callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProgressState {
    /// Tasks (items) finished, successfully or not.
    pub done: u64,
    /// Of those, the ones that failed (their call failed: a panic, a timeout, ...).
    pub failed: u64,
    /// Tasks submitted so far, or `None` while some tracked input's length is unknown (an
    /// `imap` over an iterator without an exact size, unless given by
    /// [`Progress::with_total`]).
    pub total: Option<u64>,
    /// Since the first task was submitted.
    pub elapsed: Duration,
    /// The time left at the pace so far (`elapsed × left / done`), once a task is done and
    /// the total is known.
    pub eta: Option<Duration>,
}

type Callback = Arc<dyn Fn(&ProgressState) + Send + Sync>;

#[derive(Default)]
struct State {
    done: u64,
    failed: u64,
    total: u64,
    /// Set by `with_total`: the total does not follow submissions.
    fixed: bool,
    /// Some tracked input's length is unknown.
    unknown: bool,
    started: Option<Instant>,
}

impl State {
    fn snapshot(&self) -> ProgressState {
        let elapsed = self.started.map_or(Duration::ZERO, |t| t.elapsed());
        let total = (!self.unknown || self.fixed).then_some(self.total);
        let eta = match total {
            Some(t) if self.done > 0 => {
                let left = t.saturating_sub(self.done) as f64;
                Some(elapsed.mul_f64(left / self.done as f64))
            }
            _ => None,
        };
        ProgressState {
            done: self.done,
            failed: self.failed,
            total,
            elapsed,
            eta,
        }
    }
}

struct Shared {
    st: Mutex<State>,
    callback: Mutex<Option<Callback>>,
    /// Held while a state is delivered to the callback (and the bar): deliveries are one at
    /// a time, each with the latest state, so the callback sees `done` grow and its last
    /// call has the final state.
    delivery: Mutex<()>,
    /// A change not delivered yet.
    pending: AtomicBool,
    #[cfg(feature = "progress")]
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

#[cfg(feature = "progress")]
impl Drop for Shared {
    /// The bar stays on stderr at its last state (as indicatif's `finish`).
    fn drop(&mut self) {
        if let Some(bar) = lock(&self.bar).take() {
            bar.finish();
        }
    }
}

/// Tracks the progress of the calls it is given to ([`Tasks::track`](crate::Tasks::track),
/// [`Pool::track`](crate::Pool::track)): one `map`, an `imap_unordered`, or a batch of
/// `apply_async` calls sharing one tracker. Each finished task calls the
/// [`on_update`](Self::on_update) callback with a [`ProgressState`] (done, failed, total,
/// elapsed, ETA). Callbacks run in the parent, on the pool's supervisor thread, as result
/// callbacks do (the same rules: no waiting on the pool there), one at a time, each with the
/// latest state, so `done` grows from one call to the next and the last call has the final
/// state. When a tracked call's result is ready, its tasks are counted in
/// [`state`](Self::state); the callback may hear of them a moment later, when another
/// thread was calling it then. Clones share the progress.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = mp_pool::Pool::new(2)?;
/// let last = Arc::new(Mutex::new(None));
/// let seen = last.clone();
/// let progress = mp_pool::Progress::new().on_update(move |p| *seen.lock().unwrap() = Some(*p));
/// let batch: Vec<_> = (0..10)
///     .map(|x| pool.track(&progress).apply_async(square, x))
///     .collect::<Result<_, _>>()?;
/// for r in &batch {
///     r.wait();
/// }
/// let state = progress.state();
/// assert_eq!((state.done, state.total), (10, Some(10)));
/// # Ok::<(), mp_pool::Error>(())
/// ```
#[derive(Clone)]
pub struct Progress {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

impl Progress {
    /// A tracker with nothing submitted yet, and no callback.
    pub fn new() -> Progress {
        Progress {
            shared: Arc::new(Shared {
                st: Mutex::new(State::default()),
                callback: Mutex::new(None),
                delivery: Mutex::new(()),
                pending: AtomicBool::new(false),
                #[cfg(feature = "progress")]
                bar: Mutex::new(None),
            }),
        }
    }

    /// Calls `f` after every change (tasks submitted or finished), replacing any callback
    /// set before.
    pub fn on_update(self, f: impl Fn(&ProgressState) + Send + Sync + 'static) -> Progress {
        *lock(&self.shared.callback) = Some(Arc::new(f));
        self
    }

    /// The total to report, instead of the number of tasks submitted (for an `imap` over
    /// an input whose length the iterator does not tell).
    pub fn with_total(self, total: u64) -> Progress {
        {
            let mut st = lock(&self.shared.st);
            st.total = total;
            st.fixed = true;
        }
        self.redraw();
        self
    }

    /// Also draws an [indicatif](https://docs.rs/indicatif) bar on stderr, with the ETA
    /// (cargo feature `progress`).
    #[cfg(feature = "progress")]
    pub fn bar(self) -> Progress {
        *lock(&self.shared.bar) = Some(crate::progress::bar(None));
        self.redraw();
        self
    }

    /// Where the tracked work stands now.
    pub fn state(&self) -> ProgressState {
        lock(&self.shared.st).snapshot()
    }

    /// `n` tasks were submitted (`None`: an input of unknown length).
    pub(crate) fn submitted(&self, n: Option<u64>) {
        {
            let mut st = lock(&self.shared.st);
            st.started.get_or_insert_with(Instant::now);
            match n {
                Some(n) if !st.fixed => st.total = st.total.saturating_add(n),
                Some(_) => {}
                None => st.unknown = true,
            }
        }
        self.redraw();
    }

    /// `done` tasks finished, `failed` of them failed.
    pub(crate) fn finished(&self, done: u64, failed: u64) {
        if done == 0 {
            return;
        }
        {
            let mut st = lock(&self.shared.st);
            let mut done = done;
            if !st.unknown || st.fixed {
                // A failed chunk counts its full size: the last one may be shorter.
                done = done.min(st.total.saturating_sub(st.done));
            }
            st.done = st.done.saturating_add(done);
            st.failed = st.failed.saturating_add(failed.min(done));
        }
        self.redraw();
    }

    /// Tells the callback (and the bar) of the latest state. A thread that finds another
    /// delivering leaves its change to it (it looks at `pending` again after it let go of
    /// `delivery`); so does a callback that submits tracked work, instead of deadlocking.
    fn redraw(&self) {
        let sh = &self.shared;
        // SeqCst: the flag and the lock form a Dekker pair with the deliverer's
        // `pending.load` after it unlocked.
        sh.pending.store(true, Ordering::SeqCst);
        loop {
            let guard = match sh.delivery.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            if !sh.pending.swap(false, Ordering::SeqCst) {
                return;
            }
            self.deliver();
            drop(guard);
            if !sh.pending.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Delivers the latest state (with `delivery` held).
    fn deliver(&self) {
        let state = self.state();
        #[cfg(feature = "progress")]
        if let Some(bar) = lock(&self.shared.bar).as_ref() {
            if let Some(t) = state.total {
                bar.set_length(t);
                bar.set_style(crate::progress::style(true));
            }
            bar.set_position(state.done);
        }
        let cb = lock(&self.shared.callback).clone();
        if let Some(cb) = cb {
            // A callback that panics must not take the pool's thread with it (as for
            // result callbacks).
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(&state))).is_err() {
                eprintln!("mp-pool: a progress callback panicked (ignored)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_eta() {
        let p = Progress::new();
        assert_eq!(p.state().total, Some(0));
        p.submitted(Some(4));
        p.finished(1, 0);
        let s = p.state();
        assert_eq!((s.done, s.failed, s.total), (1, 0, Some(4)));
        assert!(s.eta.is_some());
        p.submitted(None);
        assert_eq!(p.state().total, None, "an input of unknown length");
        assert_eq!(p.state().eta, None);
        let p = p.with_total(10);
        p.finished(3, 3);
        let s = p.state();
        assert_eq!((s.done, s.failed, s.total), (4, 3, Some(10)));
    }
}
