//! How fast a cluster pool maps small items: `Pool::map` of 100 000 `u64`s (Python's default
//! chunk size), and with chunk sizes 1 000 and 1, against the workers already serving the
//! prefix.
//!
//! ```sh
//! redis-server --port 6379 --save '' --appendonly no &
//! cargo run --release -p mp-redis --example redis_throughput -- --mp-worker redis://127.0.0.1:6379 --mp-workers 1 &
//! cargo run --release -p mp-redis --example redis_throughput -- --mp-worker redis://127.0.0.1:6379 --mp-workers 1 &
//! cargo run --release -p mp-redis --example redis_throughput -- redis://127.0.0.1:6379
//! ```

use std::time::Instant;

fn ident(x: u64) -> u64 {
    x
}

fn main() -> Result<(), mp_redis::Error> {
    mp_redis::init();
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    let cluster = mp_redis::Cluster::connect(&url)?;
    let pool = cluster.pool()?;
    println!("workers: {}", pool.workers()?);
    let n = 100_000u64;
    // One warm-up map (connections, first resolution of the function in each worker).
    pool.map(ident, 0..1000u64)?;
    for chunk in [None, Some(1000), Some(1)] {
        let items = if chunk == Some(1) { n / 20 } else { n };
        let t0 = Instant::now();
        let out = match chunk {
            None => pool.map(ident, 0..items)?,
            Some(c) => pool.map_chunked(ident, 0..items, c)?,
        };
        let s = t0.elapsed().as_secs_f64();
        assert_eq!(out.len() as u64, items);
        let label = chunk.map_or("default".to_string(), |c| c.to_string());
        println!(
            "map of {items} items, chunksize {label}: {:.3} s, {:.0} items/s",
            s,
            items as f64 / s
        );
    }
    Ok(())
}
