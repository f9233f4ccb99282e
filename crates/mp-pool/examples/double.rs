//! `apply` and `apply_async`, as in Python's Pool documentation:
//!
//! ```python
//! with Pool(4) as pool:
//!     print(pool.apply(double, (10,)))
//!     result = pool.apply_async(double, (20,))
//!     print(result.get(timeout=1))
//! ```
//!
//! `cargo run -p mp-pool --example double`

use std::time::Duration;

use mp_pool::Pool;

fn double(x: i64) -> i64 {
    2 * x
}

fn main() -> Result<(), mp_pool::Error> {
    mp_process::init();
    let pool = Pool::new(4)?;
    println!("apply(double, 10) = {}", pool.apply(double, 10)?);
    let result = pool.apply_async(double, 20)?;
    println!(
        "apply_async(double, 20).get(timeout 1 s) = {}",
        result.get_timeout(Duration::from_secs(1))?
    );
    // Many at once: submit, then collect.
    let results: Vec<_> = (0..8)
        .map(|i| pool.apply_async(double, i))
        .collect::<Result<_, _>>()?;
    let doubled: Vec<i64> = results.iter().map(|r| r.get()).collect::<Result<_, _>>()?;
    println!("8 apply_async calls: {doubled:?}");
    Ok(())
}
