//! [`Deadline`]: when a blocking call gives up. Re-exported as `mp_core::Deadline` and
//! `mp_core::futex::Deadline`; a module of its own so that both the futex calls and the wait
//! policy (`crate::wait`) name it without importing each other.

use std::time::{Duration, Instant};

/// A point in time after which a blocking call gives up; `Deadline::never()` for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(When);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Never,
    /// A zero timeout (the `_nowait` calls): already passed, known without reading the clock.
    Now,
    At(Instant),
}

impl Deadline {
    /// No deadline: wait forever.
    pub fn never() -> Deadline {
        Deadline(When::Never)
    }

    /// A deadline `timeout` from now; `None` means never. A zero timeout reads no clock.
    pub fn after(timeout: Option<Duration>) -> Deadline {
        Deadline(match timeout {
            None => When::Never,
            Some(t) if t.is_zero() => When::Now,
            Some(t) => When::At(Instant::now().checked_add(t).unwrap_or_else(far_future)),
        })
    }

    /// The time left: `None` when there is no deadline, `Some(ZERO)` once it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        match self.0 {
            When::Never => None,
            When::Now => Some(Duration::ZERO),
            When::At(at) => Some(at.saturating_duration_since(Instant::now())),
        }
    }

    /// True once the deadline has passed (never true for `never()`).
    pub fn expired(&self) -> bool {
        match self.0 {
            When::Never => false,
            When::Now => true,
            When::At(at) => Instant::now() >= at,
        }
    }

    /// True when there is a deadline.
    pub fn is_finite(&self) -> bool {
        self.0 != When::Never
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        let never = Deadline::never();
        assert!(!never.expired() && never.remaining().is_none() && !never.is_finite());
        assert_eq!(Deadline::after(None), never);
        let now = Deadline::after(Some(Duration::ZERO));
        assert!(now.expired() && now.is_finite());
        assert_eq!(now.remaining(), Some(Duration::ZERO));
        let later = Deadline::after(Some(Duration::from_secs(60)));
        assert!(!later.expired() && later.is_finite());
        assert!(later.remaining().unwrap() > Duration::from_secs(59));
        let far = Deadline::after(Some(Duration::MAX));
        assert!(!far.expired() && far.remaining().unwrap() > Duration::from_secs(3600));
        let soon = Deadline::after(Some(Duration::from_millis(5)));
        std::thread::sleep(Duration::from_millis(10));
        assert!(soon.expired());
        assert_eq!(soon.remaining(), Some(Duration::ZERO));
    }
}
