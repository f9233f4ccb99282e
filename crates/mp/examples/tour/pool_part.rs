//! mp-pool: the seed's three examples (square with map, double with apply/apply_async, cube
//! with imap_unordered), then what Python's pool cannot do: survive a killed worker, and stop
//! a task that runs past its timeout.

use std::error::Error;
use std::time::{Duration, Instant};

use mp::pool::{self, Pool};

fn square(x: u64) -> u64 {
    x * x
}

fn double(x: i64) -> i64 {
    2 * x
}

fn cube(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(5 * (10 - x)));
    x * x * x
}

fn sleeper(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

pub(crate) fn run() -> Result<(), Box<dyn Error>> {
    println!("== pool (mp-pool)");
    let pool = Pool::new(4)?;
    println!(
        "Pool::new(4): {} workers, pids {:?}",
        pool.processes(),
        pool.worker_pids()
    );

    let values: Vec<u64> = (1..=10).collect();
    println!("map(square, 1..=10) = {:?}", pool.map(square, values)?);

    println!("apply(double, 10) = {}", pool.apply(double, 10)?);
    let r = pool.apply_async(double, 20)?;
    println!(
        "apply_async(double, 20).get_timeout(1 s) = {}",
        r.get_timeout(Duration::from_secs(1))?
    );

    let cubes: Vec<u64> = pool
        .imap_unordered(cube, 0..10)?
        .collect::<Result<_, _>>()?;
    println!("imap_unordered(cube, 0..10), completion order = {cubes:?}");

    let t0 = Instant::now();
    let n = pool.map(square, 0..1_000_000u64)?.len();
    println!("map of {n} items: {:?}", t0.elapsed());

    // Workers killed mid-task: the task fails with WorkerLost, the workers are replaced, and
    // nothing hangs (Python's pool waits forever here).
    let r = pool.apply_async(sleeper, 60_000)?;
    std::thread::sleep(Duration::from_millis(200));
    let before = pool.worker_pids();
    for pid in &before {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
    }
    match r.get_timeout(Duration::from_secs(5)) {
        Err(e @ pool::Error::WorkerLost { .. }) => println!("SIGKILL to every worker: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    let t0 = Instant::now();
    while pool.worker_pids().iter().any(|p| before.contains(p))
        && t0.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("replacement workers {:?}", pool.worker_pids());
    println!("map still works: {:?}", pool.map(square, [7, 8, 9])?);

    // A task timeout (mpire's task_timeout): a task running longer is stopped (its worker
    // killed and replaced) and fails with TaskTimeout; the other tasks of the call go on.
    let results: Vec<Result<u64, pool::Error>> = [10, 60_000, 20]
        .into_iter()
        .map(|ms| {
            pool.timeout(Duration::from_millis(500))
                .apply_async(sleeper, ms)
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|r| r.get())
        .collect();
    for r in &results {
        match r {
            Ok(ms) => println!("timeout(500 ms).apply_async(sleeper, {ms}) = {ms}"),
            Err(e) => println!("timeout(500 ms).apply_async(sleeper, 60000): {e}"),
        }
    }
    pool.close();
    pool.join()?;
    Ok(())
}
