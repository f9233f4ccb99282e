//! What receiving into a private copy costs: one producer process, one consumer process
//! (pinned to CPUs 0 and 1), for the three owned-value receive paths:
//!
//! * `small`: `N` u64 messages, `put` / `get` (the `queue_small_1to1` workload);
//! * `batch`: `N` u64 messages, `put_many` / `get_many` 256 at a time;
//! * `1mib`:  `M` messages of 1 MiB (`Vec<u8>`), `put` / `get` (the `queue_1mib` workload).
//!
//! `cargo run --release -p mp-queue --example copy_cost [ROUNDS]` prints the best and the
//! median of `ROUNDS` (default 5) runs of each; with `SOLO=1`, the gets alone in one process
//! (from a queue filled beforehand), the receive path's own cost without cross-core noise.
//! `N` and `M` set the message counts. It uses only the public API, so the same file
//! builds against an older mp-queue for a before/after comparison: `git archive <commit> |
//! tar -x -C /tmp/old`, copy this file to `/tmp/old/crates/mp-queue/examples/`, build it there
//! (with its own `CARGO_TARGET_DIR`) and run the two binaries in turn. A developer's probe: the
//! numbers that count come from `cargo xtask bench`.

use std::time::{Duration, Instant};

use mp_queue::Queue;

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

const MIB: usize = 1 << 20;

fn small(n: u64) -> Result<Duration, Box<dyn std::error::Error>> {
    let q: Queue<u64> = Queue::new()?;
    let qc = q.clone();
    let mut child = mp_process::Process::fork(move || {
        pin(1);
        for i in 0..n {
            qc.put(i).expect("put");
        }
    })?;
    let t0 = Instant::now();
    for i in 0..n {
        assert_eq!(q.get()?, i);
    }
    let dt = t0.elapsed();
    child.join()?;
    Ok(dt)
}

fn batch(n: u64) -> Result<Duration, Box<dyn std::error::Error>> {
    const B: usize = 256;
    let q: Queue<u64> = Queue::new()?;
    let qc = q.clone();
    let mut child = mp_process::Process::fork(move || {
        pin(1);
        let items: Vec<u64> = (0..n).collect();
        for chunk in items.chunks(B) {
            assert_eq!(qc.put_many(chunk, None).expect("put_many"), chunk.len());
        }
    })?;
    let t0 = Instant::now();
    let mut out = Vec::with_capacity(B);
    let mut next = 0;
    while next < n {
        out.clear();
        q.get_many(&mut out, B, None)?;
        for &x in &out {
            assert_eq!(x, next);
            next += 1;
        }
    }
    let dt = t0.elapsed();
    child.join()?;
    Ok(dt)
}

fn one_mib(m: u64) -> Result<Duration, Box<dyn std::error::Error>> {
    let q: Queue<Vec<u8>> = Queue::new()?;
    let qc = q.clone();
    let mut child = mp_process::Process::fork(move || {
        pin(1);
        let template = vec![0x5au8; MIB];
        for _ in 0..m {
            qc.put(template.clone()).expect("put");
        }
    })?;
    let t0 = Instant::now();
    for _ in 0..m {
        let v = q.get()?;
        assert_eq!(v.len(), MIB);
        std::hint::black_box(&v);
    }
    let dt = t0.elapsed();
    child.join()?;
    Ok(dt)
}

/// One process, the gets alone: `n` u64 with `get`, `n` with `get_many`, `m` of 1 MiB with
/// `get`, from a queue filled beforehand (no other process, so no cross-core noise: the
/// receive path's own cost).
fn solo(n: u64, m: u64) -> Result<[Duration; 3], Box<dyn std::error::Error>> {
    // Room for all `n` (32 bytes each in the ring), or the puts would wait for a consumer.
    let q: Queue<u64> = Queue::builder()
        .capacity_bytes((32 * n).clamp(64, 1 << 32))
        .build()?;
    let items: Vec<u64> = (0..n).collect();
    q.put_many(&items, None)?;
    let t0 = Instant::now();
    for i in 0..n {
        assert_eq!(q.get()?, i);
    }
    let get = t0.elapsed();
    q.put_many(&items, None)?;
    let mut out = Vec::with_capacity(256);
    let t0 = Instant::now();
    let mut next = 0;
    while next < n {
        out.clear();
        q.get_many(&mut out, 256, None)?;
        next += out.len() as u64;
    }
    let many = t0.elapsed();
    let big: Queue<Vec<u8>> = Queue::builder().capacity_bytes(8 << 20).build()?;
    let template = vec![0x5au8; MIB];
    let mut mib = Duration::ZERO;
    for _ in 0..m {
        big.put(template.clone()).expect("put");
        let t0 = Instant::now();
        let v = big.get()?;
        mib += t0.elapsed();
        assert_eq!(v.len(), MIB);
    }
    Ok([get, many, mib])
}

fn report(name: &str, per: u64, unit: &str, mut runs: Vec<Duration>) {
    runs.sort();
    let ns = |d: Duration| d.as_nanos() as f64 / per as f64;
    println!(
        "{name:>6}: best {:>9.1} ns/{unit}, median {:>9.1} ns/{unit} ({} runs of {per})",
        ns(runs[0]),
        ns(runs[runs.len() / 2]),
        runs.len()
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let n: u64 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let m: u64 = std::env::var("M")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    pin(0);
    if std::env::var_os("SOLO").is_some() {
        let (mut s, mut b, mut g) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let [x, y, z] = solo(n, m)?;
            s.push(x);
            b.push(y);
            g.push(z);
        }
        report("get", n, "msg", s);
        report("many", n, "msg", b);
        report("1mib", m, "msg", g);
        return Ok(());
    }
    let (mut s, mut b, mut g) = (Vec::new(), Vec::new(), Vec::new());
    // Interleaved, so that a burst of load from elsewhere spreads over all three.
    for _ in 0..rounds {
        s.push(small(n)?);
        b.push(batch(n)?);
        g.push(one_mib(m)?);
    }
    report("small", n, "msg", s);
    report("batch", n, "msg", b);
    report("1mib", m, "msg", g);
    Ok(())
}
