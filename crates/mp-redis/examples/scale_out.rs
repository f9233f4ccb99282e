//! The README's "Scale out", as a program: the same binary is the workers and the client.
//!
//! ```sh
//! redis-server --port 6379 --save '' --appendonly no
//! cargo run --example scale_out -- --mp-worker redis://127.0.0.1:6379 --mp-workers 2 &
//! cargo run --example scale_out -- redis://127.0.0.1:6379
//! ```

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> Result<(), mp_redis::Error> {
    // With `--mp-worker URL`, this process is a worker from here on and never returns.
    mp_redis::init();
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    let prefix = args.next().unwrap_or_else(|| "mp".into());
    let cluster = mp_redis::Cluster::builder(&url).prefix(&prefix).connect()?;
    let pool = cluster.pool()?;
    let squares = pool.map(square, 0..1000u64)?;
    println!("sum of squares below 1000: {}", squares.iter().sum::<u64>());
    println!("workers: {}", pool.workers()?);
    Ok(())
}
