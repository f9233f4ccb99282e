//! Rough rates of the executor: `cargo run --release -p mp-futures --example executor_throughput`.
//! (`cargo xtask bench` is where numbers for the README come from.)

use std::time::Instant;

use mp_futures::ProcessPoolExecutor;

fn inc(x: u64) -> u64 {
    x + 1
}

fn main() -> Result<(), mp_futures::Error> {
    mp_process::init();
    let n = 10_000u64;
    for workers in [1, 2] {
        let ex = ProcessPoolExecutor::new(workers)?;
        let t = Instant::now();
        let fs: Vec<_> = (0..n)
            .map(|x| ex.submit(inc, x))
            .collect::<Result<_, _>>()?;
        let mut sum = 0;
        for f in &fs {
            sum += f.take(None)?;
        }
        let el = t.elapsed();
        assert_eq!(sum, n * (n + 1) / 2);
        println!(
            "submit+result, {workers} worker(s): {n} tasks in {el:?} ({:.0} tasks/s)",
            n as f64 / el.as_secs_f64()
        );
        let ex = ProcessPoolExecutor::builder()
            .max_workers(workers)
            .max_in_flight(4 * workers)
            .build()?;
        let t = Instant::now();
        let total: u64 = ex.map(inc, 0..n, None)?.sum::<Result<u64, _>>()?;
        let el = t.elapsed();
        assert_eq!(total, n * (n + 1) / 2);
        println!(
            "map, {workers} worker(s), max_in_flight {}: {n} tasks in {el:?} ({:.0} tasks/s)",
            4 * workers,
            n as f64 / el.as_secs_f64()
        );
    }
    Ok(())
}
