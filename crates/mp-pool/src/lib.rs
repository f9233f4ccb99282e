//! Python's `multiprocessing.Pool`, in Rust: worker processes that run `map`, `imap`,
//! `imap_unordered`, `starmap` and `apply`, and a pool that a dead worker cannot hang.
//!
//! # Hello, pool
//!
//! ```
//! use mp_pool::Pool;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), mp_pool::Error> {
//!     mp_process::init(); // first thing in main (mp::init() in the umbrella crate)
//!     let pool = Pool::new(4)?;
//!     let values: Vec<u64> = (0..10).collect();
//!     assert_eq!(pool.map(square, values)?, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
//!     Ok(())
//! }
//! ```

mod error;
mod job;
mod pool;
#[cfg(feature = "progress")]
mod progress;
mod result;
mod wire;
mod worker;

pub use error::Error;
pub use pool::{default_chunksize, IMap, Pool, PoolBuilder, Tasks};
pub use result::AsyncResult;
