//! The worker side: [`serve`] runs worker threads that take tasks from the cluster, call the
//! program's own functions and push the results back.
//!
//! Each worker thread has an id (`host:pid:tag:index`), a lease key `{prefix}:lease:{id}`
//! that a heartbeat thread renews every third of the lease, a membership in
//! `{prefix}:workers`, and a held list `{prefix}:held:{id}` that holds the one task it runs.
//! A task moves atomically from `{prefix}:tasks` to the held list (so it is always in exactly
//! one list): by `LMOVE` in the pipeline that also pushes the last result and empties the held
//! list, or by `BLMOVE` when the worker had to wait. When a worker process dies, its leases run out
//! and the next reaper (run by idle workers and by waiting pools) moves its held tasks back
//! onto `{prefix}:tasks`, counting the loss in the task's header.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mp_core::message::{decode, encode, encode_with_capacity, ALIGN};
use mp_core::Message;
use redis::{Direction, Script};
use rkyv::util::AlignedVec;

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
pub(crate) type Trampoline = fn(usize, &[u8]) -> std::result::Result<AlignedVec<ALIGN>, String>;

/// Decodes a chunk, calls the task on each item, encodes the results.
pub(crate) fn trampoline<T: Message, R: Message>(
    target: usize,
    args: &[u8],
) -> std::result::Result<AlignedVec<ALIGN>, String> {
    // SAFETY: `target` is this process's address of the function whose offset the pool
    // computed from a `fn(T) -> R` (Pool::submit pairs it with this very trampoline, `trampoline::<T,
    // R>`), after `symbol::resolve` checked that this process runs the same build as the pool
    // and that the address lies in this executable. The cluster's server and its clients are
    // trusted not to forge task messages (docs/scale-out.md, "Security").
    let f = unsafe { std::mem::transmute::<usize, fn(T) -> R>(target) };
    let items: Vec<T> = decode(args).map_err(|e| format!("decoding the arguments: {e}"))?;
    let out: Vec<R> = items.into_iter().map(f).collect();
    encode_results(&out)
}

/// Encodes a chunk's results into a buffer sized for them up front (plain items archive to
/// their own size).
pub(crate) fn encode_results<R: Message>(
    out: &Vec<R>,
) -> std::result::Result<AlignedVec<ALIGN>, String> {
    let room = out.len() * std::mem::size_of::<R::Archived>() + 64;
    encode_with_capacity(out, room).map_err(|e| format!("encoding the results: {e}"))
}

/// Runs the reaper script for the pool's task lists.
pub(crate) fn reap(sh: &Shared, con: &mut Conn) -> Result<u64> {
    let script = Script::new(wire::REAP_TASKS);
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
///
/// A worker that is kept busy makes one round trip per task, a pipeline of plain commands (no
/// script, so that neither payload is copied through Lua): push the last result and set its
/// list's time to live, empty the held list, move the next task in, and ask whether the last
/// task's pool was cancelled. That answer holds for the next task when it is of the same pool
/// (the usual case); a task of another pool, or one taken by `BLMOVE` after a wait, costs one
/// more round trip for its own check. A task of a cancelled pool is dropped unrun.
///
/// The steps of the pipeline need not be atomic: a worker lost between the result and the
/// emptying of its held list has its task run again, and the pool drops the second result.
fn worker_loop(sh: &Shared, id: &str, stop: &AtomicBool) -> Result<()> {
    let mut con = Conn::new();
    let tasks = sh.key("tasks");
    let held = sh.key(&format!("held:{id}"));
    let image = mp_process::symbol::image_id();
    let slice = slice(sh);
    let mut last_reap = Instant::now() - slice;
    // The task in the held list taken by the last step, and whether the pool of the task
    // before it was cancelled when it was taken (with that pool's id).
    let mut next: Option<(Vec<u8>, String, bool)> = None;
    while !stop.load(Ordering::Relaxed) {
        let (bytes, known) = match next.take() {
            Some((b, pool, cancelled)) => (b, Some((pool, cancelled))),
            None => {
                let got: Option<Vec<u8>> = con.run(sh, Some(slice), |c| {
                    redis::cmd("BLMOVE")
                        .arg(&tasks)
                        .arg(&held)
                        .arg(Direction::Right)
                        .arg(Direction::Left)
                        .arg(conn::block_secs(slice))
                        .query(c)
                })?;
                let Some(b) = got else {
                    if last_reap.elapsed() >= slice {
                        reap(sh, &mut con)?;
                        last_reap = Instant::now();
                    }
                    continue;
                };
                (b, None)
            }
        };
        // The header is read once, here: the pool's id for the cancel check, the rest for
        // `handle`.
        let task = wire::parse_task(&bytes);
        let pool = task.as_ref().map(|t| t.pool.to_string());
        let cancelled = match (&pool, known) {
            (Some(p), Some((q, c))) if *p == q => c,
            (Some(p), _) => con.run(sh, None, |c| {
                redis::cmd("EXISTS")
                    .arg(sh.key(&format!("cancel:{p}")))
                    .query::<bool>(c)
            })?,
            (None, _) => false,
        };
        let (reply, encoded) = if cancelled {
            (String::new(), Vec::new())
        } else {
            handle(sh, id, image, task)?.unwrap_or_default()
        };
        let more = !stop.load(Ordering::Relaxed);
        let pool = pool.unwrap_or_default();
        let got: (Option<Vec<u8>>, bool) = con.run(sh, None, |c| {
            let mut p = redis::pipe();
            if !encoded.is_empty() {
                p.cmd("LPUSH").arg(&reply).arg(&encoded).ignore();
                p.cmd("PEXPIRE").arg(&reply).arg(RESULT_TTL_MS).ignore();
            }
            p.cmd("DEL").arg(&held).ignore();
            if more {
                p.cmd("LMOVE")
                    .arg(&tasks)
                    .arg(&held)
                    .arg(Direction::Right)
                    .arg(Direction::Left);
            } else {
                p.cmd("ECHO").arg("");
            }
            p.cmd("EXISTS").arg(sh.key(&format!("cancel:{pool}")));
            p.query(c)
        })?;
        next = match got {
            (Some(b), cancelled) if more && !b.is_empty() => Some((b, pool, cancelled)),
            _ => None,
        };
    }
    Ok(())
}

/// Runs one task taken from the server (its parsed header, `None` when it had none):
/// `(its result list, the encoded result)`, or `None` for bytes that are not a task of this
/// program (garbage under the prefix: dropped, with a line on stderr).
fn handle(
    sh: &Shared,
    id: &str,
    image: &[u8],
    task: Option<wire::Task<'_>>,
) -> Result<Option<(String, Vec<u8>)>> {
    let task = match task
        .ok_or_else(|| "no task header".to_string())
        .and_then(|t| {
            let msg = decode::<TaskMsg>(t.meta).map_err(|e| e.to_string())?;
            Ok((t.returned, msg, t.args))
        }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mp-redis worker {id}: dropped an undecodable task: {e}");
            return Ok(None);
        }
    };
    let (returned, task, args) = task;
    // The reaper counts the workers a task was lost with; this take is one more try.
    let tries = returned.saturating_add(1);
    let (result, payload) = if tries > sh.max_tries {
        outcome(&task, id, kind::LOST, AlignedVec::new(), tries.to_string())
    } else if task.image_id != image {
        let mut build = AlignedVec::new();
        build.extend_from_slice(image);
        outcome(&task, id, kind::WRONG_BUILD, build, String::new())
    } else {
        run_task(&task, args, id, sh.max_value)
    };
    let meta = encode(&result)?;
    let encoded = wire::result_bytes(&meta, &payload).map_err(Error::Config)?;
    Ok(Some((task.reply, encoded)))
}

/// A result and its payload.
fn outcome(
    task: &TaskMsg,
    worker: &str,
    kind: u8,
    payload: AlignedVec<ALIGN>,
    message: String,
) -> (ResultMsg, AlignedVec<ALIGN>) {
    let msg = ResultMsg {
        id: task.id,
        kind,
        worker: worker.to_string(),
        message,
    };
    (msg, payload)
}

fn run_task(
    task: &TaskMsg,
    args: &[u8],
    worker: &str,
    cap: usize,
) -> (ResultMsg, AlignedVec<ALIGN>) {
    let fail = |m: String| outcome(task, worker, kind::FAILED, AlignedVec::new(), m);
    let resolve = |o| mp_process::symbol::resolve(o, &task.image_id);
    let (trampoline, target) = match (resolve(task.trampoline), resolve(task.target)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return fail(e.to_string()),
    };
    // SAFETY: `trampoline` is this process's address of the function whose offset the pool took
    // from a `Trampoline` (Pool::submit), checked by `resolve` to be the same build and to lie in
    // this executable; the server and its clients are trusted (see `trampoline`).
    let trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(trampoline) };
    match catch_unwind(AssertUnwindSafe(|| trampoline(target, args))) {
        Ok(Ok(bytes)) if bytes.len() > cap => fail(format!(
            "its results take {} bytes, over the cluster's cap of {cap}",
            bytes.len()
        )),
        Ok(Ok(bytes)) => outcome(task, worker, kind::OK, bytes, String::new()),
        Ok(Err(m)) => fail(m),
        Err(payload) => {
            let message = mp_core::util::panic_message(&*payload);
            outcome(task, worker, kind::PANIC, AlignedVec::new(), message)
        }
    }
}
