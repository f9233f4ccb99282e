//! mp's implementations of the workloads, one per primitive as it lands.
//!
//! Children are started the way the workload says: raw forks from [`crate::proc`] for the
//! messaging and locking workloads (process creation is not what they measure), mp's own
//! `Process` for the process start workloads and mp's `Pool` for the pool workloads.

use crate::Measure;

/// mp's implementation of `workload`, or `None` while its primitive is not built.
pub fn implementation(workload: &str) -> Option<Measure> {
    let _ = workload;
    None
}

/// mp's pool CPU-bound batch on 1 and on 2 workers, or `None` while the pool is not built.
pub fn scaling_pair() -> Option<(Measure, Measure)> {
    None
}
