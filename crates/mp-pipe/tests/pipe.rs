//! Pipe and Connection across real processes: CONFORMANCE C1 (round trips, bytes, sizes,
//! end-of-file) and C2 (one-way), under the fork, spawn and forkserver start methods; wait()
//! over children's connections and sentinels; peers killed mid-send.

mod common;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::{assert_about, children_lock, watchdog};
use mp_core::rkyv::{Archive, Deserialize, Serialize};
use mp_pipe::{wait, Connection, Duplex, Error, OneWay, Pipe, Reader, Waitable, Writer};
use mp_process::{Process, ProcessError, StartMethod};

mp_process::test_support!();

const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::ForkServer,
];

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(crate = mp_core::rkyv)]
struct Sample {
    id: u64,
    name: String,
    data: Vec<u8>,
    nested: Option<Vec<(i32, String)>>,
}

fn sample(i: u64, len: usize) -> Sample {
    Sample {
        id: i,
        name: format!("sample-{i}"),
        data: (0..len).map(|k| (k as u64 * 31 + i) as u8).collect(),
        nested: (i % 2 == 0).then(|| vec![(-(i as i32), "x".repeat(i as usize % 7))]),
    }
}

/// Echoes every message back as bytes until end-of-file or a `STOP` message; returns how many
/// it echoed.
fn echo(conn: Connection<Sample>) -> u64 {
    let mut n = 0;
    loop {
        match conn.recv_bytes(None) {
            Ok(b) if b == b"STOP" => return n,
            Ok(b) => {
                conn.send_bytes(&b, 0, None).expect("echo send");
                n += 1;
            }
            Err(e) if e.is_eof() => return n,
            Err(e) => panic!("echo: {e}"),
        }
    }
}

fn c1_round_trips(method: StartMethod) {
    let (parent, child) = Pipe::<Sample>::new(Duplex).unwrap();
    let mut p = Process::new(echo, child)
        .start_method(method)
        .daemon(true)
        .start()
        .unwrap();
    let mut sent = 0;
    // Typed values, small and medium (more than half a ring: fragmented).
    for (i, len) in [(0, 0), (1, 10), (2, 1000), (3, 70_000), (4, 300_000)] {
        let s = sample(i, len);
        parent.send(&s).unwrap();
        assert_eq!(parent.recv().unwrap(), s, "{method:?} value {i}");
        sent += 1;
    }
    // Raw bytes with Python's slicing.
    parent.send_bytes(b"xxhelloxx", 2, Some(5)).unwrap();
    assert_eq!(parent.recv_bytes(None).unwrap(), b"hello");
    parent.send_bytes(b"", 0, None).unwrap();
    assert_eq!(parent.recv_bytes(None).unwrap(), b"");
    sent += 2;
    // recv_bytes_into at an offset; a buffer too small keeps the message.
    parent.send_bytes(b"0123456789", 0, None).unwrap();
    let mut buf = [0u8; 12];
    match parent.recv_bytes_into(&mut buf, 5) {
        Err(Error::BufferTooShort {
            needed: 10,
            available: 7,
        }) => {}
        other => panic!("expected BufferTooShort, got {other:?}"),
    }
    assert!(
        parent.poll(Some(Duration::ZERO)).unwrap(),
        "the message is kept"
    );
    assert_eq!(parent.recv_bytes_into(&mut buf, 2).unwrap(), 10);
    assert_eq!(&buf, b"\0\x000123456789");
    // recv_bytes(max) refuses a longer message and keeps it.
    parent.send_bytes(b"abcdef", 0, None).unwrap();
    assert!(matches!(
        parent.recv_bytes(Some(3)),
        Err(Error::MessageTooLong { size: 6, max: 3 })
    ));
    assert_eq!(parent.recv_bytes(Some(6)).unwrap(), b"abcdef");
    sent += 2;
    // 16 MiB, as bytes and as a typed value.
    let big: Vec<u8> = (0..16usize << 20).map(|i| (i * 7 % 251) as u8).collect();
    parent.send_bytes(&big, 0, None).unwrap();
    assert!(parent.recv_bytes(None).unwrap() == big, "16 MiB bytes");
    let s = Sample {
        id: 16,
        name: "big".into(),
        data: big,
        nested: None,
    };
    parent.send(&s).unwrap();
    assert!(parent.recv().unwrap() == s, "16 MiB value");
    sent += 2;
    // A too-small buffer for a fragmented message keeps it too.
    parent.send_bytes(&[9u8; 200_000], 0, None).unwrap();
    let mut small = vec![0u8; 1000];
    assert!(matches!(
        parent.recv_bytes_into(&mut small, 0),
        Err(Error::BufferTooShort {
            needed: 200_000,
            ..
        })
    ));
    let mut large = vec![0u8; 200_000];
    assert_eq!(parent.recv_bytes_into(&mut large, 0).unwrap(), 200_000);
    assert!(large.iter().all(|&b| b == 9));
    sent += 1;
    if method == StartMethod::Fork {
        // A forked child holds a copy of every descriptor the parent had, `parent`'s included,
        // so it would never see end-of-file on its end (Python's rule: under fork, close what
        // the child does not use; the child cannot close what it does not name). Stop it with
        // a message; then *our* end sees end-of-file, as the child's end lived in it alone.
        parent.send_bytes(b"STOP", 0, None).unwrap();
        assert_eq!(p.join().unwrap(), sent, "{method:?}");
        assert!(matches!(parent.recv(), Err(Error::Eof)));
        assert!(matches!(parent.send(&sample(0, 0)), Err(Error::BrokenPipe)));
    } else {
        // Closing our end: the child sees end-of-file and returns its count.
        parent.close().unwrap();
        assert_eq!(p.join().unwrap(), sent, "{method:?}");
    }
}

#[test]
fn c1_round_trips_under_every_start_method() {
    let _g = children_lock();
    let _w = watchdog("c1_round_trips", Duration::from_secs(120));
    for m in METHODS {
        c1_round_trips(m);
    }
}

/// Sends `n` numbers, then returns (its end closes when the process exits).
fn produce((w, n): (Writer<u64>, u64)) -> u64 {
    for i in 0..n {
        w.send(&i).expect("send");
    }
    n
}

#[test]
fn c2_one_way_pipe_then_end_of_file() {
    let _g = children_lock();
    let _w = watchdog("c2_one_way", Duration::from_secs(60));
    for m in METHODS {
        let (reader, writer) = Pipe::<u64>::new(OneWay).unwrap();
        let mut p = Process::new(produce, (writer, 10_000))
            .start_method(m)
            .daemon(true)
            .start()
            .unwrap();
        for i in 0..10_000 {
            assert_eq!(reader.recv().unwrap(), i, "{m:?}");
        }
        assert!(matches!(reader.recv(), Err(Error::Eof)), "{m:?}");
        assert!(
            reader.poll(Some(Duration::ZERO)).unwrap(),
            "end-of-file polls ready"
        );
        assert_eq!(p.join().unwrap(), 10_000);
    }
}

#[test]
fn end_of_file_when_the_peer_closes_with_messages_in_flight() {
    let (a, b) = Pipe::<String>::new(Duplex).unwrap();
    a.send(&"one".into()).unwrap();
    a.send(&"two".into()).unwrap();
    drop(a);
    assert_eq!(b.recv().unwrap(), "one");
    assert_eq!(b.recv().unwrap(), "two");
    assert!(matches!(b.recv(), Err(Error::Eof)));
    assert!(matches!(b.recv_bytes(None), Err(Error::Eof)));
    assert!(matches!(b.send(&"x".into()), Err(Error::BrokenPipe)));
}

#[test]
fn timeouts_return_after_about_t() {
    let (a, b) = Pipe::<u32>::new(Duplex).unwrap();
    let t = Duration::from_millis(100);
    let t0 = Instant::now();
    assert!(matches!(b.recv_timeout(t), Err(Error::Timeout)));
    assert_about(t0.elapsed(), t);
    let t0 = Instant::now();
    assert!(!b.poll(Some(t)).unwrap());
    assert_about(t0.elapsed(), t);
    let t0 = Instant::now();
    assert!(!b.poll(Some(Duration::ZERO)).unwrap());
    assert!(t0.elapsed() < Duration::from_secs(1));
    a.send(&5).unwrap();
    assert_eq!(b.recv_timeout(t).unwrap(), 5);
}

#[test]
fn send_bytes_follows_python_slicing_rules() {
    let (a, b) = Pipe::<()>::new(Duplex).unwrap();
    let buf = b"abcdef";
    assert!(matches!(
        a.send_bytes(buf, 7, None),
        Err(Error::InvalidArgument("buffer length < offset"))
    ));
    assert!(matches!(
        a.send_bytes(buf, 2, Some(5)),
        Err(Error::InvalidArgument("buffer length < offset + size"))
    ));
    assert!(matches!(
        a.send_bytes(buf, 1, Some(usize::MAX)),
        Err(Error::InvalidArgument("buffer length < offset + size"))
    ));
    a.send_bytes(buf, 6, None).unwrap(); // offset == len: an empty message
    a.send_bytes(buf, 6, Some(0)).unwrap();
    a.send_bytes(buf, 0, Some(6)).unwrap();
    a.send_bytes(buf, 4, None).unwrap();
    assert_eq!(b.recv_bytes(None).unwrap(), b"");
    assert_eq!(b.recv_bytes(None).unwrap(), b"");
    assert_eq!(b.recv_bytes(None).unwrap(), b"abcdef");
    assert_eq!(b.recv_bytes(None).unwrap(), b"ef");
    let mut out = [0u8; 4];
    assert!(matches!(
        b.recv_bytes_into(&mut out, 5),
        Err(Error::InvalidArgument("offset too large"))
    ));
    a.send_bytes(b"", 0, None).unwrap();
    assert_eq!(
        b.recv_bytes_into(&mut out, 4).unwrap(),
        0,
        "offset == len is allowed"
    );
}

#[test]
fn a_received_value_of_another_type_is_an_error_not_garbage() {
    let (a, b) = Pipe::<String>::new(Duplex).unwrap();
    a.send_bytes(&[0xff; 3], 0, None).unwrap();
    assert!(matches!(
        b.recv(),
        Err(Error::Core(mp_core::Error::Decode(_)))
    ));
    a.send(&"still fine".into()).unwrap();
    assert_eq!(b.recv().unwrap(), "still fine");
}

#[test]
fn a_connection_cannot_travel_through_a_connection() {
    let (a, b) = Pipe::<Connection<u8>>::new(Duplex).unwrap();
    let (c, _d) = Pipe::<u8>::new(Duplex).unwrap();
    match a.send(&c) {
        Err(Error::Core(mp_core::Error::Encode(msg))) => {
            assert!(msg.contains("only be sent"), "{msg}")
        }
        other => panic!("expected an encode error, got {other:?}"),
    }
    assert!(!b.poll(Some(Duration::ZERO)).unwrap());
}

#[test]
fn many_messages_through_a_small_ring_keep_order() {
    // A 4 KiB ring wraps thousands of times; messages of every size straddle the end.
    let (a, b) = Pipe::<Vec<u32>>::with_capacity(Duplex, 4096).unwrap();
    let t = std::thread::spawn(move || {
        for i in 0..5000u32 {
            let v: Vec<u32> = (0..(i % 700)).map(|k| k ^ i).collect();
            a.send(&v).unwrap();
        }
        a
    });
    for i in 0..5000u32 {
        let v = b.recv().unwrap();
        assert_eq!(v.len() as u32, i % 700);
        assert!(v.iter().enumerate().all(|(k, &x)| x == k as u32 ^ i));
    }
    drop(t.join().unwrap());
    assert!(matches!(b.recv(), Err(Error::Eof)));
}

/// Waits for "go", then sends `value` and stays alive until the next cue; "stop" instead makes
/// it return without sending.
fn on_cue((cue, out, value): (Reader<String>, Writer<u32>, u32)) -> u32 {
    match cue.recv().expect("cue").as_str() {
        "go" => {
            out.send(&value).expect("send");
            // Stay alive until told, so the sentinel is not ready yet.
            let _ = cue.recv();
            value
        }
        _ => 0,
    }
}

#[test]
fn wait_over_children_connections_and_sentinels() {
    let _g = children_lock();
    let _w = watchdog("wait_over_children", Duration::from_secs(60));
    for m in [StartMethod::Fork, StartMethod::Spawn] {
        let mut cues = Vec::new();
        let mut outs = Vec::new();
        let mut children = Vec::new();
        for i in 0..3u32 {
            let (cue_r, cue_w) = Pipe::<String>::new(OneWay).unwrap();
            let (out_r, out_w) = Pipe::<u32>::new(OneWay).unwrap();
            children.push(
                Process::new(on_cue, (cue_r, out_w, 100 + i))
                    .start_method(m)
                    .daemon(true)
                    .start()
                    .unwrap(),
            );
            cues.push(cue_w);
            outs.push(out_r);
        }
        let sentinels: Vec<_> = children.iter().map(|c| c.sentinel().unwrap()).collect();
        let mut objs: Vec<&dyn Waitable> = outs.iter().map(|o| o as &dyn Waitable).collect();
        objs.extend(sentinels.iter().map(|s| s as &dyn Waitable));
        // Nothing is ready: wait returns empty after about the timeout.
        let t = Duration::from_millis(100);
        let t0 = Instant::now();
        assert_eq!(wait(&objs, Some(t)).unwrap(), Vec::<usize>::new());
        assert_about(t0.elapsed(), t);
        // Child 1 sends: only its connection is ready.
        cues[1].send(&"go".into()).unwrap();
        assert_eq!(wait(&objs, Some(Duration::from_secs(10))).unwrap(), vec![1]);
        assert_eq!(outs[1].recv().unwrap(), 101);
        // Child 2 is told to stop: its connection reports end-of-file and its sentinel fires.
        cues[2].send(&"stop".into()).unwrap();
        let mut seen = Vec::new();
        let t0 = Instant::now();
        while seen != [2, 5] && t0.elapsed() < Duration::from_secs(10) {
            seen = wait(&objs, Some(Duration::from_secs(10))).unwrap();
        }
        assert_eq!(seen, vec![2, 5], "{m:?}");
        assert!(matches!(outs[2].recv(), Err(Error::Eof)));
        // Child 0 sends; then every child is released.
        // Those two stay ready (end-of-file and an ended process are levels, not events), so
        // watch the rest: child 0 sends.
        let rest: [&dyn Waitable; 4] = [objs[0], objs[1], objs[3], objs[4]];
        cues[0].send(&"go".into()).unwrap();
        assert_eq!(wait(&rest, None).unwrap(), vec![0]);
        assert_eq!(outs[0].recv().unwrap(), 100);
        drop(objs);
        drop(sentinels);
        // Release the others with a message: under fork a child holds a copy of its own cue's
        // writer (the parent had it when it forked), so it would never see end-of-file.
        cues[0].send(&"bye".into()).unwrap();
        cues[1].send(&"bye".into()).unwrap();
        let results: Vec<u32> = children.iter_mut().map(|c| c.join().unwrap()).collect();
        assert_eq!(results, vec![100, 101, 0]);
    }
}

#[test]
fn wait_mixes_connections_and_plain_descriptors() {
    use std::io::Write;
    let (a, b) = Pipe::<u8>::new(Duplex).unwrap();
    let (mut s1, s2) = std::os::unix::net::UnixStream::pair().unwrap();
    let objs: [&dyn Waitable; 2] = [&b, &s2];
    assert!(wait(&objs, Some(Duration::from_millis(10)))
        .unwrap()
        .is_empty());
    s1.write_all(b"x").unwrap();
    assert_eq!(wait(&objs, Some(Duration::from_secs(5))).unwrap(), vec![1]);
    a.send(&1).unwrap();
    assert_eq!(
        wait(&objs, Some(Duration::from_secs(5))).unwrap(),
        vec![0, 1]
    );
    assert_eq!(b.recv().unwrap(), 1);
    // A borrowed descriptor works too.
    let fd = s2.as_fd();
    assert_eq!(wait(&[&fd], Some(Duration::ZERO)).unwrap(), vec![0]);
    // A message that arrives while wait() sleeps wakes it.
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        a.send(&2).unwrap();
        a
    });
    assert_eq!(wait(&[&b], Some(Duration::from_secs(10))).unwrap(), vec![0]);
    assert_eq!(b.recv().unwrap(), 2);
    drop(t.join().unwrap());
    assert_eq!(
        wait(&[&b], Some(Duration::from_secs(10))).unwrap(),
        vec![0],
        "end-of-file is ready"
    );
}

/// Sends one 64 MiB message (the parent does not read, so this blocks mid-message), then
/// sleeps: the parent kills it meanwhile.
fn flood(w: Writer<Vec<u8>>) {
    let big = vec![7u8; 64 << 20];
    let _ = w.send_bytes(&big, 0, None);
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn sender_killed_mid_message_gives_truncated_not_a_hang() {
    let _g = children_lock();
    let _w = watchdog("sender_killed_mid_message", Duration::from_secs(60));
    for m in [StartMethod::Fork, StartMethod::Spawn] {
        let (reader, writer) = Pipe::<Vec<u8>>::new(OneWay).unwrap();
        let mut p = Process::new(flood, writer)
            .start_method(m)
            .daemon(true)
            .start()
            .unwrap();
        assert!(
            reader.poll(Some(Duration::from_secs(20))).unwrap(),
            "data arrives"
        );
        std::thread::sleep(Duration::from_millis(50));
        p.kill().unwrap();
        assert!(matches!(p.join(), Err(ProcessError::Signaled { .. })));
        match reader.recv_bytes(None) {
            Err(e @ Error::Truncated { .. }) => assert!(e.is_eof()),
            other => panic!("expected Truncated, got {:?}", other.map(|v| v.len())),
        }
        assert!(matches!(reader.recv_bytes(None), Err(Error::Eof)));
    }
}

/// Holds the reading end without reading, until killed.
fn hold(r: Reader<Vec<u8>>) {
    std::thread::sleep(Duration::from_secs(60));
    drop(r);
}

#[test]
fn receiver_killed_while_sender_blocked_gives_broken_pipe() {
    let _g = children_lock();
    let _w = watchdog("receiver_killed", Duration::from_secs(60));
    let (reader, writer) = Pipe::<Vec<u8>>::new(OneWay).unwrap();
    let mut p = Process::new(hold, reader)
        .start_method(StartMethod::Spawn)
        .daemon(true)
        .start()
        .unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![1u8; 1 << 20];
        loop {
            if let Err(e) = writer.send_bytes(&chunk, 0, None) {
                return e;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    p.kill().unwrap();
    let _ = p.join();
    assert!(matches!(sender.join().unwrap(), Error::BrokenPipe));
}

/// Receives values through a pipe end given as an argument and sums them, until `u64::MAX`
/// (not end-of-file: a forked child holds a copy of its own pipe's writer, which the parent
/// had when it forked).
fn sum_all(r: Reader<u64>) -> u64 {
    let mut s = 0;
    loop {
        match r.recv().expect("recv") {
            u64::MAX => return s,
            v => s += v,
        }
    }
}

#[test]
fn many_children_each_with_a_pipe() {
    let _g = children_lock();
    let _w = watchdog("many_children", Duration::from_secs(60));
    let mut kids = Vec::new();
    for i in 0..4u64 {
        let (r, w) = Pipe::<u64>::new(OneWay).unwrap();
        let m = if i % 2 == 0 {
            StartMethod::Fork
        } else {
            StartMethod::Spawn
        };
        kids.push((
            Process::new(sum_all, r).start_method(m).start().unwrap(),
            w,
            i,
        ));
    }
    for (_, w, i) in &kids {
        for v in 0..1000 {
            w.send(&(v * (i + 1))).unwrap();
        }
    }
    for (mut child, w, i) in kids {
        w.send(&u64::MAX).unwrap();
        assert_eq!(child.join().unwrap(), 499_500 * (i + 1));
    }
}

#[test]
fn auto_traits() {
    fn send<T: Send>() {}
    send::<Connection<String>>();
    send::<Reader<Vec<u8>>>();
    send::<mp_pipe::Listener>();
    send::<Error>();
    static_assertions::assert_not_impl_any!(Connection<u32>: Sync);
    static_assertions::assert_impl_all!(Error: Send, Sync, std::error::Error);
    static_assertions::assert_impl_all!(mp_pipe::Listener: Send, Sync);
}

#[test]
fn recv_ref_gives_checked_archived_values_and_guards_can_overlap() {
    let _w = watchdog("recv_ref", Duration::from_secs(30));
    // Rings of 1 MiB: the three messages fit without a reader (this test has one thread).
    let (a, b) = Pipe::<Sample>::with_capacity(Duplex, 1 << 20).unwrap();
    let (s1, s2, s3) = (sample(1, 10), sample(2, 200_000), sample(3, 0));
    a.send(&s1).unwrap();
    a.send(&s2).unwrap();
    a.send(&s3).unwrap();
    let first = b.recv_ref().unwrap();
    assert_eq!(first.id, 1);
    assert_eq!(first.name.as_str(), "sample-1");
    // A second receive while the first guard lives (the scratch buffer is taken): still fine.
    let second = b.recv_ref().unwrap();
    assert_eq!(second.data.len(), 200_000);
    assert_eq!(second.deserialize().unwrap(), s2);
    assert_eq!(b.recv().unwrap(), s3);
    assert_eq!(first.deserialize().unwrap(), s1);
    drop((first, second));
    // Garbage is refused by the check, not read.
    a.send_bytes(&[0xee; 5], 0, None).unwrap();
    assert!(matches!(
        b.recv_ref(),
        Err(Error::Core(mp_core::Error::Decode(_)))
    ));
    let t = Duration::from_millis(50);
    let t0 = Instant::now();
    assert!(matches!(b.recv_ref_timeout(t), Err(Error::Timeout)));
    assert_about(t0.elapsed(), t);
}
