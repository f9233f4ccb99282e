//! Rough throughput of the pool's hot paths (the benchmark proper is `cargo xtask bench`):
//! `cargo run --release -p mp-pool --example throughput`.

use std::time::{Duration, Instant};

use mp_pool::Pool;

fn inc(x: u64) -> u64 {
    x + 1
}

fn spin(_: u64) -> u64 {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_millis(1) {
        n = n.wrapping_add(1);
    }
    n
}

fn rate(what: &str, n: usize, f: impl FnOnce()) {
    let t0 = Instant::now();
    f();
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{what:<48} {:>12.0} items/s  ({n} items in {s:.3} s)",
        n as f64 / s
    );
}

fn main() -> Result<(), mp_pool::Error> {
    mp_process::init();
    let pool = Pool::new(2)?;
    let n = 1_000_000;
    let items: Vec<u64> = (0..n as u64).collect();
    rate("map, default chunksize", n, || {
        assert_eq!(pool.map(inc, items.clone()).unwrap().len(), n)
    });
    let n1 = 200_000;
    rate("map, chunksize 1", n1, || {
        assert_eq!(pool.chunksize(1).map(inc, 0..n1 as u64).unwrap().len(), n1)
    });
    rate("imap_unordered, chunksize 1", n1, || {
        assert_eq!(pool.imap_unordered(inc, 0..n1 as u64).unwrap().count(), n1)
    });
    rate("imap, chunksize 1", n1, || {
        assert_eq!(pool.imap(inc, 0..n1 as u64).unwrap().count(), n1)
    });
    rate("10_000 apply_async then get", 10_000, || {
        let rs: Vec<_> = (0..10_000)
            .map(|i| pool.apply_async(inc, i).unwrap())
            .collect();
        for r in rs {
            r.get().unwrap();
        }
    });
    let one = Pool::new(1)?;
    let t1 = Instant::now();
    one.chunksize(1).map(spin, 0..400)?;
    let single = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    pool.chunksize(1).map(spin, 0..400)?;
    let two = t2.elapsed().as_secs_f64();
    println!("CPU-bound 1 ms tasks, 2 workers vs 1: {:.2}x", single / two);
    Ok(())
}
