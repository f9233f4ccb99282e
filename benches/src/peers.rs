//! The Rust peers on the workloads they have an equivalent for: `crossbeam-channel` between
//! threads (the in-process ceiling: no serialization, no copy of a moved `Vec`) and
//! `ipc-channel` between processes (the usual Rust choice: serde + bincode over a Unix socket).
//!
//! Threads and processes are pinned like mp's: the parent (consumer) on `parent_cpu`, helper
//! `i` on `child_cpu(i)`.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::placement::pin_current;
use crate::proc::{timed, Gate};
use crate::{Placement, MIB};

/// Runs `producers` threads (helper `i` pinned to `child_cpu(i)`) that each call their closure
/// after a common start, and times `consumer` on the pinned parent thread.
fn threads(
    placement: Placement,
    producers: Vec<Box<dyn FnOnce() + Send + '_>>,
    consumer: impl FnOnce(),
) -> Duration {
    placement.pin_parent();
    let start_line = Barrier::new(producers.len() + 1);
    std::thread::scope(|s| {
        for (i, p) in producers.into_iter().enumerate() {
            let start_line = &start_line;
            s.spawn(move || {
                pin_current(placement.child_cpu(i));
                start_line.wait();
                p();
            });
        }
        start_line.wait();
        let start = Instant::now();
        consumer();
        start.elapsed()
    })
}

/// crossbeam-channel, unbounded: one thread sends `iters` u64, the parent receives them.
pub fn crossbeam_small_1to1(iters: u64, placement: Placement) -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    threads(
        placement,
        vec![Box::new(move || {
            for i in 0..iters {
                tx.send(i).expect("send");
            }
        })],
        || {
            for _ in 0..iters {
                rx.recv().expect("recv");
            }
        },
    )
}

/// crossbeam-channel, unbounded: two threads send `iters` u64 between them, the parent
/// receives them all.
pub fn crossbeam_small_2to1(iters: u64, placement: Placement) -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    let halves = [iters / 2, iters - iters / 2];
    let producers: Vec<Box<dyn FnOnce() + Send>> = halves
        .into_iter()
        .map(|n| {
            let tx = tx.clone();
            Box::new(move || {
                for i in 0..n {
                    tx.send(i).expect("send");
                }
            }) as Box<dyn FnOnce() + Send>
        })
        .collect();
    drop(tx);
    threads(placement, producers, || {
        for _ in 0..iters {
            rx.recv().expect("recv");
        }
    })
}

/// crossbeam-channel, bounded(4): one thread sends `iters` fresh 1 MiB `Vec`s (each a copy of
/// a template, so one memcpy per message as in a shared-memory queue), the parent receives them.
pub fn crossbeam_1mib(iters: u64, placement: Placement) -> Duration {
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(4);
    let template = vec![0x5au8; MIB];
    threads(
        placement,
        vec![Box::new(move || {
            for _ in 0..iters {
                tx.send(template.clone()).expect("send");
            }
        })],
        || {
            for _ in 0..iters {
                let v = rx.recv().expect("recv");
                std::hint::black_box(&v);
            }
        },
    )
}

/// crossbeam-channel round trip: the parent sends a u64, a thread echoes it back.
pub fn crossbeam_rt(iters: u64, placement: Placement) -> Duration {
    let (ping_tx, ping_rx) = crossbeam_channel::bounded::<u64>(1);
    let (pong_tx, pong_rx) = crossbeam_channel::bounded::<u64>(1);
    threads(
        placement,
        vec![Box::new(move || {
            for _ in 0..iters {
                let v = ping_rx.recv().expect("recv");
                pong_tx.send(v).expect("send");
            }
        })],
        || {
            for i in 0..iters {
                ping_tx.send(i).expect("send");
                pong_rx.recv().expect("recv");
            }
        },
    )
}

/// ipc-channel: a child process sends `iters` u64, the parent receives them.
pub fn ipc_small_1to1(iters: u64, placement: Placement) -> Duration {
    let (tx, rx) = ipc_channel::ipc::channel::<u64>().expect("ipc channel");
    let child = move |_: &Gate| {
        for i in 0..iters {
            tx.send(i).expect("send");
        }
    };
    timed(placement, vec![child], |_| {
        for _ in 0..iters {
            rx.recv().expect("recv");
        }
    })
}

/// ipc-channel: two child processes send `iters` u64 between them, the parent receives them.
pub fn ipc_small_2to1(iters: u64, placement: Placement) -> Duration {
    let (tx, rx) = ipc_channel::ipc::channel::<u64>().expect("ipc channel");
    let halves = [iters / 2, iters - iters / 2];
    let children: Vec<_> = halves
        .into_iter()
        .map(|n| {
            let tx = tx.clone();
            move |_: &Gate| {
                for i in 0..n {
                    tx.send(i).expect("send");
                }
            }
        })
        .collect();
    drop(tx);
    timed(placement, children, |_| {
        for _ in 0..iters {
            rx.recv().expect("recv");
        }
    })
}

/// ipc-channel bytes channel: a child sends `iters` messages of 1 MiB, the parent receives
/// them (as fresh `Vec<u8>`s).
pub fn ipc_1mib(iters: u64, placement: Placement) -> Duration {
    let (tx, rx) = ipc_channel::ipc::bytes_channel().expect("ipc bytes channel");
    let child = move |_: &Gate| {
        let payload = vec![0x5au8; MIB];
        for _ in 0..iters {
            tx.send(&payload).expect("send");
        }
    };
    timed(placement, vec![child], |_| {
        for _ in 0..iters {
            let v = rx.recv().expect("recv");
            assert_eq!(v.len(), MIB);
        }
    })
}

/// ipc-channel round trip: the parent sends a u64, a child process echoes it back.
pub fn ipc_rt(iters: u64, placement: Placement) -> Duration {
    let (ping_tx, ping_rx) = ipc_channel::ipc::channel::<u64>().expect("ipc channel");
    let (pong_tx, pong_rx) = ipc_channel::ipc::channel::<u64>().expect("ipc channel");
    let child = move |_: &Gate| {
        for _ in 0..iters {
            let v = ping_rx.recv().expect("recv");
            pong_tx.send(v).expect("send");
        }
    };
    timed(placement, vec![child], |_| {
        for i in 0..iters {
            ping_tx.send(i).expect("send");
            pong_rx.recv().expect("recv");
        }
    })
}
