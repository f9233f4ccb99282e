//! Is the process that holds something still alive?
//!
//! A pid alone cannot say: pids are reused. A holder is identified by its pid *and* its start
//! time (field 22 of `/proc/<pid>/stat`, in clock ticks since boot), which no later process with
//! the same pid can share. Checks read `/proc`, so they belong on slow paths only (a waiter that
//! has already waited a while), never on a fast path.

/// The start time of `pid` (clock ticks since boot), or `None` when there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or parentheses itself:
    // the fields after it start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts with field 3 (state); the start time is field 22.
    let field = rest.split_whitespace().nth(22 - 3)?;
    field.parse().ok()
}

/// The start time of this process.
pub fn my_start_time() -> u64 {
    static MINE: std::sync::OnceLock<(u32, u64)> = std::sync::OnceLock::new();
    let pid = std::process::id();
    match MINE.get() {
        // A forked child inherits the cell: only trust it for the pid that filled it.
        Some(&(p, t)) if p == pid => t,
        _ => {
            let t = start_time(pid).unwrap_or(0);
            let _ = MINE.set((pid, t));
            t
        }
    }
}

/// True when a process with this pid exists and, if `start` is non-zero, started at `start`
/// (so it is the same process, not a later one that reused the pid). A zombie (dead, not yet
/// reaped) counts as dead.
pub fn is_alive(pid: u32, start: u64) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 1..].split_whitespace();
    let state = fields.next().unwrap_or("X");
    if state == "Z" || state == "X" {
        return false;
    }
    if start == 0 {
        return true;
    }
    // `fields` is now at field 4; the start time is field 22.
    fields
        .nth(22 - 4)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|t| t == start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_is_alive_and_reuse_is_detected() {
        let me = std::process::id();
        let t = my_start_time();
        assert!(t > 0);
        assert_eq!(start_time(me), Some(t));
        assert!(is_alive(me, t));
        assert!(is_alive(me, 0));
        assert!(
            !is_alive(me, t + 1),
            "another start time is another process"
        );
        assert!(!is_alive(0, 0));
        assert!(!is_alive(u32::MAX - 1, 0));
    }
}
