//! mp-queue: a producer/consumer pair across processes, batches, and zero-copy receive.

use std::error::Error;
use std::time::Instant;

use mp::{Process, Queue, StartMethod};

const N: u64 = 200_000;

fn producer(q: Queue<u64>) -> u64 {
    for i in 0..N {
        q.put(i).expect("put");
    }
    N
}

fn batch_producer(q: Queue<u64>) -> u64 {
    let items: Vec<u64> = (0..256).collect();
    for _ in 0..N / 256 {
        q.put_many(&items, None).expect("put_many");
    }
    N / 256 * 256
}

fn big_producer(q: Queue<Vec<u8>>) {
    q.put(vec![42u8; 8 << 20]).expect("put");
}

pub(crate) fn run() -> Result<(), Box<dyn Error>> {
    println!("== queues (mp-queue)");
    let q: Queue<u64> = Queue::new()?;
    let t0 = Instant::now();
    let mut child = Process::new(producer, q.clone())
        .start_method(StartMethod::Spawn)
        .start()?;
    let mut sum = 0u64;
    for _ in 0..N {
        sum += q.get()?;
    }
    let dt = t0.elapsed();
    child.join()?;
    println!(
        "a spawned producer put {N} u64s, the parent got them all in order (sum {sum}) in {dt:?}: {:.1} M msgs/s including the child's start",
        N as f64 / dt.as_secs_f64() / 1e6
    );

    let t0 = Instant::now();
    let mut child = Process::new(batch_producer, q.clone())
        .start_method(StartMethod::Spawn)
        .start()?;
    let mut got = Vec::with_capacity(256);
    let (mut n, mut sum) = (0u64, 0u64);
    while n < N / 256 * 256 {
        got.clear();
        n += q.get_many(&mut got, 256, None)? as u64;
        sum += got.iter().sum::<u64>();
    }
    let dt = t0.elapsed();
    child.join()?;
    println!(
        "the same with put_many/get_many, 256 at a time: {n} u64s (sum {sum}) in {dt:?}: {:.1} M msgs/s including the child's start",
        n as f64 / dt.as_secs_f64() / 1e6
    );

    let big: Queue<Vec<u8>> = Queue::new()?;
    let mut child = Process::new(big_producer, big.clone()).start()?;
    child.join()?;
    let msg = big.get_ref()?;
    println!(
        "a child put 8 MiB and exited before anyone read it (Python deadlocks here); get_ref reads it in place: {} bytes, first {}",
        msg.len(),
        msg[0]
    );
    println!();
    Ok(())
}
