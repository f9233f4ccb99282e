//! What every scenario does with its children: start them so they die with the campaign, and
//! end them with a bound.

use std::time::Duration;

use mp::process::{Child, ClosureProcess, ProcessError};
use mp_core::Message;

use crate::harness::Round;

/// The bound on every join of a child that should end by itself.
pub(crate) const JOIN_BOUND: Duration = Duration::from_secs(5);

/// Starts `f` in a forked daemon child: it dies with the campaign (PR_SET_PDEATHSIG), so a
/// campaign ended by its watchdog leaves no orphan.
pub(crate) fn fork<R: Message, F: FnOnce() -> R + Send + 'static>(
    f: F,
) -> Result<Child<R>, String> {
    ClosureProcess::new(f)
        .daemon(true)
        .start()
        .map_err(|e| format!("start a child: {e}"))
}

/// Joins a child that was sent `SIGKILL`: it must report that signal.
pub(crate) fn join_killed<R: Message>(r: &mut Round<'_>, c: &mut Child<R>, role: &str) {
    match c.join_timeout(JOIN_BOUND) {
        Err(ProcessError::Signaled { signal: 9, .. }) => {}
        // It may have finished its loop just before the signal.
        Ok(Some(_)) => {}
        Ok(None) => {
            r.hang(format!("the killed {role} did not end"));
            let _ = c.kill();
            let _ = c.join();
        }
        Err(e) => r.wrong(format!("the killed {role} ended with {e}")),
    }
}

/// Joins a child that should end by itself with `Ok`.
pub(crate) fn join_ok<R: Message>(r: &mut Round<'_>, c: &mut Child<R>, role: &str) -> Option<R> {
    match c.join_timeout(JOIN_BOUND) {
        Ok(Some(v)) => Some(v),
        Ok(None) => {
            r.hang(format!("the {role} did not end"));
            let _ = c.kill();
            let _ = c.join();
            None
        }
        Err(e) => {
            r.wrong(format!("the {role} ended with {e}"));
            None
        }
    }
}

/// Busy work of a few microseconds that the optimiser keeps.
pub(crate) fn spin(n: u32) {
    let mut x = 0u64;
    for i in 0..n {
        x = std::hint::black_box(x.wrapping_add(u64::from(i)));
    }
}
