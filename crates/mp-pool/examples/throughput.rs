//! Rough throughput of the pool's hot paths, with the CPU each side used per item (the
//! benchmark proper is `cargo xtask bench`): `cargo run --release -p mp-pool --example
//! throughput`.

use std::time::{Duration, Instant};

use mp_pool::Pool;

fn inc(x: u64) -> u64 {
    x + 1
}

/// A fixed amount of work (about 1 ms for the `n` that `calibrate` finds).
fn spin(n: u64) -> u64 {
    let mut x = 0u64;
    for i in 0..n {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
    }
    x
}

fn calibrate() -> u64 {
    let mut n = 100_000u64;
    loop {
        let t0 = Instant::now();
        spin(n);
        let el = t0.elapsed();
        if el >= Duration::from_millis(20) {
            return (n as f64 * 1e-3 / el.as_secs_f64()) as u64;
        }
        n *= 2;
    }
}

/// CPU seconds (user + system) used so far by process `pid` (0: this process).
fn cpu(pid: u32) -> f64 {
    let path = if pid == 0 {
        "/proc/self/stat".to_string()
    } else {
        format!("/proc/{pid}/stat")
    };
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

fn rate(pool: &Pool, what: &str, n: usize, f: impl FnOnce()) {
    let pids = pool.worker_pids();
    let (p0, w0) = (cpu(0), pids.iter().map(|p| cpu(*p)).sum::<f64>());
    let t0 = Instant::now();
    f();
    let s = t0.elapsed().as_secs_f64();
    let (p1, w1) = (cpu(0), pids.iter().map(|p| cpu(*p)).sum::<f64>());
    println!(
        "{what:<30} {:>9.0} items/s ({n} in {s:.3} s; CPU/item: parent {:.2} us, workers {:.2} us)",
        n as f64 / s,
        (p1 - p0) * 1e6 / n as f64,
        (w1 - w0) * 1e6 / n as f64
    );
}

fn main() -> Result<(), mp_pool::Error> {
    mp_process::init();
    let pool = Pool::new(2)?;
    let n = 1_000_000;
    let items: Vec<u64> = (0..n as u64).collect();
    rate(&pool, "map, default chunksize", n, || {
        assert_eq!(pool.map(inc, items.clone()).unwrap().len(), n)
    });
    let n1 = 200_000;
    rate(&pool, "map, chunksize 1", n1, || {
        assert_eq!(pool.chunksize(1).map(inc, 0..n1 as u64).unwrap().len(), n1)
    });
    rate(&pool, "imap_unordered, chunksize 1", n1, || {
        assert_eq!(pool.imap_unordered(inc, 0..n1 as u64).unwrap().count(), n1)
    });
    rate(&pool, "imap, chunksize 1", n1, || {
        assert_eq!(pool.imap(inc, 0..n1 as u64).unwrap().count(), n1)
    });
    rate(&pool, "10_000 apply_async, then get", 10_000, || {
        let rs: Vec<_> = (0..10_000)
            .map(|i| pool.apply_async(inc, i).unwrap())
            .collect();
        for r in rs {
            r.get().unwrap();
        }
    });
    let work = calibrate();
    let one = Pool::new(1)?;
    let t1 = Instant::now();
    one.chunksize(1).map(spin, vec![work; 400])?;
    let single = t1.elapsed().as_secs_f64();
    drop(one);
    let c0 = cpu(0);
    let t2 = Instant::now();
    pool.chunksize(1).map(spin, vec![work; 400])?;
    let two = t2.elapsed().as_secs_f64();
    println!(
        "CPU-bound (400 tasks of ~1 ms): 2 workers vs 1: {:.2}x; the parent used {:.1} ms of CPU in {:.1} ms",
        single / two,
        (cpu(0) - c0) * 1e3,
        two * 1e3
    );
    Ok(())
}
