//! Wire compatibility with CPython's `multiprocessing.connection`, tested against the
//! machine's `python3`: a Python Listener with an authkey and a Rust Client, a Rust Listener
//! and a Python Client, a wrong key refused on both sides, large messages both ways, and the
//! 3.12+ `{sha256}` handshake driven from Python's own `hmac` (the machine's Python may be older
//! and speak the legacy HMAC-MD5 form, which is tested by the first cases).
//!
//! Each test skips, with a message, when `python3` is not installed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::watchdog;
use mp_pipe::{Address, Client, Connection, Error, Listener};

fn python() -> Option<String> {
    let ok = Command::new("python3")
        .args(["-c", "import multiprocessing.connection"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some("python3".into())
    } else {
        // `.ci/run` sets MP_REQUIRE_PYTHON (and installs python3): there a missing
        // interpreter is a failure, not a reason to pass without testing anything.
        assert!(
            std::env::var_os("MP_REQUIRE_PYTHON").is_none(),
            "python3 with multiprocessing is required (MP_REQUIRE_PYTHON is set)"
        );
        eprintln!(
            "SKIPPED: python3 (with multiprocessing) is not installed; CPython interop not tested"
        );
        None
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `script` with `args`; stdout is piped so the test can read what it prints.
fn run_python(py: &str, script: &str, args: &[&str]) -> Child {
    Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3")
}

/// Waits for the script and returns (exit code, stdout after the first line, stderr).
fn finish(
    mut child: Child,
    mut out: BufReader<std::process::ChildStdout>,
) -> (i32, String, String) {
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let status = child.wait().expect("wait for python3");
    (status.code().unwrap_or(-1), rest, err)
}

const PY_LISTENER: &str = r#"
import sys
from multiprocessing.connection import Listener
from multiprocessing import AuthenticationError
key = bytes.fromhex(sys.argv[1])
addr = ('127.0.0.1', 0) if sys.argv[2] == 'tcp' else sys.argv[2]
with Listener(addr, authkey=key) as l:
    print(l.address[1] if sys.argv[2] == 'tcp' else l.address, flush=True)
    try:
        c = l.accept()
    except AuthenticationError as e:
        print('AUTHFAIL', e, flush=True)
        sys.exit(3)
    with c:
        c.send_bytes(b'hello from python')
        m = c.recv_bytes()
        assert m == b'hello from rust', m
        big = c.recv_bytes()
        assert big == bytes(range(256)) * 8192, len(big)
        c.send_bytes(big[::-1])
        buf = bytearray(16)
        n = c.recv_bytes_into(buf, 4)
        assert n == 5 and bytes(buf[4:9]) == b'12345', (n, buf)
        c.send_bytes(b'0123456789', 2, 3)
        assert c.recv_bytes() == b'', 'empty message'
print('OK', flush=True)
"#;

fn rust_client_session(conn: &Connection<Vec<u8>>) {
    assert_eq!(conn.recv_bytes(None).unwrap(), b"hello from python");
    conn.send_bytes(b"hello from rust", 0, None).unwrap();
    let big: Vec<u8> = (0..8192).flat_map(|_| 0..=255u8).collect();
    conn.send_bytes(&big, 0, None).unwrap();
    let back = conn.recv_bytes(None).unwrap();
    assert!(back.iter().eq(big.iter().rev()), "2 MiB reversed");
    conn.send_bytes(b"xx12345", 2, None).unwrap();
    assert_eq!(conn.recv_bytes(None).unwrap(), b"234");
    conn.send_bytes(b"", 0, None).unwrap();
}

#[test]
fn python_listener_rust_client() {
    let Some(py) = python() else { return };
    let _w = watchdog("python_listener_rust_client", Duration::from_secs(60));
    let key = b"interop key";
    let sock = std::env::temp_dir().join(format!("mp-pipe-interop-{}.sock", std::process::id()));
    for family in ["tcp", sock.to_str().unwrap()] {
        let mut child = run_python(&py, PY_LISTENER, &[&hex(key), family]);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let address: Address = if family == "tcp" {
            let port: u16 = first
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("port: {first:?}"));
            Address::tcp("127.0.0.1", port).unwrap()
        } else {
            Address::Unix(first.trim().into())
        };
        let conn: Connection<Vec<u8>> = Client::connect(address, Some(key)).unwrap();
        rust_client_session(&conn);
        drop(conn);
        let (code, rest, err) = finish(child, out);
        assert_eq!(code, 0, "python: {rest} {err}");
        assert!(rest.contains("OK"), "python: {rest} {err}");
    }
}

#[test]
fn python_listener_refuses_a_wrong_key_and_so_does_rust() {
    let Some(py) = python() else { return };
    let _w = watchdog("python_listener_wrong_key", Duration::from_secs(60));
    let mut child = run_python(&py, PY_LISTENER, &[&hex(b"right"), "tcp"]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let port: u16 = first.trim().parse().unwrap();
    let r = Client::connect::<Vec<u8>>(Address::tcp("127.0.0.1", port).unwrap(), Some(b"wrong"));
    assert!(matches!(r, Err(Error::Authentication(_))), "rust: {r:?}");
    let (code, rest, err) = finish(child, out);
    assert_eq!(code, 3, "python: {rest} {err}");
    assert!(rest.contains("AUTHFAIL"), "python: {rest} {err}");
}

const PY_CLIENT: &str = r#"
import sys
from multiprocessing.connection import Client
from multiprocessing import AuthenticationError
key = bytes.fromhex(sys.argv[1])
addr = ('127.0.0.1', int(sys.argv[2])) if sys.argv[2].isdigit() else sys.argv[2]
try:
    c = Client(addr, authkey=key)
except AuthenticationError as e:
    print('AUTHFAIL', e, flush=True)
    sys.exit(3)
with c:
    c.send_bytes(b'hello from python')
    assert c.recv_bytes() == b'hello from rust'
    big = c.recv_bytes()
    assert big == bytes(range(256)) * 8192, len(big)
    c.send_bytes(big[::-1])
    buf = bytearray(16)
    n = c.recv_bytes_into(buf, 4)
    assert n == 5 and bytes(buf[4:9]) == b'12345', (n, buf)
    c.send_bytes(b'0123456789', 2, 3)
    assert c.recv_bytes() == b''
    try:
        c.recv_bytes()
        raise SystemExit('expected EOFError')
    except EOFError:
        pass
print('OK', flush=True)
"#;

fn rust_server_session(conn: &Connection<Vec<u8>>) {
    assert_eq!(conn.recv_bytes(None).unwrap(), b"hello from python");
    conn.send_bytes(b"hello from rust", 0, None).unwrap();
    let big: Vec<u8> = (0..8192).flat_map(|_| 0..=255u8).collect();
    conn.send_bytes(&big, 0, None).unwrap();
    let back = conn.recv_bytes(None).unwrap();
    assert!(back.iter().eq(big.iter().rev()));
    conn.send_bytes(b"xx12345", 2, None).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(conn.recv_bytes_into(&mut buf, 1).unwrap(), 3);
    assert_eq!(&buf[1..4], b"234");
    conn.send_bytes(b"", 0, None).unwrap();
}

#[test]
fn rust_listener_python_client() {
    let Some(py) = python() else { return };
    let _w = watchdog("rust_listener_python_client", Duration::from_secs(60));
    let key = b"another key";
    let sock =
        std::env::temp_dir().join(format!("mp-pipe-interop-srv-{}.sock", std::process::id()));
    for address in [
        Address::tcp("127.0.0.1", 0).unwrap(),
        Address::Unix(sock.clone()),
    ] {
        let listener = Listener::bind(address, Some(key)).unwrap();
        let arg = match listener.address() {
            Address::Tcp(a) => a.port().to_string(),
            Address::Unix(p) => p.to_str().unwrap().to_string(),
            Address::Abstract(_) => unreachable!(),
        };
        let mut child = run_python(&py, PY_CLIENT, &[&hex(key), &arg]);
        let out = BufReader::new(child.stdout.take().unwrap());
        let conn: Connection<Vec<u8>> = listener.accept().unwrap();
        rust_server_session(&conn);
        drop(conn);
        let (code, rest, err) = finish(child, out);
        assert_eq!(code, 0, "python: {rest} {err}");
        assert!(rest.contains("OK"), "python: {rest} {err}");
    }
}

#[test]
fn rust_listener_refuses_a_wrong_key_and_so_does_python() {
    let Some(py) = python() else { return };
    let _w = watchdog("rust_listener_wrong_key", Duration::from_secs(60));
    let listener = Listener::bind(Address::tcp("127.0.0.1", 0).unwrap(), Some(b"right")).unwrap();
    let Address::Tcp(a) = listener.address().clone() else {
        unreachable!()
    };
    let mut child = run_python(&py, PY_CLIENT, &[&hex(b"wrong"), &a.port().to_string()]);
    let out = BufReader::new(child.stdout.take().unwrap());
    let r = listener.accept::<Vec<u8>>();
    assert!(matches!(r, Err(Error::Authentication(_))), "rust: {r:?}");
    let (code, rest, err) = finish(child, out);
    assert_eq!(code, 3, "python: {rest} {err}");
    assert!(rest.contains("AUTHFAIL"), "python: {rest} {err}");
}

/// A Python peer that speaks the 3.12+ handshake: on 3.12+ the standard library itself; on
/// older versions the same exchange written out with Python's `hmac` (challenge
/// `#CHALLENGE#{sha256}<40 random bytes>`, answer `{sha256}` + HMAC-SHA256 over the whole
/// message), so the `{sha256}` form is checked against Python's HMAC on any version.
const PY_MODERN_CLIENT: &str = r#"
import sys, os, hmac
from multiprocessing import connection
from multiprocessing import AuthenticationError
key = bytes.fromhex(sys.argv[1])
port = int(sys.argv[2])
if sys.version_info >= (3, 12):
    try:
        c = connection.Client(('127.0.0.1', port), authkey=key)
    except AuthenticationError as e:
        print('AUTHFAIL', e, flush=True); sys.exit(3)
else:
    c = connection.Client(('127.0.0.1', port))
    # answer the listener's challenge
    m = c.recv_bytes(256)
    assert m.startswith(b'#CHALLENGE#{sha256}') and len(m) == 11 + 8 + 40, m
    msg = m[len(b'#CHALLENGE#'):]
    c.send_bytes(b'{sha256}' + hmac.new(key, msg, 'sha256').digest())
    if c.recv_bytes(256) != b'#WELCOME#':
        print('AUTHFAIL rejected', flush=True); sys.exit(3)
    # challenge the listener
    msg = b'{sha256}' + os.urandom(40)
    c.send_bytes(b'#CHALLENGE#' + msg)
    r = c.recv_bytes(256)
    ok = r == b'{sha256}' + hmac.new(key, msg, 'sha256').digest()
    c.send_bytes(b'#WELCOME#' if ok else b'#FAILURE#')
    if not ok:
        print('AUTHFAIL answer', r, flush=True); sys.exit(3)
c.send_bytes(b'modern hello')
assert c.recv_bytes() == b'modern reply'
print('OK', flush=True)
"#;

#[test]
fn sha256_handshake_matches_pythons_hmac() {
    let Some(py) = python() else { return };
    let _w = watchdog("sha256_handshake", Duration::from_secs(60));
    for (server_key, client_key, ok) in [(b"k1", b"k1", true), (b"k1", b"k2", false)] {
        let listener =
            Listener::bind(Address::tcp("127.0.0.1", 0).unwrap(), Some(server_key)).unwrap();
        let Address::Tcp(a) = listener.address().clone() else {
            unreachable!()
        };
        let mut child = run_python(
            &py,
            PY_MODERN_CLIENT,
            &[&hex(client_key), &a.port().to_string()],
        );
        let out = BufReader::new(child.stdout.take().unwrap());
        let r = listener.accept::<Vec<u8>>();
        if ok {
            let conn = r.unwrap();
            assert_eq!(conn.recv_bytes(None).unwrap(), b"modern hello");
            conn.send_bytes(b"modern reply", 0, None).unwrap();
        } else {
            assert!(matches!(r, Err(Error::Authentication(_))), "rust: {r:?}");
        }
        let (code, rest, err) = finish(child, out);
        assert_eq!(code, if ok { 0 } else { 3 }, "python: {rest} {err}");
    }
}
