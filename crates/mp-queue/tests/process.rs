//! A Queue given to real children as a `Process` argument, under every start method. The
//! children are daemons, so a failing test never leaves one behind.

use std::time::Duration;

use mp_process::{Process, StartMethod};
use mp_queue::{JoinableQueue, Queue};

mp_process::test_support!();

const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::ForkServer,
];

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
        let mut kid = Process::new(put_one_mib, q.clone())
            .start_method(method)
            .daemon(true)
            .start()
            .unwrap();
        let n = kid
            .join_timeout(Duration::from_secs(30))
            .unwrap()
            .expect("joined");
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
