//! The tour: every mp primitive at work, each printing what it does.
//!
//! Run it with `cargo run --release --example tour`. Each primitive has its own part (a module
//! in this folder); the parts run in order.

use std::error::Error;

mod core_part;
mod manager_part;
mod pipe_part;
mod pool_part;
mod process_part;
mod queue_part;
mod shared_memory_part;
mod sync_part;

fn main() -> Result<(), Box<dyn Error>> {
    // First thing: in a child started by spawn or forkserver this runs the child and exits.
    mp::init();
    println!("mp tour: Python's multiprocessing, in Rust, with real processes\n");
    core_part::run()?;
    shared_memory_part::run()?;
    process_part::run()?;
    sync_part::run()?;
    queue_part::run()?;
    pipe_part::run()?;
    pool_part::run()?;
    manager_part::run()?;
    println!("\ntour complete");
    Ok(())
}
