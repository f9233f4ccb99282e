//! The campaign's machinery: a seeded random generator, the faults, the tally of what went
//! wrong in each scenario, and the watchdog that turns a hang into a report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A small, fast, seeded generator (xorshift64*): the same seed gives the same rounds.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for one round of one scenario of a campaign seed.
    pub(crate) fn for_round(seed: u64, scenario: &str, round: u64) -> Rng {
        let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
        for b in scenario.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h ^= round.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        Rng(h | 1)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// A duration between `lo` and `hi` microseconds.
    pub(crate) fn micros(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_micros(lo + self.below(hi.saturating_sub(lo) + 1))
    }
}

/// What is done to the victim process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// `SIGKILL` at a random moment.
    Kill,
    /// `SIGSTOP` at a random moment, `SIGCONT` after a random time: a frozen peer.
    Stop,
    /// A peer that writes random bytes into the shared memory the others use.
    Garbage,
    /// A process that runs out of a resource: the limit it runs under, as the table names it
    /// (`RLIMIT_NOFILE`, a small tmpfs, `RLIMIT_NPROC`).
    Exhaustion(&'static str),
}

impl Fault {
    /// The name printed in the table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL",
            Fault::Stop => "SIGSTOP/SIGCONT",
            Fault::Garbage => "random bytes",
            Fault::Exhaustion(limit) => limit,
        }
    }
}

/// Sends `SIGKILL` to `pid` and returns when it was sent.
pub(crate) fn kill(pid: u32) -> Instant {
    // SAFETY: kill has no memory effects; `pid` is a child of this process, not yet reaped, so
    // the number cannot name another process.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    Instant::now()
}

/// Freezes `pid` with `SIGSTOP`.
pub(crate) fn stop(pid: u32) {
    // SAFETY: as for `kill`.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
}

/// Lets a frozen `pid` go on with `SIGCONT`.
pub(crate) fn cont(pid: u32) {
    // SAFETY: as for `kill`.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
}

/// The counts of one scenario, over its rounds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    /// Rounds run.
    pub(crate) rounds: u64,
    /// Calls that did not return within their bound (or rounds the watchdog ended).
    pub(crate) hangs: u64,
    /// Messages or results acknowledged to their sender and never received.
    pub(crate) lost: u64,
    /// Messages or results received twice, or ones nobody sent.
    pub(crate) duplicated: u64,
    /// Values seen half-written: a broken mutual exclusion, a corrupted message.
    pub(crate) torn: u64,
    /// A call that returned the wrong outcome: an error where success was due, the wrong error
    /// type, a takeover of a live holder, a recovery later than one second, a panic.
    pub(crate) wrong_errors: u64,
    /// The longest time from a fault to the moment the others went on.
    pub(crate) slowest_recovery: Duration,
    /// The first failures, each with the round that reproduces it.
    pub(crate) failures: Vec<String>,
}

/// One round of one scenario: its random generator and where its findings go.
pub(crate) struct Round<'a> {
    /// This round's random generator.
    pub(crate) rng: Rng,
    /// The round's number (with the campaign's seed, it reproduces the round).
    pub(crate) number: u64,
    tally: &'a mut Tally,
}

/// The most failures a scenario keeps the text of.
const KEPT_FAILURES: usize = 8;

/// What one second of recovery means: a call blocked on a dead peer returns within it.
pub(crate) const RECOVERY_BOUND: Duration = Duration::from_secs(1);

impl<'a> Round<'a> {
    /// A round with its generator, writing into `tally`.
    pub(crate) fn new(rng: Rng, number: u64, tally: &'a mut Tally) -> Round<'a> {
        Round { rng, number, tally }
    }

    fn note(&mut self, what: String) {
        if self.tally.failures.len() < KEPT_FAILURES {
            self.tally
                .failures
                .push(format!("round {}: {what}", self.number));
        }
    }

    /// A call that did not return in time.
    pub(crate) fn hang(&mut self, what: impl Into<String>) {
        self.tally.hangs += 1;
        self.note(format!("hang: {}", what.into()));
    }

    /// `n` acknowledged messages were never received.
    pub(crate) fn lost(&mut self, n: u64, what: impl Into<String>) {
        self.tally.lost += n;
        self.note(format!("lost {n}: {}", what.into()));
    }

    /// `n` messages were received twice (or never sent).
    pub(crate) fn duplicated(&mut self, n: u64, what: impl Into<String>) {
        self.tally.duplicated += n;
        self.note(format!("duplicated {n}: {}", what.into()));
    }

    /// A value was seen half-written.
    pub(crate) fn torn(&mut self, what: impl Into<String>) {
        self.tally.torn += 1;
        self.note(format!("torn: {}", what.into()));
    }

    /// A call returned the wrong outcome.
    pub(crate) fn wrong(&mut self, what: impl Into<String>) {
        self.tally.wrong_errors += 1;
        self.note(format!("wrong: {}", what.into()));
    }

    /// The others went on `took` after the fault; later than [`RECOVERY_BOUND`] is wrong.
    pub(crate) fn recovered(&mut self, took: Duration) {
        if took > self.tally.slowest_recovery {
            self.tally.slowest_recovery = took;
        }
        if took > RECOVERY_BOUND + Duration::from_millis(250) {
            self.wrong(format!(
                "recovery took {took:?}, more than {RECOVERY_BOUND:?}"
            ));
        }
    }
}

/// Turns a round that runs past its bound into a report instead of a silent hang: a thread that
/// prints the scenario and round and ends the campaign (its children die with it: they are
/// started with the daemon flag, or killed by the parent-death signal the scenarios set).
pub(crate) struct Watchdog {
    started: AtomicU64,
    what: Mutex<String>,
    epoch: Instant,
}

impl Watchdog {
    /// Starts the watchdog thread; each round gets `bound`.
    pub(crate) fn start(bound: Duration) -> &'static Watchdog {
        let w: &'static Watchdog = Box::leak(Box::new(Watchdog {
            started: AtomicU64::new(0),
            what: Mutex::new(String::new()),
            epoch: Instant::now(),
        }));
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            let s = w.started.load(Ordering::Acquire);
            if s == 0 {
                continue;
            }
            let now = w.epoch.elapsed().as_millis() as u64;
            if now.saturating_sub(s) > bound.as_millis() as u64 {
                let what = w.what.lock().map(|g| g.clone()).unwrap_or_default();
                eprintln!("faults: HANG: {what} ran past {bound:?}; reproduce with {what}");
                std::process::exit(3);
            }
        });
        w
    }

    /// A round begins; `what` is the command line that reproduces it.
    pub(crate) fn arm(&self, what: String) {
        if let Ok(mut g) = self.what.lock() {
            *g = what;
        }
        let now = (self.epoch.elapsed().as_millis() as u64).max(1);
        self.started.store(now, Ordering::Release);
    }

    /// The round ended.
    pub(crate) fn disarm(&self) {
        self.started.store(0, Ordering::Release);
    }
}

/// A checksum of a sequence number, so that a message read half-written is caught.
pub(crate) fn check_of(seq: u64) -> u64 {
    let mut x = seq ^ 0xdead_beef_cafe_f00d;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}
