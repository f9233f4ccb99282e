//! mp awaited from async code (cargo feature `async`): one tokio task per process-side wait,
//! on a current-thread runtime, with no thread parked and no spin per waiting future.
//!
//! `cargo run --release -p mp --features async --example async`

use std::error::Error;
use std::time::Duration;

use futures_core::Stream;

use mp::{Duplex, Pipe, Pool, Process, Queue};

/// A child that squares what it receives on its pipe end until it receives 0.
fn squarer(conn: mp::Connection<u64>) -> u64 {
    let mut n = 0;
    while let Ok(x) = conn.recv() {
        if x == 0 {
            break;
        }
        conn.send(&(x * x)).expect("send");
        n += 1;
    }
    n
}

/// A child that puts `n` numbers on the queue.
fn producer((q, n): (Queue<u64>, u64)) {
    for i in 0..n {
        q.put(i).expect("put");
    }
}

fn triple(x: u64) -> u64 {
    x * 3
}

fn main() -> Result<(), Box<dyn Error>> {
    mp::init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        // A pipe to a child process: send_async / recv_async.
        let (ours, theirs) = Pipe::<u64>::new(Duplex)?;
        let mut child = Process::new(squarer, theirs).start()?;
        for x in [3u64, 4, 5] {
            ours.send_async(&x).await?;
            println!(
                "pipe: the child squared {x} into {}",
                ours.recv_async().await?
            );
        }
        // (Under fork the child holds a copy of our end too, so it would never see the pipe
        // close: tell it to stop.)
        ours.send_async(&0).await?;
        println!(
            "process: joined (async), it served {} requests",
            child.join_async().await?
        );

        // A queue filled by another process, drained by a task while another task ticks.
        let q: Queue<u64> = Queue::new()?;
        let mut p = Process::new(producer, (q.clone(), 5)).start()?;
        let ticker = tokio::task::spawn_local(async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            "the runtime thread stayed free"
        });
        let mut sum = 0;
        for _ in 0..5 {
            sum += q.get_async().await?;
        }
        p.join_async().await?;
        println!(
            "queue: got 0..5 from a producer process, sum {sum}; {}",
            ticker.await?
        );

        // A pool's AsyncResult and an async imap.
        let pool = Pool::new(2)?;
        let r = pool.apply_async(triple, 14)?;
        println!("pool: apply_async awaited: {}", r.await?);
        let mut it = pool.imap(triple, 0..4u64)?;
        let mut got = Vec::new();
        while let Some(v) = it.next_async().await {
            got.push(v?);
        }
        println!("pool: imap awaited: {got:?}");
        // The same as a futures_core::Stream (what StreamExt::next does, by hand).
        let mut stream = pool.imap_unordered(triple, 0..4u64)?;
        let mut got = Vec::new();
        while let Some(v) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_next(cx)).await
        {
            got.push(v?);
        }
        got.sort();
        println!("pool: imap_unordered streamed: {got:?}");
        Ok::<(), Box<dyn Error>>(())
    })
}
