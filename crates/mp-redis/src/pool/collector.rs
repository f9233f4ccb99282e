//! The collector thread: drains the pool's result list and hands each result to its job.

use super::*;

/// The most results the collector takes in one round trip.
const DRAIN: usize = 64;

/// The collector thread of a pool (see the module doc); ends within a slice of the pool's
/// drop.
pub(super) fn collector(weak: std::sync::Weak<Inner>) {
    let Some(first) = weak.upgrade() else { return };
    let sh = first.sh.clone();
    let results = first.results.clone();
    drop(first);
    let mut con = Conn::new();
    let slice = worker::slice(&sh);
    let mut last_reap = Instant::now();
    let mut epoch = sh.epoch();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.stop.load(Ordering::Relaxed) {
            // The pool was dropped: what is still waiting will never be answered here.
            let entries: Vec<Entry> = lock(&inner.jobs).map.drain().map(|(_, e)| e).collect();
            for mut en in entries {
                en.sink.fail(Error::PoolClosed("dropped"));
            }
            inner.changed.notify_all();
            return;
        }
        let mut jobs = lock(&inner.jobs);
        if jobs.map.is_empty() {
            // Idle: sleep until a job is opened (or the pool is dropped), on this process's
            // condition variable; the server is not asked anything.
            jobs = inner
                .changed
                .wait_timeout(jobs, slice)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let idle = jobs.map.is_empty();
        drop(jobs);
        drop(inner);
        // Up to DRAIN results per round trip (`BLMPOP`, Redis 7).
        let got: Result<Option<(String, Vec<Vec<u8>>)>> = if idle {
            Ok(None)
        } else {
            con.run(&sh, Some(slice), |c| {
                redis::cmd("BLMPOP")
                    .arg(conn::block_secs(slice))
                    .arg(1)
                    .arg(&results)
                    .arg("RIGHT")
                    .arg("COUNT")
                    .arg(DRAIN)
                    .query(c)
            })
        };
        let Some(inner) = weak.upgrade() else { return };
        match got {
            Ok(Some((_, all))) => {
                for bytes in all {
                    deliver(&inner, bytes);
                }
            }
            Ok(None) => {}
            Err(e) => {
                let entries: Vec<Entry> = lock(&inner.jobs).map.drain().map(|(_, e)| e).collect();
                for mut en in entries {
                    en.sink.fail(dup(&e));
                }
                inner.changed.notify_all();
            }
        }
        if idle {
            continue;
        }
        if sh.epoch() != epoch {
            // The server restarted: what it held is gone; send every unanswered chunk again
            // (a chunk that was still running somewhere answers twice, and one is dropped).
            epoch = sh.epoch();
            let again: Vec<Arc<Vec<u8>>> = lock(&inner.jobs)
                .map
                .values()
                .flat_map(|e| e.pending.values().cloned())
                .collect();
            if let Err(e) = push_tasks(&sh, &mut con, &again) {
                eprintln!("mp-redis pool: could not resend tasks after a server restart: {e}");
            }
        }
        if last_reap.elapsed() >= slice {
            let _ = worker::reap(&sh, &mut con);
            last_reap = Instant::now();
        }
    }
}

pub(super) fn deliver(inner: &Inner, bytes: Vec<u8>) {
    let parsed = wire::parse_result(&bytes).and_then(|(meta, start)| {
        let msg = decode::<ResultMsg>(meta).ok()?;
        Some((msg, start))
    });
    let Some((msg, start)) = parsed else {
        eprintln!("mp-redis pool: dropped an undecodable result");
        return;
    };
    let job = msg.id >> 32;
    let mut j = lock(&inner.jobs);
    let Some(e) = j.map.get_mut(&job) else {
        return; // a late duplicate of a finished job
    };
    if e.pending.remove(&msg.id).is_none() {
        return; // a duplicate: this chunk was answered already
    }
    let chunk = msg.id & 0xffff_ffff;
    if msg.kind == kind::OK {
        e.sink.accept(chunk, Ok(Payload::new(bytes, start)));
    } else {
        let image_id = lock(&inner.image_id).clone();
        let failed = chunk_error(&msg, &bytes[start..], &image_id);
        e.sink.accept(chunk, Err(failed));
    }
    if e.complete && e.pending.is_empty() {
        j.map.remove(&job);
    }
    drop(j);
    inner.changed.notify_all();
}
