//! What mp does on its own, as `tracing` events printed by `tracing-subscriber`:
//! `cargo run --example tracing --features tracing`.
//!
//! A child takes a lock and dies holding it; the parent takes the lock over. The output shows
//! the process started and ended, and the dead holder's lock taken over (docs/tracing.md).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    mp::process::init();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(true)
        .init();

    let lock = mp::Lock::new()?;
    let held = lock.clone();
    let mut child = mp::process::Process::fork(move || {
        held.acquire().expect("acquire");
        // Ends without releasing: as a crash would.
    })?;
    let _ = child.join();
    match lock.acquire() {
        Ok(()) => println!("the lock was free"),
        Err(died) => println!("took the lock over from dead process {}", died.pid()),
    }
    lock.release()?;
    Ok(())
}
