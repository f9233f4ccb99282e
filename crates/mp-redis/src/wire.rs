//! What travels through the server for a pool: task and result messages (rkyv archives,
//! checked on receipt), and the Lua scripts that make each step atomic.

use mp_core::message::ALIGN;
use rkyv::{Archive, Deserialize, Serialize};

/// What a task says besides its arguments (which follow it: see [`HEADER`]).
#[derive(Debug, Archive, Serialize, Deserialize)]
pub(crate) struct TaskMsg {
    /// The list the result goes to (the job's).
    pub(crate) reply: String,
    /// The chunk's index in its job (results are deduplicated by it).
    pub(crate) id: u64,
    /// The submitter's build id (`mp_process::symbol::image_id`).
    pub(crate) image_id: Vec<u8>,
    /// Offset of the monomorphised trampoline that decodes, calls and encodes.
    pub(crate) trampoline: i64,
    /// Offset of the task function.
    pub(crate) target: i64,
}

/// Result kinds.
pub(crate) mod kind {
    /// `payload` is an encoded `Vec<R>`.
    pub(crate) const OK: u8 = 0;
    /// The task panicked; `message` says where.
    pub(crate) const PANIC: u8 = 1;
    /// Taken more than max-tries times; `message` is the count.
    pub(crate) const LOST: u8 = 2;
    /// The worker runs another build; `payload` is its build id.
    pub(crate) const WRONG_BUILD: u8 = 3;
    /// Anything else the worker could not do; `message` says what.
    pub(crate) const FAILED: u8 = 4;
}

/// A chunk's outcome, pushed onto the task's `reply` list, followed by its payload (see
/// [`RESULT_HEADER`]): an encoded `Vec<R>` for [`kind::OK`], the worker's build id for
/// [`kind::WRONG_BUILD`], else nothing.
#[derive(Debug, Archive, Serialize, Deserialize)]
pub(crate) struct ResultMsg {
    pub(crate) id: u64,
    pub(crate) kind: u8,
    pub(crate) worker: String,
    pub(crate) message: String,
}

/// The length of the header every result starts with: the length of the [`ResultMsg`]
/// archive that follows (8 hex digits) and 8 spaces. After the archive, padded with zeros to
/// a multiple of [`ALIGN`], comes the payload to the end, so that the pool reads a chunk's
/// results in the very bytes they arrived in.
pub(crate) const RESULT_HEADER: usize = 16;

/// A result as it travels: header, [`ResultMsg`] archive, padding, payload.
pub(crate) fn result_bytes(meta: &[u8], payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut head = [b' '; RESULT_HEADER];
    head[..8].copy_from_slice(meta_len(meta)?.as_bytes());
    Ok(framed(&head, meta, payload))
}

/// Splits a result into its [`ResultMsg`] archive and the offset where its payload starts;
/// `None` for bytes that are not a result of this protocol.
pub(crate) fn parse_result(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let head = bytes.get(..RESULT_HEADER)?;
    if head[8..].iter().any(|&b| b != b' ') {
        return None;
    }
    unframe(bytes, RESULT_HEADER, hex(&head[..8])?)
}

fn meta_len(meta: &[u8]) -> Result<String, String> {
    let n = u32::try_from(meta.len()).map_err(|_| "a message over 4 GiB".to_string())?;
    Ok(format!("{n:08x}"))
}

/// `head`, `meta`, zeros up to a multiple of [`ALIGN`], `payload`.
fn framed(head: &[u8], meta: &[u8], payload: &[u8]) -> Vec<u8> {
    let start = (head.len() + meta.len()).next_multiple_of(ALIGN);
    let mut out = Vec::with_capacity(start + payload.len());
    out.extend_from_slice(head);
    out.extend_from_slice(meta);
    out.resize(start, 0);
    out.extend_from_slice(payload);
    out
}

/// The meta archive after a header of `head` bytes whose length field reads `meta_len` (hex),
/// and the offset of the payload.
fn unframe<'a>(bytes: &'a [u8], head: usize, meta_len: &str) -> Option<(&'a [u8], usize)> {
    let meta_end = head.checked_add(usize::from_str_radix(meta_len, 16).ok()?)?;
    let meta = bytes.get(head..meta_end)?;
    let start = meta_end.next_multiple_of(ALIGN);
    (start <= bytes.len()).then_some((meta, start))
}

/// The length of the header every task on `{prefix}:tasks` starts with: 8 lowercase hex
/// digits counting how many times the reaper returned the task (its worker was lost), the
/// pool's id (16 hex digits: the taker checks whether that pool was cancelled), and the
/// length of the [`TaskMsg`] archive that follows (8 hex digits). After that archive, padded
/// with zeros to a multiple of [`ALIGN`], come the chunk's arguments (an encoded `Vec<T>`) to
/// the end, so that a worker reads them in place.
pub(crate) const HEADER: usize = 32;

/// A task as it travels: header, [`TaskMsg`] archive, padding, arguments.
pub(crate) fn task_bytes(pool: &str, meta: &[u8], args: &[u8]) -> Result<Vec<u8>, String> {
    if pool.len() != 16 || hex(pool.as_bytes()).is_none() {
        return Err(format!("a pool id must be 16 hex digits, not {pool:?}"));
    }
    let mut head = [0u8; HEADER];
    head[..8].copy_from_slice(b"00000000");
    head[8..24].copy_from_slice(pool.as_bytes());
    head[24..].copy_from_slice(meta_len(meta)?.as_bytes());
    Ok(framed(&head, meta, args))
}

/// A task read back, checked for shape (the archives are checked when they are decoded).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Task<'a> {
    /// How many times the reaper returned it.
    pub(crate) returned: u64,
    /// The id of the pool that sent it.
    pub(crate) pool: &'a str,
    /// The [`TaskMsg`] archive.
    pub(crate) meta: &'a [u8],
    /// The chunk's encoded arguments.
    pub(crate) args: &'a [u8],
}

fn hex(field: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(field).ok()?;
    s.bytes().all(|b| b.is_ascii_hexdigit()).then_some(s)
}

/// Splits a task into its parts; `None` for bytes that are not a task of this protocol.
pub(crate) fn parse_task(task: &[u8]) -> Option<Task<'_>> {
    let head = task.get(..HEADER)?;
    let returned = u64::from_str_radix(hex(&head[..8])?, 16).ok()?;
    let pool = hex(&head[8..24])?;
    let (meta, start) = unframe(task, HEADER, hex(&head[24..])?)?;
    Some(Task {
        returned,
        pool,
        meta,
        args: &task[start..],
    })
}

/// Returns to `ARGV[4]` everything held by members of the set `ARGV[1]` whose lease key
/// (`ARGV[2]..member`) is gone, from their lists `ARGV[3]..member`, and forgets them.
/// Returns how many items were moved. (A queue's consumers; the pool's workers have
/// [`REAP_TASKS`].)
pub(crate) const REAP: &str = r"
local members = redis.call('SMEMBERS', ARGV[1])
local moved = 0
for _, m in ipairs(members) do
  if redis.call('EXISTS', ARGV[2] .. m) == 0 then
    local held = ARGV[3] .. m
    while redis.call('LMOVE', held, ARGV[4], 'RIGHT', 'RIGHT') do
      moved = moved + 1
    end
    redis.call('SREM', ARGV[1], m)
  end
end
return moved
";

/// [`REAP`] for the pool's workers: each task returned has the count in its header
/// ([`HEADER`]) raised by one, so that its next taker knows how many workers it has cost.
pub(crate) const REAP_TASKS: &str = r"
local members = redis.call('SMEMBERS', ARGV[1])
local moved = 0
for _, m in ipairs(members) do
  if redis.call('EXISTS', ARGV[2] .. m) == 0 then
    local held = ARGV[3] .. m
    while true do
      local t = redis.call('RPOP', held)
      if not t then break end
      local n = tonumber(string.sub(t, 1, 8), 16) or 0
      redis.call('RPUSH', ARGV[4], string.format('%08x', n + 1) .. string.sub(t, 9))
      moved = moved + 1
    end
    redis.call('SREM', ARGV[1], m)
  end
end
return moved
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_round_trips_and_garbage_is_refused() {
        let bytes = task_bytes("00112233aabbccdd", b"meta", b"arguments").unwrap();
        assert_eq!(bytes.len(), 48 + 9);
        let t = parse_task(&bytes).unwrap();
        assert_eq!(
            t,
            Task {
                returned: 0,
                pool: "00112233aabbccdd",
                meta: b"meta",
                args: b"arguments",
            }
        );
        // What the reaper writes after returning it twice.
        let mut again = bytes.clone();
        again[..8].copy_from_slice(b"00000002");
        assert_eq!(parse_task(&again).map(|t| t.returned), Some(2));
        assert!(task_bytes("not hex at all!!", b"", b"").is_err());
        assert!(task_bytes("abc", b"", b"").is_err());
        assert_eq!(parse_task(b"short"), None);
        for (at, byte) in [(3, b'z'), (10, 0xff), (30, b'x')] {
            let mut bad = bytes.clone();
            bad[at] = byte;
            assert_eq!(parse_task(&bad), None, "byte {at}");
        }
        // A result, and a result cut short.
        let r = result_bytes(b"meta", b"payload").unwrap();
        assert_eq!(r.len(), 32 + 7);
        assert_eq!(parse_result(&r), Some((&b"meta"[..], 32)));
        assert_eq!(&r[32..], b"payload");
        assert_eq!(parse_result(&r[..19]), None);
        let mut bad = r;
        bad[12] = b'x';
        assert_eq!(parse_result(&bad), None);
        // A meta length past the end.
        let mut bad = bytes;
        bad[24..32].copy_from_slice(b"ffffffff");
        assert_eq!(parse_task(&bad), None);
    }
}
