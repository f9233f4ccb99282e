//! What travels through the server for a pool: task and result messages (rkyv archives,
//! checked on receipt), and the Lua scripts that make each step atomic.

use rkyv::{Archive, Deserialize, Serialize};

/// One chunk of a job, as pushed onto `{prefix}:tasks`.
#[derive(Debug, Archive, Serialize, Deserialize)]
pub(crate) struct TaskMsg {
    /// The pool's id: a task of a terminated pool is skipped (`{prefix}:cancel:{pool}`).
    pub(crate) pool: String,
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
    /// The chunk's arguments: an encoded `Vec<T>`.
    pub(crate) args: Vec<u8>,
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

/// A chunk's outcome, pushed onto the task's `reply` list.
#[derive(Debug, Archive, Serialize, Deserialize)]
pub(crate) struct ResultMsg {
    pub(crate) id: u64,
    pub(crate) kind: u8,
    pub(crate) worker: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) message: String,
}

/// Returns to `ARGV[4]` everything held by members of the set `ARGV[1]` whose lease key
/// (`ARGV[2]..member`) is gone, from their lists `ARGV[3]..member`, and forgets them.
/// Returns how many items were moved.
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

/// A worker took task `ARGV[1]`: counts the try in hash `KEYS[1]`, and says whether its
/// pool was cancelled (`KEYS[2]` exists). Returns {tries, cancelled}.
pub(crate) const TAKE: &str = r"
local tries = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local cancelled = redis.call('EXISTS', KEYS[2])
return {tries, cancelled}
";

/// A worker finished: pushes result `ARGV[2]` (unless empty) onto `KEYS[1]` with a time to
/// live of `ARGV[3]` ms, empties its held list `KEYS[2]` and forgets the try count of
/// `ARGV[1]` in `KEYS[3]`.
pub(crate) const FINISH: &str = r"
if string.len(ARGV[2]) > 0 then
  redis.call('LPUSH', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
";
