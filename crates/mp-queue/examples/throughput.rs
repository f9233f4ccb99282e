//! Quick throughput check of one producer and one consumer process:
//! `cargo run --release -p mp-queue --example throughput [spread|packed]`.
//! The numbers that count come from `cargo xtask bench`; this is a developer's probe.

use std::time::Instant;

use mp_queue::Queue;

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[allow(non_snake_case, reason = "N reads as the constant it is")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let packed = std::env::args().nth(1).as_deref() == Some("packed");
    let n_env = std::env::var("N").ok().and_then(|v| v.parse().ok());
    let N: u64 = n_env.unwrap_or(2_000_000);
    if std::env::args().nth(1).as_deref() == Some("solo") {
        // One process, no contention: the cost of each side alone.
        let q: Queue<u64> = Queue::builder().capacity_bytes(128 << 20).build()?;
        let t0 = Instant::now();
        for i in 0..N {
            q.put(i).expect("put");
        }
        let put = t0.elapsed();
        let t0 = Instant::now();
        for i in 0..N {
            assert_eq!(q.get()?, i);
        }
        let get = t0.elapsed();
        println!(
            "solo: put {:.0} ns, get {:.0} ns per message",
            put.as_nanos() as f64 / N as f64,
            get.as_nanos() as f64 / N as f64
        );
        return Ok(());
    }
    let q: Queue<u64> = Queue::new()?;
    let qc = q.clone();
    pin(0);
    let mut child = mp_process::Process::fork(move || {
        pin(if packed { 0 } else { 1 });
        for i in 0..N {
            qc.put(i).expect("put");
        }
    })?;
    let t0 = Instant::now();
    for i in 0..N {
        assert_eq!(q.get()?, i);
    }
    let dt = t0.elapsed();
    child.join()?;
    println!(
        "{}: {N} u64 messages in {dt:?}: {:.2} M msgs/s",
        if packed { "packed" } else { "spread" },
        N as f64 / dt.as_secs_f64() / 1e6
    );
    Ok(())
}
