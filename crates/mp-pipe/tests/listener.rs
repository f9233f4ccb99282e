//! Listener and Client between Rust peers: CONFORMANCE C3 (hello over a Unix socket and over
//! TCP on 127.0.0.1, address in use, authkey right and wrong on both sides), and hostile
//! peers: malformed and oversized frames, a silent client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::{assert_about, watchdog};
use mp_pipe::{wait, Address, Client, Connection, Error, Listener, Waitable};

fn sock_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mp-pipe-test-{tag}-{}.sock", std::process::id()))
}

fn localhost() -> Address {
    Address::tcp("127.0.0.1", 0).unwrap()
}

/// Accepts one connection in a thread and runs `serve` on it.
fn serve_one<F>(listener: Listener, serve: F) -> thread::JoinHandle<mp_pipe::Result<()>>
where
    F: FnOnce(Connection<String>) -> mp_pipe::Result<()> + Send + 'static,
{
    thread::spawn(move || {
        let conn = listener.accept::<String>()?;
        serve(conn)
    })
}

fn hello_exchange(address: Address, key: Option<&'static [u8]>) {
    let listener = Listener::bind(address, key).unwrap();
    let address = listener.address().clone();
    let server = serve_one(listener, |conn| {
        assert_eq!(conn.recv_bytes(None)?, b"hello");
        conn.send_bytes(b"hello back", 0, None)?;
        assert_eq!(conn.recv()?, "typed hello");
        conn.send(&"typed reply".to_string())?;
        assert!(matches!(conn.recv(), Err(Error::Eof)));
        Ok(())
    });
    let client: Connection<String> = Client::connect(address, key).unwrap();
    client.send_bytes(b"hello", 0, None).unwrap();
    assert_eq!(client.recv_bytes(None).unwrap(), b"hello back");
    client.send(&"typed hello".to_string()).unwrap();
    assert_eq!(client.recv().unwrap(), "typed reply");
    client.close().unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn c3_hello_over_tcp_and_unix_with_and_without_a_key() {
    let _w = watchdog("c3_hello", Duration::from_secs(30));
    hello_exchange(localhost(), None);
    hello_exchange(localhost(), Some(b"secret key"));
    let path = sock_path("hello");
    hello_exchange(Address::Unix(path.clone()), Some(b"k"));
    assert!(!path.exists(), "the listener removes its socket file");
    hello_exchange(Address::Unix(sock_path("hello2")), None);
    hello_exchange(
        Address::Abstract(format!("mp-pipe-test-{}", std::process::id()).into_bytes()),
        Some(b"abstract"),
    );
}

#[test]
fn c3_binding_an_address_in_use_fails() {
    let first = Listener::bind(localhost(), None).unwrap();
    match Listener::bind(first.address().clone(), None) {
        Err(Error::AddressInUse(a)) => assert!(a.contains("127.0.0.1")),
        other => panic!("expected AddressInUse, got {other:?}"),
    }
    let path = sock_path("inuse");
    let first_unix = Listener::bind(path.as_path(), None).unwrap();
    assert!(matches!(
        Listener::bind(path.as_path(), None),
        Err(Error::AddressInUse(_))
    ));
    drop(first_unix);
    assert!(!path.exists());
    // Free again once the first listener is gone.
    let again = Listener::bind(path.as_path(), None).unwrap();
    drop(again);
    assert!(matches!(
        Listener::bind(localhost(), Some(b"")),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn c3_a_wrong_key_fails_on_both_sides() {
    let _w = watchdog("c3_wrong_key", Duration::from_secs(30));
    for address in [localhost(), Address::Unix(sock_path("wrongkey"))] {
        let listener = Listener::bind(address, Some(b"right")).unwrap();
        let address = listener.address().clone();
        let server = thread::spawn(move || listener.accept::<()>().map(|_| ()));
        let client = Client::connect::<()>(address.clone(), Some(b"wrong"));
        assert!(
            matches!(client, Err(Error::Authentication(_))),
            "client: {client:?}"
        );
        let served = server.join().unwrap();
        assert!(
            matches!(served, Err(Error::Authentication(_))),
            "server: {served:?}"
        );
        // A client without a key is refused by a listener with one, and the reverse.
        let listener = Listener::bind(localhost(), Some(b"right")).unwrap();
        let a = listener.address().clone();
        let server = thread::spawn(move || listener.accept::<()>().map(|_| ()));
        let client: Connection<Vec<u8>> = Client::connect(a, None).unwrap();
        // It sends its first message where the answer to the challenge belongs.
        client.send_bytes(b"hello", 0, None).unwrap();
        assert!(matches!(
            server.join().unwrap(),
            Err(Error::Authentication(_))
        ));
        drop(client);
        let listener = Listener::bind(localhost(), None).unwrap();
        let a = listener.address().clone();
        let server = thread::spawn(move || {
            let c = listener.accept::<()>()?;
            c.send_bytes(b"not a challenge", 0, None)
        });
        assert!(matches!(
            Client::connect::<()>(a, Some(b"key")),
            Err(Error::Authentication(_))
        ));
        server.join().unwrap().unwrap();
    }
}

/// A listener without a key and a raw socket client that writes `bytes`.
fn raw_peer(bytes: Vec<u8>) -> (Connection<Vec<u8>>, TcpStream) {
    let listener = Listener::bind(localhost(), None).unwrap();
    let Address::Tcp(a) = listener.address().clone() else {
        unreachable!()
    };
    let mut raw = TcpStream::connect(a).unwrap();
    let conn = listener.accept::<Vec<u8>>().unwrap();
    raw.write_all(&bytes).unwrap();
    (conn, raw)
}

#[test]
fn malformed_and_oversized_frames_are_refused() {
    let _w = watchdog("malformed_frames", Duration::from_secs(30));
    // CPython's framing: 4-byte big-endian length.
    let (conn, _raw) = raw_peer([&5i32.to_be_bytes()[..], b"hello"].concat());
    assert_eq!(conn.recv_bytes(None).unwrap(), b"hello");
    // The escape for large frames (-1, then an 8-byte length) is accepted for any size.
    let (conn, _raw) = raw_peer([&(-1i32).to_be_bytes()[..], &3u64.to_be_bytes(), b"abc"].concat());
    assert_eq!(conn.recv_bytes(None).unwrap(), b"abc");
    // A negative length is a protocol error.
    let (conn, _raw) = raw_peer((-7i32).to_be_bytes().to_vec());
    assert!(matches!(conn.recv_bytes(None), Err(Error::Protocol(_))));
    // A frame above the limit is refused before anything is allocated, and the connection
    // is closed (the peer sees end-of-file).
    let (conn, mut raw) =
        raw_peer([&(-1i32).to_be_bytes()[..], &(1u64 << 60).to_be_bytes()].concat());
    match conn.recv_bytes(None) {
        Err(Error::FrameTooLarge { size, limit }) => {
            assert_eq!(size, 1 << 60);
            assert_eq!(limit, mp_pipe::DEFAULT_MAX_MESSAGE_SIZE);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(matches!(
        conn.recv_bytes(None),
        Err(Error::FrameTooLarge { .. })
    ));
    let mut rest = Vec::new();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(raw.read_to_end(&mut rest).unwrap(), 0, "our side shut down");
    // A lowered limit applies to typed receives too.
    let (conn, _raw) = raw_peer([&2000i32.to_be_bytes()[..], &[0u8; 2000]].concat());
    conn.set_max_message_size(1000);
    assert_eq!(conn.max_message_size(), 1000);
    assert!(matches!(
        conn.recv(),
        Err(Error::FrameTooLarge {
            size: 2000,
            limit: 1000
        })
    ));
    // A peer that stops in the middle of a frame: truncated, then end-of-file.
    let (conn, raw) = raw_peer([&100i32.to_be_bytes()[..], &[1u8; 40]].concat());
    drop(raw);
    assert!(matches!(
        conn.recv_bytes(None),
        Err(Error::Truncated {
            received: 40,
            expected: 100
        })
    ));
    assert!(matches!(conn.recv_bytes(None), Err(Error::Eof)));
    // ... or in the middle of a header.
    let (conn, raw) = raw_peer(vec![0, 0]);
    drop(raw);
    assert!(matches!(
        conn.recv_bytes(None),
        Err(Error::Truncated {
            received: 2,
            expected: 4
        })
    ));
    // Garbage where a typed value is expected is a decode error, not a crash.
    let (conn, _raw) = raw_peer([&3i32.to_be_bytes()[..], &[0xff; 3]].concat());
    assert!(matches!(
        conn.recv(),
        Err(Error::Core(mp_core::Error::Decode(_)))
    ));
}

#[test]
fn a_timed_receive_keeps_a_half_received_frame() {
    let (conn, mut raw) = raw_peer([&10i32.to_be_bytes()[..], b"01234"].concat());
    let t = Duration::from_millis(100);
    let t0 = Instant::now();
    assert!(matches!(
        conn.recv_bytes_timeout(None, t),
        Err(Error::Timeout)
    ));
    assert_about(t0.elapsed(), t);
    raw.write_all(b"56789").unwrap();
    assert_eq!(conn.recv_bytes(None).unwrap(), b"0123456789");
    // recv_bytes(max) and a short buffer keep the message.
    raw.write_all(&[&6i32.to_be_bytes()[..], b"abcdef"].concat())
        .unwrap();
    assert!(matches!(
        conn.recv_bytes(Some(5)),
        Err(Error::MessageTooLong { size: 6, max: 5 })
    ));
    let mut small = [0u8; 4];
    assert!(matches!(
        conn.recv_bytes_into(&mut small, 0),
        Err(Error::BufferTooShort {
            needed: 6,
            available: 4
        })
    ));
    let mut buf = [0u8; 8];
    assert_eq!(conn.recv_bytes_into(&mut buf, 2).unwrap(), 6);
    assert_eq!(&buf[2..], b"abcdef");
}

#[test]
fn hostile_handshakes_are_refused_without_allocating() {
    let _w = watchdog("hostile_handshakes", Duration::from_secs(30));
    // A client that answers the challenge with a frame announcing 1 GiB.
    let listener = Listener::bind(localhost(), Some(b"key")).unwrap();
    let Address::Tcp(a) = listener.address().clone() else {
        unreachable!()
    };
    let client = thread::spawn(move || {
        let mut raw = TcpStream::connect(a).unwrap();
        let mut hdr = [0u8; 4];
        raw.read_exact(&mut hdr).unwrap();
        let mut challenge = vec![0u8; i32::from_be_bytes(hdr) as usize];
        raw.read_exact(&mut challenge).unwrap();
        assert!(challenge.starts_with(b"#CHALLENGE#{sha256}"));
        assert_eq!(challenge.len(), 11 + 8 + 40);
        raw.write_all(&(1i32 << 30).to_be_bytes()).unwrap();
        raw
    });
    assert!(matches!(
        listener.accept::<()>(),
        Err(Error::Authentication(_))
    ));
    drop(client.join().unwrap());
    // A client that connects and says nothing: the handshake timeout frees the listener.
    let mut listener = Listener::bind(localhost(), Some(b"key")).unwrap();
    listener.set_handshake_timeout(Some(Duration::from_millis(100)));
    let Address::Tcp(a) = listener.address().clone() else {
        unreachable!()
    };
    let silent = TcpStream::connect(a).unwrap();
    let t0 = Instant::now();
    assert!(matches!(listener.accept::<()>(), Err(Error::Timeout)));
    assert_about(t0.elapsed(), Duration::from_millis(100));
    drop(silent);
}

#[test]
fn sixteen_mib_over_a_unix_socket_and_wait_on_a_listener() {
    let _w = watchdog("sixteen_mib_socket", Duration::from_secs(60));
    let path = sock_path("big");
    let listener = Listener::bind(path.as_path(), Some(b"k")).unwrap();
    let objs: [&dyn Waitable; 1] = [&listener];
    assert!(wait(&objs, Some(Duration::from_millis(10)))
        .unwrap()
        .is_empty());
    let p2 = path.clone();
    let client = thread::spawn(move || {
        let c: Connection<Vec<u8>> = Client::connect(p2.as_path(), Some(b"k")).unwrap();
        let big = c.recv().unwrap();
        c.send(&big).unwrap();
        big.len()
    });
    assert_eq!(wait(&objs, Some(Duration::from_secs(10))).unwrap(), vec![0]);
    let conn: Connection<Vec<u8>> = listener.accept().unwrap();
    let big: Vec<u8> = (0..16usize << 20).map(|i| (i % 253) as u8).collect();
    conn.send(&big).unwrap();
    assert!(conn.poll(Some(Duration::from_secs(30))).unwrap());
    assert!(conn.recv().unwrap() == big);
    assert_eq!(client.join().unwrap(), 16 << 20);
    // Sent through a Unix socket with the raw protocol, read back by a plain stream.
    let (a, mut b) = UnixStream::pair().unwrap();
    let c: Connection<()> = Connection::from_socket(a.into());
    c.send_bytes(b"xyz", 0, None).unwrap();
    let mut got = [0u8; 7];
    b.read_exact(&mut got).unwrap();
    assert_eq!(got, *b"\0\0\0\x03xyz");
}

/// The fault campaign's `manager_server` finding (rounds 745 and 1185 of `--long`): a peer
/// that goes away in the middle of the handshake is `HandshakeClosed`, not a failed
/// authentication. Before the fix, each of these was `Error::Authentication`.
#[test]
fn a_peer_gone_mid_handshake_is_handshake_closed_not_authentication() {
    let _w = watchdog("handshake_closed", Duration::from_secs(30));
    // A "listener" that accepts and closes at once: the client finds no challenge.
    let raw = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = raw.local_addr().unwrap();
    let closer = thread::spawn(move || drop(raw.accept().unwrap()));
    let r = Client::connect::<()>(Address::tcp("127.0.0.1", a.port()).unwrap(), Some(b"key"));
    assert!(matches!(r, Err(Error::HandshakeClosed)), "client: {r:?}");
    closer.join().unwrap();

    // A listener that sends its challenge, reads the answer and closes without a verdict.
    let raw = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = raw.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = raw.accept().unwrap();
        let challenge = b"#CHALLENGE#{sha256}0123456789012345678901234567890123456789";
        s.write_all(&(challenge.len() as i32).to_be_bytes())
            .unwrap();
        s.write_all(challenge).unwrap();
        let mut hdr = [0u8; 4];
        s.read_exact(&mut hdr).unwrap();
        let mut answer = vec![0u8; i32::from_be_bytes(hdr) as usize];
        s.read_exact(&mut answer).unwrap();
    });
    let r = Client::connect::<()>(Address::tcp("127.0.0.1", a.port()).unwrap(), Some(b"key"));
    assert!(matches!(r, Err(Error::HandshakeClosed)), "client: {r:?}");
    server.join().unwrap();

    // A client that reads the challenge and closes: the listener reports HandshakeClosed,
    // and serves the next client.
    for address in [localhost(), Address::Unix(sock_path("closed"))] {
        let listener = Listener::bind(address, Some(b"key")).unwrap();
        let address = listener.address().clone();
        // The challenge is sent once the listener's handshake thread runs (the first
        // accept), so the peer runs beside it.
        let a2 = address.clone();
        let peer = thread::spawn(move || {
            let mut hdr = [0u8; 4];
            match a2 {
                Address::Tcp(a) => TcpStream::connect(a).unwrap().read_exact(&mut hdr).unwrap(),
                Address::Unix(p) => UnixStream::connect(p)
                    .unwrap()
                    .read_exact(&mut hdr)
                    .unwrap(),
                _ => unreachable!(),
            }
            // Dropped here: closed after reading the challenge's header.
        });
        let r = listener.accept::<()>();
        assert!(matches!(r, Err(Error::HandshakeClosed)), "listener: {r:?}");
        peer.join().unwrap();
        assert!(Error::HandshakeClosed.is_eof());
        let client =
            thread::spawn(move || Client::connect::<()>(address, Some(b"key")).map(|_| ()));
        listener.accept::<()>().unwrap();
        client.join().unwrap().unwrap();
    }

    // A wrong key stays a failed authentication on both sides.
    let listener = Listener::bind(localhost(), Some(b"right")).unwrap();
    let address = listener.address().clone();
    let server = thread::spawn(move || listener.accept::<()>().map(|_| ()));
    let r = Client::connect::<()>(address, Some(b"wrong"));
    assert!(matches!(r, Err(Error::Authentication(_))), "client: {r:?}");
    let r = server.join().unwrap();
    assert!(
        matches!(r, Err(Error::Authentication(_))),
        "listener: {r:?}"
    );
}
