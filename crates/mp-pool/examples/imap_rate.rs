//! imap_unordered with chunksize 1, for profiling: `cargo run --release -p mp-pool --example imap_rate [n] [in_flight]`.

fn inc(x: u64) -> u64 {
    x + 1
}

fn main() -> Result<(), mp_pool::Error> {
    mp_process::init();
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let in_flight: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let pool = mp_pool::Pool::new(2)?;
    let t = if in_flight > 0 {
        pool.in_flight(in_flight)
    } else {
        pool.tasks()
    };
    let t0 = std::time::Instant::now();
    let c = t.imap_unordered(inc, 0..n)?.count();
    let s = t0.elapsed().as_secs_f64();
    println!(
        "imap_unordered chunksize 1: {:.0} items/s ({c} items)",
        n as f64 / s
    );
    let t0 = std::time::Instant::now();
    let rs: Vec<_> = (0..10_000)
        .map(|i| pool.apply_async(inc, i))
        .collect::<Result<_, _>>()?;
    for r in rs {
        r.get()?;
    }
    println!(
        "apply_async: {:.0} calls/s",
        10_000.0 / t0.elapsed().as_secs_f64()
    );
    Ok(())
}
