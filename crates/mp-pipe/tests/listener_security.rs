//! The listener under hostile peers (issue 19): silent and slow-drip connections on loopback
//! do not keep a real client out, pending handshakes are capped per peer, a client gives up on
//! a listener that never answers, and a Unix socket refuses processes of another uid.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::watchdog;
use mp_pipe::{Address, Client, Connection, Error, Listener};

fn localhost() -> Address {
    Address::tcp("127.0.0.1", 0).unwrap()
}

fn tcp(l: &Listener) -> std::net::SocketAddr {
    let Address::Tcp(a) = l.address().clone() else {
        unreachable!()
    };
    a
}

/// Accepts until a client gets in (failed peers are reported and skipped), says hello to it.
fn serve_first_good(listener: Listener) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut failures = 0;
        loop {
            match listener.accept::<()>() {
                Ok(c) => {
                    c.send_bytes(b"in", 0, None).unwrap();
                    return failures;
                }
                Err(_) => failures += 1,
            }
        }
    })
}

/// 40 silent connections and 4 that drip a byte every 100 ms do not hold the listener: a real
/// client still completes its handshake within a second (before: the one accepting thread ran
/// each handshake in turn, with no time limit by default, so the first silent peer held it
/// for ever and the client timed out).
#[test]
fn silent_and_slow_peers_do_not_lock_out_a_real_client() {
    let _w = watchdog("silent_and_slow_peers", Duration::from_secs(60));
    let listener = Listener::bind(localhost(), Some(b"key")).unwrap();
    let a = tcp(&listener);
    let server = serve_first_good(listener);
    let silent: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(a).unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let drips: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut s = TcpStream::connect(a).unwrap();
                // A valid length, then the body one byte at a time.
                let bytes = [&40u32.to_be_bytes()[..], &[b'x'; 40]].concat();
                for b in bytes {
                    if stop.load(Ordering::Relaxed) || s.write_all(&[b]).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    let conn: mp_pipe::Result<Connection<()>> =
        Client::connect_timeout(a, Some(b"key"), Some(Duration::from_secs(1)));
    let conn = conn.expect("a real client was kept out");
    assert_eq!(conn.recv_bytes(None).unwrap(), b"in");
    server.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for d in drips {
        d.join().unwrap();
    }
    drop(silent);
}

/// Connects `n` silent peers to `a`, each after the previous one got its challenge (so the
/// listener took them in this order).
fn silent_peers(a: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(a).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut challenge = [0u8; 4 + 11 + 8 + 40];
            s.read_exact(&mut challenge).unwrap();
            assert_eq!(&challenge[4..15], b"#CHALLENGE#");
            s
        })
        .collect()
}

/// True when the listener dropped `s` (end-of-file), false when it still waits on it.
fn dropped(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        other => panic!("{other:?}"),
    }
}

/// Past the total limit, the oldest pending handshake is dropped (its socket sees
/// end-of-file); past the per-peer limit, the oldest of that address that is older than the
/// grace period is; the others stay, and a real client still gets in. Before: no limit (and
/// no second handshake ever started: the first peer held the listener).
#[test]
fn pending_handshakes_are_capped() {
    let _w = watchdog("pending_handshakes_capped", Duration::from_secs(60));
    // The total: 6.
    let mut listener = Listener::bind(localhost(), Some(b"key")).unwrap();
    listener.set_handshake_timeout(Some(Duration::from_secs(60)));
    listener.set_handshake_limits(6, 100);
    let a = tcp(&listener);
    let server = serve_first_good(listener);
    let mut peers = silent_peers(a, 10);
    let gone: Vec<bool> = peers.iter_mut().map(dropped).collect();
    assert_eq!(gone, [[true; 4].as_slice(), &[false; 6]].concat());
    let conn: Connection<()> =
        Client::connect_timeout(a, Some(b"key"), Some(Duration::from_secs(10))).unwrap();
    assert_eq!(conn.recv_bytes(None).unwrap(), b"in");
    server.join().unwrap();
    drop(peers);
    // Per peer: 4. The first four age past the grace period; each of the next four drops one.
    let mut listener = Listener::bind(localhost(), Some(b"key")).unwrap();
    listener.set_handshake_timeout(Some(Duration::from_secs(60)));
    listener.set_handshake_limits(100, 4);
    let a = tcp(&listener);
    let server = serve_first_good(listener);
    let mut peers = silent_peers(a, 4);
    thread::sleep(Duration::from_millis(300));
    peers.extend(silent_peers(a, 4));
    let gone: Vec<bool> = peers.iter_mut().map(dropped).collect();
    assert_eq!(gone, [true, true, true, true, false, false, false, false]);
    let conn: Connection<()> =
        Client::connect_timeout(a, Some(b"key"), Some(Duration::from_secs(10))).unwrap();
    assert_eq!(conn.recv_bytes(None).unwrap(), b"in");
    server.join().unwrap();
}

/// A burst of real clients from one address, more than the per-peer limit at once, all get
/// in: young handshakes are never dropped for that limit.
#[test]
fn a_burst_of_real_clients_from_one_address_gets_in() {
    let _w = watchdog("burst_of_clients", Duration::from_secs(60));
    let mut listener = Listener::bind(localhost(), Some(b"key")).unwrap();
    listener.set_handshake_limits(100, 2);
    let a = tcp(&listener);
    let server = thread::spawn(move || {
        (0..12)
            .map(|_| {
                listener
                    .accept::<()>()
                    .map(|c| c.send_bytes(b"in", 0, None))
            })
            .filter(|r| matches!(r, Ok(Ok(()))))
            .count()
    });
    let clients: Vec<_> = (0..12)
        .map(|_| {
            thread::spawn(move || {
                let c: Connection<()> = Client::connect(a, Some(b"key"))?;
                c.recv_bytes(None)
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap().unwrap(), b"in");
    }
    assert_eq!(server.join().unwrap(), 12);
}

/// `Client::connect` gives up on a listener that accepts and never answers (before: it waited
/// for ever).
#[test]
fn a_client_gives_up_on_a_silent_listener() {
    let _w = watchdog("client_default_timeout", Duration::from_secs(60));
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = mute.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(Client::connect::<()>(a, Some(b"key")).map(|_| ()));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("Client::connect still waits on a silent listener");
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    drop(mute);
}

const ENV_CONNECT: &str = "MP_PIPE_TEST_CONNECT_ABSTRACT";

/// Not a test of its own: run by `unix_peers_of_another_uid_are_refused` as a child of
/// another uid, it tries to connect (with the right key) and exits 0 when refused.
#[test]
fn other_uid_client() {
    let Ok(name) = std::env::var(ENV_CONNECT) else {
        return;
    };
    let r = Client::connect_timeout::<()>(
        Address::Abstract(name.into_bytes()),
        Some(b"key"),
        Some(Duration::from_secs(10)),
    );
    std::process::exit(if r.is_err() { 0 } else { 1 });
}

/// A Unix socket (the abstract kind, which file permissions do not protect, like the default
/// address of a Manager) refuses a process of another uid before the handshake, even one
/// that knows the key; a process of this uid gets in. Before: the other uid got in.
#[test]
fn unix_peers_of_another_uid_are_refused() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a child of another uid");
        return;
    }
    let _w = watchdog("other_uid_refused", Duration::from_secs(60));
    let name = format!("mp-pipe-test-uid-{}", std::process::id());
    let listener =
        Listener::bind(Address::Abstract(name.clone().into_bytes()), Some(b"key")).unwrap();
    let listener = Arc::new(listener);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "other_uid_client",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_CONNECT, &name)
        .uid(65534)
        .gid(65534)
        .spawn()
        .unwrap();
    match listener.accept::<()>() {
        Err(Error::Authentication(m)) => assert!(m.contains("uid 65534"), "{m}"),
        other => panic!("another uid's connection: {:?}", other.map(|_| ())),
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "the child of uid 65534 got in: {status}");
    let l = listener.clone();
    let server = thread::spawn(move || l.accept::<()>().map(|c| c.send_bytes(b"in", 0, None)));
    let c: Connection<()> =
        Client::connect(Address::Abstract(name.into_bytes()), Some(b"key")).unwrap();
    assert_eq!(c.recv_bytes(None).unwrap(), b"in");
    server.join().unwrap().unwrap().unwrap();
}
