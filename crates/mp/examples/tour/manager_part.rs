//! mp-manager: a manager's dict, list and namespace mutated by children under fork and spawn,
//! a lock and a value shared by them, and a remote client that finds a queue by name over TCP
//! with an authkey.

use std::error::Error;
use std::time::Instant;

use mp::manager::{Dict, List, Lock, Namespace, Queue, Value};
use mp::pipe::Address;
use mp::{Manager, Process, StartMethod};

fn visit((who, seen, log, ns): (String, Dict<String, u32>, List<String>, Namespace)) {
    seen.set(&who, &std::process::id()).expect("dict");
    log.append(&format!("{who} was here")).expect("list");
    ns.set("last", &who).expect("namespace");
}

fn add((total, lock, n): (Value<u64>, Lock, u64)) {
    for i in 1..=n {
        lock.acquire().expect("lock");
        let t = total.get().expect("value");
        total.set(&(t + i)).expect("value");
        lock.release().expect("lock");
    }
}

fn remote(port: u16) -> u64 {
    let m = Manager::connect(
        Address::tcp("127.0.0.1", port).expect("address"),
        b"tour-key",
    )
    .expect("connect");
    let q = m.named::<Queue<u64>>("results").expect("queue");
    (0..3).map(|_| q.get().expect("get")).sum()
}

pub(crate) fn run() -> Result<(), Box<dyn Error>> {
    println!("\n== managers (mp-manager)");
    let m = Manager::start()?;
    println!("a manager server runs in process {:?}", m.server_pid());
    let seen = m.dict::<String, u32>()?;
    let log = m.list::<String>()?;
    let ns = m.namespace()?;
    for (who, method) in [
        ("forked", StartMethod::Fork),
        ("spawned", StartMethod::Spawn),
    ] {
        Process::new(
            visit,
            (who.to_string(), seen.clone(), log.clone(), ns.clone()),
        )
        .start_method(method)
        .start()?
        .join()?;
    }
    println!("the children wrote a dict {:?}", seen.items()?);
    println!("                    a list {:?}", log.to_vec()?);
    println!("  and a namespace: last = {:?}", ns.get::<String>("last")?);
    match seen.get_item(&"nobody".to_string()) {
        Err(e) => println!("a missing key comes back as {e}"),
        Ok(v) => println!("unexpected: {v}"),
    }

    let total = m.value(&0u64)?;
    let lock = m.lock()?;
    let t0 = Instant::now();
    let mut kids = Vec::new();
    for _ in 0..2 {
        kids.push(Process::new(add, (total.clone(), lock.clone(), 100)).start()?);
    }
    for mut k in kids {
        k.join()?;
    }
    println!(
        "two children added 1..=100 each under a manager lock: {} ({} round trips in {:?})",
        total.get()?,
        2 * 100 * 4,
        t0.elapsed()
    );

    let server = Manager::builder()
        .address(Address::tcp("127.0.0.1", 0)?)
        .authkey(b"tour-key")
        .start()?;
    let Address::Tcp(addr) = server.address()? else {
        return Err("not a TCP address".into());
    };
    let results = server.named::<Queue<u64>>("results")?;
    for x in [1, 2, 3] {
        results.put(&x)?;
    }
    let mut client = Process::new(remote, addr.port())
        .start_method(StartMethod::Spawn)
        .start()?;
    println!(
        "a spawned client connected to {addr} with the authkey and summed the named queue: {}",
        client.join()?
    );
    server.shutdown()?;
    m.shutdown()?;
    Ok(())
}
