//! mp-process: children that return values, under each start method, and children that fail.

use std::error::Error;
use std::time::{Duration, Instant};

use mp::process::ProcessError;
use mp::{Process, StartMethod};

fn square(x: u64) -> u64 {
    x * x
}

fn panics(_: ()) -> u64 {
    panic!("the target gave up")
}

fn exits(code: i32) {
    std::process::exit(code)
}

fn sleeps(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms))
}

pub(crate) fn run() -> Result<(), Box<dyn Error>> {
    println!("== processes (mp-process)");
    for method in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ] {
        let t0 = Instant::now();
        let mut child = Process::new(square, 12)
            .name(format!("square-{method}"))
            .start_method(method)
            .start()?;
        let v = child.join()?;
        println!(
            "{method:>10}: child {} ({}) returned {v}, exit code {:?}, start+join {:?}",
            child.pid(),
            child.name(),
            child.exitcode(),
            t0.elapsed()
        );
    }
    let mut c = Process::new(panics, ()).start()?;
    match c.join() {
        Err(ProcessError::Panicked { message, location }) => {
            println!("a panicking target is reported: {message:?} at {location:?}")
        }
        other => return Err(format!("expected a panic, got {other:?}").into()),
    }
    let mut c = Process::new(exits, 8).start()?;
    println!("std::process::exit(8) in the child: {:?}", c.join().err());
    let mut c = Process::new(sleeps, 10_000).start()?;
    c.terminate()?;
    println!(
        "terminate() on a sleeping child: {:?} (exit code {:?})\n",
        c.join().err(),
        c.exitcode()
    );
    Ok(())
}
