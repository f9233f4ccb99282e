//! `imap_unordered`: results as soon as each is ready, not in input order.
//!
//! ```python
//! with Pool(4) as pool:
//!     for c in pool.imap_unordered(cube, range(10)):
//!         print(c)
//! ```
//!
//! `cargo run -p mp-pool --example cube`

use std::time::Duration;

use mp_pool::Pool;

fn cube(x: u64) -> u64 {
    // Larger inputs finish sooner, so the completion order differs from the input order.
    std::thread::sleep(Duration::from_millis(10 * (10 - x)));
    x * x * x
}

fn main() -> Result<(), mp_pool::Error> {
    mp_process::init();
    let pool = Pool::new(4)?;
    let mut order = Vec::new();
    for c in pool.imap_unordered(cube, 0..10)? {
        order.push(c?);
    }
    println!("in completion order: {order:?}");
    order.sort_unstable();
    assert_eq!(order, (0..10u64).map(|x| x * x * x).collect::<Vec<_>>());
    Ok(())
}
