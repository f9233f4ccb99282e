//! A quick measure of a Pipe between two processes: small-message round trips and one-way
//! throughput. `cargo run --release -p mp-pipe --example pingpong` (the project's benchmarks,
//! with CPython for comparison, are in `cargo xtask bench`).

use std::time::Instant;

use mp_pipe::{Duplex, Pipe};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: u64 = 200_000;
    let (a, b) = Pipe::<u64>::new(Duplex)?;
    // SAFETY: the program is single-threaded here; the child only uses its pipe end and exits.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(a);
            // Echo until the parent says stop (u64::MAX), then receive the one-way burst.
            loop {
                let v = b.recv()?;
                if v == u64::MAX {
                    break;
                }
                b.send(&v)?;
            }
            let mut sum = 0u64;
            for _ in 0..rounds * 10 {
                sum = sum.wrapping_add(b.recv()?);
            }
            b.send(&sum)?;
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(b);
            for i in 0..10_000 {
                a.send(&i)?;
                a.recv()?;
            }
            let t0 = Instant::now();
            for i in 0..rounds {
                a.send(&i)?;
                assert_eq!(a.recv()?, i);
            }
            let rt = t0.elapsed();
            println!(
                "round trip: {:.3} us ({rounds} rounds)",
                rt.as_secs_f64() * 1e6 / rounds as f64
            );
            a.send(&u64::MAX)?;
            let t0 = Instant::now();
            for i in 0..rounds * 10 {
                a.send(&i)?;
            }
            let _sum = a.recv()?;
            let el = t0.elapsed();
            println!(
                "one-way: {:.2} M msgs/s",
                (rounds * 10) as f64 / el.as_secs_f64() / 1e6
            );
            nix::sys::wait::waitpid(child, None)?;
        }
    }
    Ok(())
}
