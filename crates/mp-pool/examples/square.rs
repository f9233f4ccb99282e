//! The first example of Python's multiprocessing documentation, in Rust:
//!
//! ```python
//! with Pool(4) as p:
//!     print(p.map(square, values))
//! ```
//!
//! `cargo run -p mp-pool --example square`

use mp_pool::Pool;

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> Result<(), mp_pool::Error> {
    mp_process::init(); // first thing: a spawned worker runs here and never returns
    let values: Vec<u64> = (1..=10).collect();
    let pool = Pool::new(4)?;
    println!("{:?}", pool.map(square, values)?);
    Ok(())
}
