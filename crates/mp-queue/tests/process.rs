//! A Queue given to real children as a `Process` argument, under every start method. The
//! children are daemons, so a failing test never leaves one behind.

use std::time::Duration;

use mp_core::message::SliceAsVec;
use mp_process::{Process, StartMethod};
use mp_queue::{JoinableQueue, PutError, Queue};

mp_process::test_support!();

const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::ForkServer,
];

/// Runs `f(arg)` in a daemon child started with `method` and returns its result.
fn run_child<A: mp_core::Message, R: mp_core::Message>(
    f: fn(A) -> R,
    arg: A,
    method: StartMethod,
) -> R {
    Process::new(f, arg)
        .start_method(method)
        .daemon(true)
        .start()
        .unwrap()
        .join_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("joined")
}

fn produce((q, from): (Queue<u64>, u64)) -> u64 {
    for i in from..from + 100 {
        q.put(i).expect("put");
    }
    from
}

fn put_one_mib(q: Queue<Vec<u8>>) -> usize {
    q.put(vec![0x5A; 1 << 20]).expect("put");
    1 << 20
}

/// Puts windows of one buffer with `put_as` (no `Vec` built), then the whole buffer, larger
/// than half the ring (the oversized path).
fn put_slices(q: Queue<Vec<u32>>) -> usize {
    let data: Vec<u32> = (0..(3 << 20) / 4).collect();
    for w in data[..1000].chunks(7) {
        q.put_as(&SliceAsVec(w), None).expect("put_as");
    }
    q.put_as(&SliceAsVec(&data), None).expect("put_as");
    let batch = [vec![1u32, 2], vec![], vec![3]];
    assert_eq!(q.put_many(&batch, None).expect("put_many"), 3);
    data.len()
}

fn work(q: JoinableQueue<u32>) -> u32 {
    let mut done = 0;
    while let Ok(x) = q.get_timeout(Duration::from_millis(300)) {
        assert!(x < 40);
        q.task_done().expect("task_done");
        done += 1;
    }
    done
}

#[test]
fn queue_as_process_argument_under_every_start_method() {
    for method in METHODS {
        let q: Queue<u64> = Queue::new().unwrap();
        let mut kids: Vec<_> = (0..2)
            .map(|k| {
                Process::new(produce, (q.clone(), k * 1000))
                    .start_method(method)
                    .daemon(true)
                    .start()
                    .unwrap()
            })
            .collect();
        for kid in &mut kids {
            kid.join_timeout(Duration::from_secs(30))
                .unwrap()
                .expect("joined");
        }
        let mut got: Vec<u64> = (0..200).map(|_| q.get_nowait().unwrap()).collect();
        got.sort_unstable();
        let want: Vec<u64> = (0..100).chain(1000..1100).collect();
        assert_eq!(got, want, "{method}");
    }
}

#[test]
fn child_puts_one_mib_exits_and_is_joined_before_the_read() {
    for method in METHODS {
        let q: Queue<Vec<u8>> = Queue::new().unwrap();
        let n = run_child(put_one_mib, q.clone(), method);
        let v = q.get_nowait().unwrap();
        assert_eq!(v.len(), n);
        assert!(v.iter().all(|&b| b == 0x5A), "{method}");
    }
}

#[test]
fn joinable_queue_with_workers_under_every_start_method() {
    for method in METHODS {
        let q: JoinableQueue<u32> = JoinableQueue::new().unwrap();
        for i in 0..40 {
            q.put(i).unwrap();
        }
        let mut kids: Vec<_> = (0..3)
            .map(|_| {
                Process::new(work, q.clone())
                    .start_method(method)
                    .daemon(true)
                    .start()
                    .unwrap()
            })
            .collect();
        q.join_timeout(Duration::from_secs(30)).unwrap();
        let done: u32 = kids
            .iter_mut()
            .map(|k| {
                k.join_timeout(Duration::from_secs(30))
                    .unwrap()
                    .expect("joined")
            })
            .sum();
        assert_eq!(done, 40, "{method}");
    }
}

#[test]
fn borrowed_slices_and_batches_under_every_start_method() {
    for method in METHODS {
        let q: Queue<Vec<u32>> = Queue::new().unwrap();
        let n = run_child(put_slices, q.clone(), method);
        let mut next = 0u32;
        while next < 1000 {
            let w = q.get_nowait().unwrap();
            let want: Vec<u32> = (next..(next + 7).min(1000)).collect();
            assert_eq!(w, want, "{method}");
            next += w.len() as u32;
        }
        let all = q.get_nowait().unwrap();
        assert_eq!(all.len(), n, "{method}");
        assert!(all.iter().enumerate().all(|(i, &x)| x == i as u32));
        let mut batch = Vec::new();
        while batch.len() < 3 {
            q.get_many(&mut batch, 8, Some(Duration::from_secs(5)))
                .unwrap();
        }
        assert_eq!(batch, [vec![1, 2], vec![], vec![3]], "{method}");
        assert!(q.empty());
    }
    // A full queue gives the reference back, after the timeout or at once.
    let q: Queue<Vec<u32>> = Queue::with_maxsize(1).unwrap();
    let one = [1u32];
    q.put_as(&SliceAsVec(&one), Some(Duration::ZERO)).unwrap();
    let t0 = std::time::Instant::now();
    match q.put_as(&SliceAsVec(&one), Some(Duration::from_millis(50))) {
        Err(PutError::Full(back)) => assert_eq!(back.0, [1]),
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(50));
    q.close();
    assert!(matches!(
        q.put_as(&SliceAsVec(&one), None),
        Err(PutError::Closed(_))
    ));
}
