//! [`Insights`] (mpire's `insights`): per worker, where its time went and how much it did,
//! and the slowest tasks. Workers measure with Instant deltas and publish their counters to
//! their slot after each chunk (see `meter`); [`Pool::insights`](crate::Pool::insights)
//! reads the slots, adding up what the workers that ran in the same place before did.

use std::fmt;
use std::time::Duration;

use crate::slot::{Counters, SLOWEST};

/// One of the slowest tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlowTask {
    /// How long the function call took.
    pub duration: Duration,
    /// The worker that ran it.
    pub pid: u32,
    /// Which call on the pool it belonged to: 1 for the pool's first call (`map`, `apply`,
    /// `imap`, ...), counting up.
    pub call: u64,
    /// Its item's index in that call's input.
    pub item: u64,
}

/// One worker place of the pool: the worker running there now and those it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInsights {
    /// The place's index (0 to `processes - 1`).
    pub place: usize,
    /// The pid of the worker there now (or the last one).
    pub pid: u32,
    /// Worker processes started in this place (1 + replacements).
    pub started: u64,
    /// From the parent starting a worker to its first wait for work: process start, the
    /// initializer, and (spawn) the executable's start.
    pub starting: Duration,
    /// Running tasks: decoding their arguments and calling the function.
    pub running: Duration,
    /// Waiting for work.
    pub waiting: Duration,
    /// Serializing and sending results.
    pub sending: Duration,
    /// Tasks (items) whose function call returned.
    pub tasks: u64,
    /// Chunks finished.
    pub chunks: u64,
    /// The slowest tasks of this place, slowest first (at most 5).
    pub slowest: Vec<SlowTask>,
}

/// What the workers of a pool did (mpire's `insights`), from
/// [`Pool::insights`](crate::Pool::insights), for a pool built with
/// [`PoolBuilder::insights`](crate::PoolBuilder::insights). `Display` prints a table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Insights {
    /// One entry per worker place.
    pub workers: Vec<WorkerInsights>,
    /// The slowest tasks of the whole pool, slowest first (at most 5).
    pub slowest: Vec<SlowTask>,
}

impl Insights {
    /// Tasks done by all the workers.
    pub fn tasks(&self) -> u64 {
        self.workers.iter().map(|w| w.tasks).sum()
    }
}

fn slowest(mut v: Vec<SlowTask>) -> Vec<SlowTask> {
    v.sort_by_key(|t| std::cmp::Reverse(t.duration));
    v.truncate(SLOWEST);
    v
}

/// What the workers that ran in one place and exited did.
#[derive(Debug, Default)]
pub(crate) struct Past {
    sums: Counters,
    slow: Vec<SlowTask>,
}

impl Past {
    /// Adds up the counters of worker `pid`, which exited.
    pub(crate) fn add(&mut self, pid: u32, c: &Counters) {
        let s = &mut self.sums;
        s.start_ns = s.start_ns.saturating_add(c.start_ns);
        s.run_ns = s.run_ns.saturating_add(c.run_ns);
        s.wait_ns = s.wait_ns.saturating_add(c.wait_ns);
        s.send_ns = s.send_ns.saturating_add(c.send_ns);
        s.tasks = s.tasks.saturating_add(c.tasks);
        s.chunks = s.chunks.saturating_add(c.chunks);
        let mut slow = std::mem::take(&mut self.slow);
        slow.extend(slow_tasks(pid, c));
        self.slow = slowest(slow);
    }

    /// The place's insights: these plus the counters `c` of worker `pid` there now.
    pub(crate) fn with(
        &self,
        place: usize,
        pid: u32,
        started: u64,
        c: &Counters,
    ) -> WorkerInsights {
        let mut all = Past {
            sums: self.sums,
            slow: self.slow.clone(),
        };
        all.add(pid, c);
        let s = all.sums;
        WorkerInsights {
            place,
            pid,
            started,
            starting: Duration::from_nanos(s.start_ns),
            running: Duration::from_nanos(s.run_ns),
            waiting: Duration::from_nanos(s.wait_ns),
            sending: Duration::from_nanos(s.send_ns),
            tasks: s.tasks,
            chunks: s.chunks,
            slowest: all.slow,
        }
    }
}

fn slow_tasks(pid: u32, c: &Counters) -> impl Iterator<Item = SlowTask> + '_ {
    c.slowest
        .iter()
        .filter(|e| e.0 != 0)
        .map(move |&(ns, call, item)| SlowTask {
            duration: Duration::from_nanos(ns),
            pid,
            call,
            item,
        })
}

/// Builds the pool's insights from its places.
pub(crate) fn gather(workers: Vec<WorkerInsights>) -> Insights {
    let all = workers
        .iter()
        .flat_map(|w| w.slowest.iter().copied())
        .collect();
    Insights {
        slowest: slowest(all),
        workers,
    }
}

/// A duration in a table cell.
struct D(Duration);

impl fmt::Display for D {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs_f64();
        let text = if s >= 1.0 {
            format!("{s:.2}s")
        } else if s >= 1e-3 {
            format!("{:.2}ms", s * 1e3)
        } else {
            format!("{:.1}µs", s * 1e6)
        };
        f.pad(&text)
    }
}

impl fmt::Display for Insights {
    /// A table: one row per worker place, a total row, then the slowest tasks.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>6} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>9} {:>8}",
            "worker",
            "pid",
            "started",
            "starting",
            "running",
            "waiting",
            "sending",
            "tasks",
            "chunks"
        )?;
        let mut total = (
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        for w in &self.workers {
            writeln!(
                f,
                "{:>6} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>9} {:>8}",
                w.place,
                w.pid,
                w.started,
                D(w.starting),
                D(w.running),
                D(w.waiting),
                D(w.sending),
                w.tasks,
                w.chunks
            )?;
            total.0 += w.starting;
            total.1 += w.running;
            total.2 += w.waiting;
            total.3 += w.sending;
        }
        let started: u64 = self.workers.iter().map(|w| w.started).sum();
        let chunks: u64 = self.workers.iter().map(|w| w.chunks).sum();
        writeln!(
            f,
            "{:>6} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>9} {:>8}",
            "total",
            "",
            started,
            D(total.0),
            D(total.1),
            D(total.2),
            D(total.3),
            self.tasks(),
            chunks
        )?;
        if !self.slowest.is_empty() {
            writeln!(f, "slowest tasks:")?;
            for t in &self.slowest {
                writeln!(
                    f,
                    "  {:>10}  call {} item {} (pid {})",
                    D(t.duration),
                    t.call,
                    t.item,
                    t.pid
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_add_up_and_print_a_table() {
        let mut c = Counters {
            run_ns: 2_000_000,
            tasks: 3,
            chunks: 1,
            ..Counters::default()
        };
        c.item(1_500_000, 1, 7);
        let mut past = Past::default();
        past.add(10, &c);
        let w = past.with(0, 11, 2, &c);
        assert_eq!((w.tasks, w.chunks, w.pid, w.started), (8, 2, 11, 2));
        assert_eq!(w.running, Duration::from_millis(4));
        assert_eq!(w.slowest.len(), 2);
        let i = gather(vec![w]);
        assert_eq!(i.tasks(), 8);
        let table = i.to_string();
        assert!(
            table.contains("running") && table.contains("total"),
            "{table}"
        );
        assert!(table.contains("call 1 item 7 (pid 10)"), "{table}");
    }
}
