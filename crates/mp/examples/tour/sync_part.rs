//! mp-sync: a Lock and a Value shared with children, an Event, and a lock whose holder dies.

use std::error::Error;
use std::time::Duration;

use mp::{Event, Lock, Process, StartMethod, Value};

fn add_many((counter, n): (Value<u64>, u64)) -> u64 {
    for _ in 0..n {
        *counter.lock().expect("lock") += 1;
    }
    n
}

fn set_later(event: Event) {
    std::thread::sleep(Duration::from_millis(50));
    event.set();
}

fn hold_and_die(lock: Lock) {
    let _guard = lock.lock().expect("lock");
    // SAFETY: ends the process at once, while it holds the lock, as SIGKILL would.
    unsafe { libc::_exit(9) };
}

pub(crate) fn run() -> Result<(), Box<dyn Error>> {
    println!("== synchronisation (mp-sync)");
    let counter = Value::new(0u64)?;
    let mut kids = Vec::new();
    for (i, method) in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Fork,
        StartMethod::ForkServer,
    ]
    .into_iter()
    .enumerate()
    {
        kids.push((
            i,
            method,
            Process::new(add_many, (counter.clone(), 10_000))
                .start_method(method)
                .start()?,
        ));
    }
    for (_, _, k) in &mut kids {
        k.join()?;
    }
    println!(
        "4 children (fork, spawn, fork, forkserver) x 10_000 locked += 1 on a shared Value: {}",
        counter.get()
    );

    let event = Event::new()?;
    let mut k = Process::new(set_later, event.clone()).start()?;
    let woke = event.wait_timeout(Duration::from_secs(5));
    k.join()?;
    println!("an Event set by a child wakes the parent: {woke}");

    let lock = Lock::new()?;
    let mut k = Process::new(hold_and_die, lock.clone()).start()?;
    let _ = k.join();
    match lock.lock() {
        Ok(_) => println!("lock taken (the holder released it?)"),
        Err(died) => println!(
            "the child {} died holding the Lock: the next acquirer is told (OwnerDied) instead of hanging",
            died.pid()
        ),
    }
    println!();
    Ok(())
}
