//! The worker side: [`serve`] runs worker threads that take tasks from the cluster, call the
//! program's own functions and push the results back.
//!
//! Each worker thread has an id (`host:pid:tag:index`), a lease key `{prefix}:lease:{id}`
//! that a heartbeat thread renews every third of the lease, a membership in
//! `{prefix}:workers`, and a held list `{prefix}:held:{id}` that holds the one task it runs.
//! Taking a task is `BLMOVE {prefix}:tasks -> held` (atomic: a task is always in exactly one
//! list); finishing pushes the result, empties the held list and forgets the try count in one
//! script. When a worker process dies, its leases run out and the next reaper (run by idle
//! workers and by waiting pools) moves its held tasks back onto `{prefix}:tasks`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mp_core::message::{decode, encode};
use mp_core::Message;
use redis::{Direction, Script};

use crate::conn::{self, Conn, Shared};
use crate::error::{Error, Result};
use crate::wire::{self, kind, ResultMsg, TaskMsg};

/// How long a result list lives after its last result (a pool that went away leaves no
/// garbage behind for long).
pub(crate) const RESULT_TTL_MS: u64 = 3_600_000;

/// The longest a worker or a waiting pool blocks before it runs the reaper.
pub(crate) fn slice(sh: &Shared) -> Duration {
    (sh.lease / 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// The function type every trampoline has: the task function's address and the encoded
/// `Vec<T>` of a chunk in, the encoded `Vec<R>` out.
pub(crate) type Trampoline = fn(usize, &[u8]) -> std::result::Result<Vec<u8>, String>;

/// Decodes a chunk, calls the task on each item, encodes the results.
pub(crate) fn trampoline<T: Message, R: Message>(
    target: usize,
    args: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    // SAFETY: `target` is this process's address of the function whose offset the pool
    // computed from a `fn(T) -> R` (Pool::submit pairs it with this very trampoline, `trampoline::<T,
    // R>`), after `symbol::resolve` checked that this process runs the same build as the pool
    // and that the address lies in this executable. The cluster's server and its clients are
    // trusted not to forge task messages (docs/scale-out.md, "Security").
    let f = unsafe { std::mem::transmute::<usize, fn(T) -> R>(target) };
    let items: Vec<T> = decode(args).map_err(|e| format!("decoding the arguments: {e}"))?;
    let out: Vec<R> = items.into_iter().map(f).collect();
    encode(&out)
        .map(|v| v.to_vec())
        .map_err(|e| format!("encoding the results: {e}"))
}

/// Runs the reaper script for the pool's task lists.
pub(crate) fn reap(sh: &Shared, con: &mut Conn) -> Result<u64> {
    let script = Script::new(wire::REAP);
    con.run(sh, None, |c| {
        script
            .arg(sh.key("workers"))
            .arg(sh.key("lease:"))
            .arg(sh.key("held:"))
            .arg(sh.key("tasks"))
            .invoke(c)
    })
}

fn renew(sh: &Shared, con: &mut Conn, ids: &[String]) -> Result<()> {
    let lease = conn::millis(sh.lease);
    con.run(sh, None, |c| {
        let mut p = redis::pipe();
        for id in ids {
            p.cmd("SET")
                .arg(sh.key(&format!("lease:{id}")))
                .arg(1)
                .arg("PX")
                .arg(lease)
                .ignore();
            p.cmd("SADD").arg(sh.key("workers")).arg(id).ignore();
        }
        p.query::<()>(c)
    })
}

/// Runs `n` worker threads in this process until one of them fails for good (the server
/// unreachable beyond the retry budget, credentials refused) or `stop` is set.
pub(crate) fn serve(sh: Arc<Shared>, n: usize, stop: Arc<AtomicBool>) -> Result<()> {
    if n == 0 {
        return Err(Error::Config("serve needs at least one worker".into()));
    }
    let tag = conn::random_u64();
    let ids: Vec<String> = (0..n)
        .map(|i| format!("{}:{}:{tag:016x}:{i}", conn::hostname(), std::process::id()))
        .collect();
    // Register before the first task is taken, so that a held task always has a lease.
    let mut hb = Conn::new();
    renew(&sh, &mut hb, &ids)?;
    let (tx, rx) = mpsc::channel::<Result<()>>();
    {
        let (sh, ids, stop, tx) = (sh.clone(), ids.clone(), stop.clone(), tx.clone());
        std::thread::Builder::new()
            .name("mp-redis-heartbeat".into())
            .spawn(move || {
                let every = sh.lease / 3;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(every);
                    if let Err(e) = renew(&sh, &mut hb, &ids) {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            })
            .map_err(|e| Error::Config(format!("could not start a thread: {e}")))?;
    }
    for id in ids {
        let (sh, stop, tx) = (sh.clone(), stop.clone(), tx.clone());
        std::thread::Builder::new()
            .name("mp-redis-worker".into())
            .spawn(move || {
                let r = worker_loop(&sh, &id, &stop);
                let _ = tx.send(r);
            })
            .map_err(|e| Error::Config(format!("could not start a thread: {e}")))?;
    }
    drop(tx);
    let first = rx.recv().unwrap_or(Ok(()));
    stop.store(true, Ordering::Relaxed);
    first
}

/// The body of one worker thread.
fn worker_loop(sh: &Shared, id: &str, stop: &AtomicBool) -> Result<()> {
    let mut con = Conn::new();
    let tasks = sh.key("tasks");
    let held = sh.key(&format!("held:{id}"));
    let tries = sh.key("tries");
    let take = Script::new(wire::TAKE);
    let finish = Script::new(wire::FINISH);
    let image = mp_process::symbol::image_id();
    let slice = slice(sh);
    let mut last_reap = Instant::now() - slice;
    while !stop.load(Ordering::Relaxed) {
        let got: Option<Vec<u8>> = con.run(sh, Some(slice), |c| {
            redis::cmd("BLMOVE")
                .arg(&tasks)
                .arg(&held)
                .arg(Direction::Right)
                .arg(Direction::Left)
                .arg(conn::block_secs(slice))
                .query(c)
        })?;
        let Some(bytes) = got else {
            if last_reap.elapsed() >= slice {
                reap(sh, &mut con)?;
                last_reap = Instant::now();
            }
            continue;
        };
        let task = match decode::<TaskMsg>(&bytes) {
            Ok(t) => t,
            Err(e) => {
                // Not a task of this program (garbage under the prefix): drop it.
                eprintln!("mp-redis worker {id}: dropped an undecodable task: {e}");
                con.run(sh, None, |c| redis::cmd("DEL").arg(&held).query::<()>(c))?;
                continue;
            }
        };
        let task_key = format!("{}#{}", task.reply, task.id);
        let cancel = sh.key(&format!("cancel:{}", task.pool));
        let (n, cancelled): (u64, u64) = con.run(sh, None, |c| {
            take.key(&tries).key(&cancel).arg(&task_key).invoke(c)
        })?;
        let result = if cancelled != 0 {
            None
        } else if n > sh.max_tries {
            Some(outcome(&task, id, kind::LOST, Vec::new(), n.to_string()))
        } else if task.image_id != image {
            Some(outcome(
                &task,
                id,
                kind::WRONG_BUILD,
                image.to_vec(),
                String::new(),
            ))
        } else {
            Some(run_task(&task, id, sh.max_value))
        };
        let encoded = match result {
            None => Vec::new(),
            Some(r) => encode(&r).map(|v| v.to_vec())?,
        };
        con.run(sh, None, |c| {
            finish
                .key(&task.reply)
                .key(&held)
                .key(&tries)
                .arg(&task_key)
                .arg(&encoded)
                .arg(RESULT_TTL_MS)
                .invoke::<()>(c)
        })?;
    }
    Ok(())
}

fn outcome(task: &TaskMsg, worker: &str, kind: u8, payload: Vec<u8>, message: String) -> ResultMsg {
    ResultMsg {
        id: task.id,
        kind,
        worker: worker.to_string(),
        payload,
        message,
    }
}

fn run_task(task: &TaskMsg, worker: &str, cap: usize) -> ResultMsg {
    let fail = |m: String| outcome(task, worker, kind::FAILED, Vec::new(), m);
    let resolve = |o| mp_process::symbol::resolve(o, &task.image_id);
    let (trampoline, target) = match (resolve(task.trampoline), resolve(task.target)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return fail(e.to_string()),
    };
    // SAFETY: `trampoline` is this process's address of the function whose offset the pool took
    // from a `Trampoline` (Pool::submit), checked by `resolve` to be the same build and to lie in
    // this executable; the server and its clients are trusted (see `trampoline`).
    let trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(trampoline) };
    match catch_unwind(AssertUnwindSafe(|| trampoline(target, &task.args))) {
        Ok(Ok(bytes)) if bytes.len() > cap => fail(format!(
            "its results take {} bytes, over the cluster's cap of {cap}",
            bytes.len()
        )),
        Ok(Ok(bytes)) => outcome(task, worker, kind::OK, bytes, String::new()),
        Ok(Err(m)) => fail(m),
        Err(payload) => {
            let message = mp_core::util::panic_message(&*payload);
            outcome(task, worker, kind::PANIC, Vec::new(), message)
        }
    }
}
