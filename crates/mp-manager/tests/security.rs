//! The manager under hostile or careless clients (issue 19): arithmetic a client controls,
//! oversized and deeply nested requests, clients that stop reading, too many connections.

use std::time::Duration;

use mp_manager::{Error, Manager};
use mp_process::StartMethod;

mp_process::test_support!();

fn manager() -> Manager {
    Manager::builder()
        .start_method(StartMethod::Spawn)
        .start()
        .unwrap()
}

/// A semaphore released past `u64::MAX` is refused (before: the server's thread for that
/// connection panicked on the overflow), and the connection lives on: the lock it holds stays
/// held until it closes, then is released.
#[test]
fn counts_a_client_controls_never_overflow() {
    let m = manager();
    let sem = m.semaphore(u64::MAX).unwrap();
    let lock = m.lock().unwrap();
    let (s, l) = (sem.clone(), lock.clone());
    let r = std::thread::spawn(move || {
        l.acquire().unwrap();
        let r = s.release();
        // The same connection still answers, and still holds the lock.
        let v = s.value();
        (r, v)
    })
    .join()
    .unwrap();
    assert!(matches!(r.0, Err(Error::TooManyReleases)), "{:?}", r.0);
    assert_eq!(r.1.unwrap(), u64::MAX);
    // The thread exited: its connection closed, so the lock it held is free.
    assert!(lock.acquire_timeout(Some(Duration::from_secs(10))).unwrap());
    lock.release().unwrap();
}

/// A request larger than the server's limit (16 MiB by default) is refused before the server
/// allocates for it, and the server goes on serving; a larger limit can be configured. Before:
/// requests up to 1 GiB were read whole.
#[test]
fn oversized_requests_are_refused() {
    let m = manager();
    let d = m.dict::<u8, Vec<u8>>().unwrap();
    let big = vec![7u8; 20 << 20];
    assert!(d.set(&1, &big).is_err(), "a 20 MiB request was accepted");
    // This thread's next request connects again; the server still serves.
    d.set(&2, &vec![1u8; 1 << 20]).unwrap();
    assert_eq!(d.len().unwrap(), 1);
    let roomy = Manager::builder()
        .start_method(StartMethod::Spawn)
        .max_request_size(64 << 20)
        .start()
        .unwrap();
    let d = roomy.dict::<u8, Vec<u8>>().unwrap();
    d.set(&1, &big).unwrap();
    assert_eq!(d.get(&1).unwrap().unwrap().len(), big.len());
}

/// A value nested without end: each level is a boxed list of the next.
#[derive(mp_core::rkyv::Archive, mp_core::rkyv::Serialize, mp_core::rkyv::Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
#[rkyv(serialize_bounds(
    __S: mp_core::rkyv::ser::Writer + mp_core::rkyv::ser::Allocator,
    __S::Error: mp_core::rkyv::rancor::Source,
))]
#[rkyv(deserialize_bounds(__D::Error: mp_core::rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(
    __C: mp_core::rkyv::validation::ArchiveContext,
    __C::Error: mp_core::rkyv::rancor::Source,
)))]
struct Nest(#[rkyv(omit_bounds)] Vec<Nest>);

impl Nest {
    fn deep(depth: usize) -> Nest {
        let mut n = Nest(Vec::new());
        for _ in 0..depth {
            n = Nest(vec![n]);
        }
        n
    }

    fn depth(&self) -> u64 {
        let mut d = 0;
        let mut at = self;
        while let Some(next) = at.0.first() {
            d += 1;
            at = next;
        }
        d
    }
}

impl Drop for Nest {
    // Unnest iteratively: the default drop would recurse once per level.
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.0);
        while let Some(mut n) = stack.pop() {
            stack.append(&mut n.0);
        }
    }
}

#[derive(Default)]
struct Depth;

impl mp_manager::Served for Depth {
    type Request = Nest;
    type Reply = u64;
    fn handle(&mut self, n: Nest) -> u64 {
        n.depth()
    }
}

/// A custom request nested 100 000 levels deep is refused as malformed instead of
/// overflowing the stack of the server's thread (before: the server process crashed, and
/// every proxy then saw the server gone); a modestly nested one is served.
#[test]
fn deeply_nested_requests_do_not_overflow_the_server() {
    let m = Manager::builder()
        .start_method(StartMethod::Spawn)
        .register::<Depth>("Depth")
        .start()
        .unwrap();
    let c = m.custom::<Depth>("Depth").unwrap();
    assert_eq!(c.call(&Nest::deep(100)).unwrap(), 100);
    // Serializing a deep value recurses in this process too: do it on a large stack.
    let r = std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn({
            let c = c.clone();
            move || c.call(&Nest::deep(100_000)).map_err(|e| e.to_string())
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(r.is_err(), "{r:?}");
    assert_eq!(c.call(&Nest::deep(3)).unwrap(), 3);
    assert_eq!(m.dict::<u8, u8>().unwrap().len().unwrap(), 0);
}

/// Past `max_connections`, a new connection is refused at once (its first call says why); once
/// a connection closes, a new one is served.
#[test]
fn connections_past_the_cap_are_refused() {
    let m = Manager::builder()
        .start_method(StartMethod::Spawn)
        .max_connections(2)
        .start()
        .unwrap();
    let d = m.dict::<u8, u8>().unwrap(); // this thread's connection: 1
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn({
        let d = d.clone();
        move || {
            d.set(&1, &1).unwrap(); // connection 2
            held_tx.send(()).unwrap();
            let _ = go_rx.recv_timeout(Duration::from_secs(30));
        }
    });
    held_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let third = std::thread::spawn({
        let d = d.clone();
        move || d.len()
    });
    let third = third.join().unwrap();
    assert!(
        matches!(third, Err(Error::TooManyConnections(2))),
        "a third connection: {third:?}"
    );
    go_tx.send(()).unwrap();
    holder.join().unwrap();
    // The holder's connection closed with its thread: a new thread gets in (the server may
    // take a moment to notice the close).
    let mut served = false;
    for _ in 0..200 {
        let d = d.clone();
        if std::thread::spawn(move || d.len()).join().unwrap().is_ok() {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(served);
    assert_eq!(d.len().unwrap(), 1);
}

/// Silent connections to a Manager's TCP address do not keep a real client out: it completes
/// its handshake within a second (before: the server's one accepting thread ran each
/// handshake in turn, 10 s per silent peer).
#[test]
fn silent_peers_do_not_lock_out_the_managers_clients() {
    let m = Manager::builder()
        .start_method(StartMethod::Spawn)
        .address(mp_pipe::Address::tcp("127.0.0.1", 0).unwrap())
        .start()
        .unwrap();
    let mp_pipe::Address::Tcp(a) = m.address().unwrap() else {
        panic!("not TCP")
    };
    let silent: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(a).unwrap())
        .collect();
    let conn: mp_pipe::Result<mp_pipe::Connection<()>> =
        mp_pipe::Client::connect_timeout(a, Some(m.authkey()), Some(Duration::from_secs(1)));
    assert!(conn.is_ok(), "a real client was kept out: {:?}", conn.err());
    assert_eq!(m.dict::<u8, u8>().unwrap().len().unwrap(), 0);
    drop(silent);
}

const ENV_CONNECT: &str = "MP_MANAGER_TEST_CONNECT";

/// Not a test of its own: run by `another_uid_cannot_reach_the_default_manager` as a child of
/// another uid, given the abstract address and the key; exits 0 when refused.
#[test]
fn other_uid_connects() {
    let Ok(v) = std::env::var(ENV_CONNECT) else {
        return;
    };
    let (name, key) = v.split_once(' ').unwrap();
    let key: Vec<u8> = (0..key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key[i..i + 2], 16).unwrap())
        .collect();
    let r = Manager::connect(mp_pipe::Address::Abstract(name.as_bytes().to_vec()), &key);
    std::process::exit(if r.is_err() { 0 } else { 1 });
}

/// The default Manager listens on an abstract Unix socket, which every local user can reach:
/// a process of another uid is refused, even one that knows the key (before: it got in).
#[test]
fn another_uid_cannot_reach_the_default_manager() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a child of another uid");
        return;
    }
    let m = manager();
    let mp_pipe::Address::Abstract(name) = m.address().unwrap() else {
        panic!("the default address is not abstract");
    };
    let key: String = m.authkey().iter().map(|b| format!("{b:02x}")).collect();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "other_uid_connects", "--test-threads=1"])
        .env(
            ENV_CONNECT,
            format!("{} {key}", String::from_utf8(name).unwrap()),
        )
        .uid(65534)
        .gid(65534)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "a process of uid 65534 reached the manager"
    );
    assert_eq!(m.dict::<u8, u8>().unwrap().len().unwrap(), 0);
}
