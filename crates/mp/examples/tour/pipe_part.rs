//! mp-pipe: a duplex Pipe with a spawned child, wait() over several children, and a
//! Listener/Client pair with an authkey (CPython's wire format and handshake).

use std::error::Error;
use std::time::{Duration, Instant};

use mp::pipe::{wait, Address, Client, Connection, Duplex, Listener, Pipe, Waitable};
use mp::{Process, StartMethod};

fn echo(conn: Connection<u64>) -> u64 {
    let mut n = 0;
    while let Ok(x) = conn.recv() {
        if x == u64::MAX {
            break;
        }
        conn.send(&(x + 1)).expect("send");
        n += 1;
    }
    n
}

fn report_after(conn: Connection<String>) {
    let ms = 20 + 30 * u64::from(std::process::id() % 3);
    std::thread::sleep(Duration::from_millis(ms));
    conn.send(&format!("child {} slept {ms} ms", std::process::id()))
        .expect("send");
}

fn client(port: u16) -> String {
    let conn: Connection<String> = Client::connect(
        Address::tcp("127.0.0.1", port).expect("address"),
        Some(b"tour-key"),
    )
    .expect("connect");
    conn.send(&"hello over TCP".to_string()).expect("send");
    conn.recv().expect("recv")
}

pub(crate) fn run() -> Result<(), Box<dyn Error>> {
    println!("== pipes and connections (mp-pipe)");
    let (parent, child_end) = Pipe::<u64>::new(Duplex)?;
    let mut child = Process::new(echo, child_end)
        .start_method(StartMethod::Spawn)
        .start()?;
    let t0 = Instant::now();
    let rounds = 10_000u64;
    let mut x = 0;
    for _ in 0..rounds {
        parent.send(&x)?;
        x = parent.recv()?;
    }
    let dt = t0.elapsed();
    parent.send(&u64::MAX)?;
    println!(
        "{rounds} round trips with a spawned child through a Pipe: {:.2} µs each (child counted {})",
        dt.as_secs_f64() * 1e6 / rounds as f64,
        child.join()?
    );

    let mut ends = Vec::new();
    let mut kids = Vec::new();
    for _ in 0..3 {
        let (mine, theirs) = Pipe::<String>::new(Duplex)?;
        kids.push(Process::new(report_after, theirs).start()?);
        ends.push(mine);
    }
    let mut done = [false; 3];
    while done.contains(&false) {
        let live: Vec<usize> = (0..ends.len()).filter(|&i| !done[i]).collect();
        let objects: Vec<&dyn Waitable> = live.iter().map(|&i| &ends[i] as &dyn Waitable).collect();
        for ready in wait(&objects, Some(Duration::from_secs(10)))? {
            let i = live[ready];
            println!("wait(): connection {i} is ready: {:?}", ends[i].recv()?);
            done[i] = true;
        }
    }
    for k in &mut kids {
        k.join()?;
    }

    let listener = Listener::bind(Address::tcp("127.0.0.1", 0)?, Some(b"tour-key"))?;
    let port = match listener.address() {
        Address::Tcp(a) => a.port(),
        other => return Err(format!("unexpected address {other:?}").into()),
    };
    let mut c = Process::new(client, port).start()?;
    let conn: Connection<String> = listener.accept()?;
    let got = conn.recv()?;
    conn.send(&format!("the listener got {got:?}"))?;
    println!(
        "Listener/Client on 127.0.0.1:{port} with an authkey (HMAC challenge both ways): {:?}",
        c.join()?
    );
    // A wrong key: the handshake fails on both sides (the listener must be accepting).
    let (server_side, client_side) = std::thread::scope(|scope| {
        let server = scope.spawn(|| listener.accept::<String>().map(|_| ()));
        let client = Client::connect::<String>(
            Address::tcp("127.0.0.1", port).expect("address"),
            Some(b"wrong-key"),
        )
        .map(|_| ());
        (server.join().expect("accept thread"), client)
    });
    match (server_side, client_side) {
        (Err(s), Err(c)) => {
            println!("a wrong key is refused on both sides: listener: {s}; client: {c}")
        }
        other => return Err(format!("a wrong key was not refused: {other:?}").into()),
    }
    println!();
    Ok(())
}
