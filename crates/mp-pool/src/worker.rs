//! The worker side: the process every pool worker runs, and the trampolines that call a
//! task's function with its real types.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Once};

use mp_core::message::{access, decode, deserialize_each, ALIGN};
use mp_core::{Message, Shared};
use mp_queue::{PutError, Queue};
use rkyv::rancor::{Fallible as RkyvFallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::util::AlignedVec;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Deserialize, Place, Serialize};

use crate::helpers::panic_text;
use crate::wire::{set_claim_slot, Kind, NestedArchive, OkRef, Payload, ResultMsg, Slot, TaskMsg};

/// Why a chunk failed in the worker.
pub(crate) struct TaskFail {
    pub(crate) kind: Kind,
    pub(crate) message: String,
    /// Where a panic happened (`file:line:column`), or empty.
    pub(crate) location: String,
}

impl TaskFail {
    fn new(kind: Kind, message: String) -> TaskFail {
        TaskFail {
            kind,
            message,
            location: String::new(),
        }
    }
}

/// A kind of task function: how to call the function at an address with one decoded item.
pub(crate) trait Call: 'static {
    /// One item's argument.
    type In: Message;
    /// One item's result.
    type Out: Message;

    /// Calls the function at `addr` with `x`, catching a panic.
    ///
    /// # Safety
    /// `addr` is the address, in this process, of a function of this call kind's exact type.
    unsafe fn call(addr: usize, x: Self::In) -> Result<Self::Out, TaskFail>;
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let m = panic_text(&*payload);
    // A payload whose destructor panics would abort the worker: leak it (as mp-process does).
    std::mem::forget(payload);
    m
}

thread_local! {
    /// True while this thread runs a task's code in a worker.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// Where the last task panic happened (`file:line:column`).
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs, once per process, a panic hook around mp-process's: a panic inside a task is
/// recorded (its location goes into the error the parent gets) and not printed, as Python
/// does not print a task's exception in the worker; any other panic goes to the hook that
/// was there. Called in the parent before the first worker starts (forked workers inherit
/// it) and at the start of every worker (a re-executed worker installs it while it is still
/// single-threaded).
pub(crate) fn install_task_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        mp_process::install_panic_hook();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_TASK.with(|t| t.get()) {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                PANIC_AT.with(|p| *p.borrow_mut() = at);
                return;
            }
            previous(info)
        }));
    });
}

fn catch<R>(f: impl FnOnce() -> Result<R, TaskFail>) -> Result<R, TaskFail> {
    let was = IN_TASK.with(|t| t.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    IN_TASK.with(|t| t.set(was));
    match r {
        Ok(r) => r,
        Err(p) => Err(TaskFail {
            kind: Kind::Panicked,
            message: panic_message(p),
            location: PANIC_AT.with(|a| a.borrow_mut().take()).unwrap_or_default(),
        }),
    }
}

/// `fn(T) -> R`.
pub(crate) struct Plain<T, R>(PhantomData<fn(T) -> R>);

impl<T: Message + 'static, R: Message + 'static> Call for Plain<T, R> {
    type In = T;
    type Out = R;

    unsafe fn call(addr: usize, x: T) -> Result<R, TaskFail> {
        // SAFETY: by this function's contract `addr` is a `fn(T) -> R`; fn pointers are
        // pointer-sized.
        let f = unsafe { std::mem::transmute::<usize, fn(T) -> R>(addr) };
        catch(move || Ok(f(x)))
    }
}

/// `fn(T) -> Result<R, E>` with `E: Display`.
pub(crate) struct Fallible<T, R, E>(PhantomData<fn(T) -> Result<R, E>>);

impl<T: Message + 'static, R: Message + 'static, E: std::fmt::Display + 'static> Call
    for Fallible<T, R, E>
{
    type In = T;
    type Out = R;

    unsafe fn call(addr: usize, x: T) -> Result<R, TaskFail> {
        // SAFETY: by this function's contract `addr` is a `fn(T) -> Result<R, E>`.
        let f = unsafe { std::mem::transmute::<usize, fn(T) -> Result<R, E>>(addr) };
        catch(move || f(x).map_err(|e| TaskFail::new(Kind::Failed, e.to_string())))
    }
}

/// A closure `F: Fn(T) -> R` at an address (a `FnPool`'s, under fork).
pub(crate) struct Closure<F, T, R>(PhantomData<fn(T) -> R>, PhantomData<fn() -> F>);

impl<F, T, R> Call for Closure<F, T, R>
where
    F: Fn(T) -> R + 'static,
    T: Message + 'static,
    R: Message + 'static,
{
    type In = T;
    type Out = R;

    unsafe fn call(addr: usize, x: T) -> Result<R, TaskFail> {
        // SAFETY: by this function's contract `addr` is the address of an `F` that lives
        // (in this process's copy of the parent's memory) for as long as the worker does.
        let f = unsafe { &*(addr as *const F) };
        catch(move || Ok(f(x)))
    }
}

/// `fn(A, B) -> R` called with a pair (starmap).
pub(crate) struct StarPair<A, B, R>(PhantomData<fn(A, B) -> R>);

impl<A: Message + 'static, B: Message + 'static, R: Message + 'static> Call for StarPair<A, B, R> {
    type In = (A, B);
    type Out = R;

    unsafe fn call(addr: usize, x: (A, B)) -> Result<R, TaskFail> {
        // SAFETY: by this function's contract `addr` is a `fn(A, B) -> R`.
        let f = unsafe { std::mem::transmute::<usize, fn(A, B) -> R>(addr) };
        catch(move || Ok(f(x.0, x.1)))
    }
}

/// Where a chunk's results go: the result queue, labelled with the chunk.
pub(crate) struct Sink<'a> {
    results: &'a Queue<ResultMsg>,
    job: u64,
    chunk: u64,
    pid: u32,
}

impl Sink<'_> {
    /// Puts the chunk's results, serialized straight into the result queue.
    fn put_ok<R: Message>(&self, results: &[R]) -> Result<(), TaskFail> {
        let msg = OkRef {
            results: NestedArchive(results),
            job: self.job,
            chunk: self.chunk,
            pid: self.pid,
        };
        crate::meter::sending();
        let put = self.results.put_as(&msg, None);
        crate::meter::sent();
        match put {
            Ok(()) => Ok(()),
            // The results could not be serialized, or the oversized-message area could not
            // grow: the chunk fails with that reason.
            Err(PutError::Failed(_, e)) => Err(TaskFail::new(
                failed_kind(&e),
                format!("the result could not be sent: {e}"),
            )),
            // Nobody closes a worker's handle; should it happen, this is a lost worker.
            Err(_) => std::process::exit(3),
        }
    }
}

/// The kind of a result that could not be put: a system call of the queue failed (its
/// shared memory could not grow or be mapped), or the value could not be serialized.
fn failed_kind(e: &mp_core::Error) -> Kind {
    match e {
        mp_core::Error::Io { .. } => Kind::ResultNoSpace,
        _ => Kind::ResultUnserializable,
    }
}

/// The type every chunk trampoline is called through.
pub(crate) type RunChunk = unsafe fn(usize, &[u8], &Sink<'_>) -> Result<(), TaskFail>;

/// Calls the function at `target` on each item of a chunk (an archived `Vec<C::In>`), in
/// order, and puts the results (`Vec<C::Out>`) through `sink`. The first failing item fails
/// the chunk.
///
/// # Safety
/// `target` is the address of a function of `C`'s type in this process.
pub(crate) unsafe fn run_chunk<C: Call>(
    target: usize,
    payload: &[u8],
    sink: &Sink<'_>,
) -> Result<(), TaskFail> {
    let undecodable = |e: mp_core::Error| TaskFail::new(Kind::ArgsUndecodable, e.to_string());
    let archived = access::<Vec<C::In>>(payload).map_err(undecodable)?;
    let mut out: Vec<C::Out> = Vec::with_capacity(archived.len());
    // Asked once per chunk: without a timeout or insights, items run as they come.
    let metered = crate::meter::per_item();
    for (i, x) in deserialize_each::<C::In>(archived.as_slice()).enumerate() {
        let x = x.map_err(undecodable)?;
        if metered {
            crate::meter::before_item(i);
        }
        // SAFETY: forwarded from this function's contract.
        out.push(unsafe { C::call(target, x) }?);
        if metered {
            crate::meter::after_item(i);
        }
    }
    // Serializing runs the results' own code: a panic there is the task's.
    let sent = catch(|| sink.put_ok(&out));
    // Results may own resources whose destructors panic: that must not end the worker.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(out)));
    sent
}

/// The type initializer trampolines are called through.
pub(crate) type RunInit = unsafe fn(usize, &[u8]) -> Result<(), String>;

/// Decodes the initializer's argument and calls the `fn(I)` at `target`.
///
/// # Safety
/// `target` is the address of a `fn(I)` in this process.
pub(crate) unsafe fn run_init<I: Message>(target: usize, payload: &[u8]) -> Result<(), String> {
    // SAFETY: by this function's contract `target` is a `fn(I)`.
    let f = unsafe { std::mem::transmute::<usize, fn(I)>(target) };
    let arg = decode::<I>(payload).map_err(|e| format!("decoding its argument: {e}"))?;
    catch(move || {
        f(arg);
        Ok(())
    })
    .map_err(|e| format!("it panicked: {}", e.message))
}

/// Encodes the initializer's argument.
pub(crate) type EncodeInit =
    Arc<dyn Fn() -> Result<AlignedVec<ALIGN>, mp_core::Error> + Send + Sync>;

/// The initializer's argument. It is encoded while mp-process serializes the worker's
/// arguments, that is inside `mp_core::handle::collect`, so that shared objects in it (a
/// lock, a queue, a value: the usual reason for an initializer) carry their descriptors to
/// a spawn or forkserver worker. A forked worker has the typed value in its copy of the
/// parent's memory and encodes it itself.
pub(crate) struct InitArgs {
    /// In the parent and in a forked worker.
    pub(crate) encode: Option<EncodeInit>,
    /// In a worker that received its arguments as a message.
    pub(crate) bytes: Option<AlignedVec<ALIGN>>,
}

impl std::fmt::Debug for InitArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitArgs")
            .field("bytes", &self.bytes.as_ref().map(|b| b.len()))
            .finish_non_exhaustive()
    }
}

impl Archive for InitArgs {
    type Archived = ArchivedVec<u8>;
    type Resolver = (VecResolver, usize);

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::<u8>::resolve_from_len(resolver.1, resolver.0, out);
    }
}

impl<S> Serialize<S> for InitArgs
where
    S: RkyvFallible + Allocator + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        let bytes = match (&self.bytes, &self.encode) {
            (Some(b), _) => b.clone(),
            (None, Some(enc)) => enc().map_err(S::Error::new)?,
            (None, None) => AlignedVec::new(),
        };
        let r = ArchivedVec::<u8>::serialize_from_slice(bytes.as_slice(), serializer)?;
        Ok((r, bytes.len()))
    }
}

impl<D: RkyvFallible + ?Sized> Deserialize<InitArgs, D> for ArchivedVec<u8> {
    fn deserialize(&self, _: &mut D) -> Result<InitArgs, D::Error> {
        let mut v = AlignedVec::<ALIGN>::with_capacity(self.len());
        v.extend_from_slice(self.as_slice());
        Ok(InitArgs {
            encode: None,
            bytes: Some(v),
        })
    }
}

impl InitArgs {
    /// The encoded argument, in the worker.
    fn bytes(&self) -> Result<AlignedVec<ALIGN>, String> {
        if let Some(b) = &self.bytes {
            return Ok(b.clone());
        }
        let Some(enc) = &self.encode else {
            return Err("the initializer's argument is missing".into());
        };
        // A forked worker: encode the value it inherited, exporting its shared objects'
        // descriptors into a table of this process's own, from which decoding maps them again.
        let (r, fds) = mp_core::handle::collect(|| enc());
        mp_core::handle::install(fds);
        r.map_err(|e| format!("encoding its argument: {e}"))
    }
}

/// The initializer a worker runs once at start.
#[derive(Debug, Archive, Serialize, Deserialize)]
pub(crate) struct InitSpec {
    pub(crate) args: InitArgs,
    pub(crate) trampoline: i64,
    pub(crate) target: i64,
}

/// Everything a worker process needs.
#[derive(Debug, Archive, Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub(crate) tasks: Queue<TaskMsg>,
    pub(crate) results: Queue<ResultMsg>,
    pub(crate) slot: Shared<Slot>,
    /// The parent's `mp_process::symbol::image_id()`.
    pub(crate) image_id: Vec<u8>,
    pub(crate) init: Option<InitSpec>,
    /// Chunks to run before exiting (0: no limit).
    pub(crate) max_tasks: u64,
    /// Started with the fork method: closure tasks (raw addresses) are allowed.
    pub(crate) forked: bool,
    /// Collect insights (see `meter`).
    pub(crate) insights: bool,
}

/// Function offsets resolved in this worker, most recent first.
struct Resolved {
    image_id: Vec<u8>,
    known: Vec<(i64, usize)>,
}

impl Resolved {
    fn get(&mut self, offset: i64) -> Result<usize, String> {
        if let Some(&(_, a)) = self.known.iter().find(|(o, _)| *o == offset) {
            return Ok(a);
        }
        let a = mp_process::symbol::resolve(offset, &self.image_id).map_err(|e| e.to_string())?;
        if self.known.len() >= 64 {
            self.known.pop();
        }
        self.known.insert(0, (offset, a));
        Ok(a)
    }
}

fn put_result(results: &Queue<ResultMsg>, msg: ResultMsg) {
    match results.put(msg) {
        Ok(()) => {}
        Err(PutError::Failed(m, e)) => {
            // The bytes could not be stored (the oversized-message area could not grow):
            // report that instead; if even that fails, exiting makes it a lost worker.
            let small = ResultMsg {
                payload: Payload::default(),
                job: m.job,
                chunk: m.chunk,
                kind: failed_kind(&e).into(),
                pid: m.pid,
                message: format!("the result could not be sent: {e}"),
                location: String::new(),
            };
            if results.put(small).is_err() {
                std::process::exit(3);
            }
        }
        Err(_) => std::process::exit(3),
    }
}

/// Gives this worker the signal state a re-executed (spawn) worker has: the termination
/// signals a parent program catches (SIGINT, SIGTERM, SIGHUP, SIGQUIT) back to their default
/// action, and no signal blocked. A forked worker inherits the parent's handlers and mask;
/// exec (`posix_spawn` with an empty mask) resets them. So Ctrl-C ends the workers under
/// every start method, and the pool fails the tasks they ran with `WorkerLost` even when the
/// program itself catches SIGINT. An ignored signal stays ignored, as across exec.
fn reset_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: sigaction with a null new action only reads the disposition into `old`,
        // a zeroed `sigaction` it may overwrite.
        let read = unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) };
        // SAFETY: zero-initialized, then filled by the successful call above.
        let handler = unsafe { old.assume_init() }.sa_sigaction;
        if read == 0 && handler != libc::SIG_DFL && handler != libc::SIG_IGN {
            // SAFETY: SIG_DFL is always a valid disposition; no handler of ours is involved.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    // SAFETY: an empty set, initialized by sigemptyset before use, installed as this (the
    // only) thread's mask.
    unsafe {
        let mut none = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        libc::sigemptyset(none.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut());
    }
}

/// The body of every worker process.
pub(crate) fn worker_main(args: WorkerArgs) {
    reset_signals();
    install_task_hook();
    keep_freed_memory();
    let pid = std::process::id();
    // The slot's mapping must outlive every use by the claim hook: keep it for the life of
    // the process.
    let slot: &'static Slot = Box::leak(Box::new(args.slot.clone()));
    slot.pid.store(pid, std::sync::atomic::Ordering::Relaxed);
    let mut resolved = Resolved {
        image_id: args.image_id.clone(),
        known: Vec::new(),
    };
    if let Some(init) = &args.init {
        if let Err(message) = run_initializer(init, &mut resolved) {
            let failed = control_msg(Kind::InitFailed, pid, message);
            put_result(&args.results, failed);
            return;
        }
    }
    // The parent reads it after this process died (ordered by the death itself).
    slot.ready.store(1, std::sync::atomic::Ordering::SeqCst);
    if args.init.is_some() {
        // Resets the parent's count of initializer failures in a row.
        let ok = control_msg(Kind::InitOk, pid, String::new());
        put_result(&args.results, ok);
    }
    set_claim_slot(slot);
    crate::meter::start(slot, args.insights);
    let mut done = 0u64;
    loop {
        // The queue's own wait: its policy (mp_core::wait) spins only while that can help,
        // then sleeps until a feeder's put wakes this worker.
        let task = match args.tasks.get() {
            Ok(t) => t,
            // A record the queue could not read (damaged, or an oversized one that could
            // not be mapped) was skipped: its task is lost, and whose it was is unknown.
            // Tell the parent, which fails the pending work, and go on with the next one.
            Err(e @ (mp_queue::Error::Corrupted(_) | mp_queue::Error::Core(_))) => {
                let unreadable = control_msg(Kind::TaskUnreadable, pid, e.to_string());
                put_result(&args.results, unreadable);
                continue;
            }
            Err(_) => return,
        };
        if task.claim.job == 0 {
            return;
        }
        crate::meter::got_task(task.claim.job, task.claim.first);
        let sink = Sink {
            results: &args.results,
            job: task.claim.job,
            chunk: task.claim.chunk,
            pid,
        };
        match run_task(&task, &mut resolved, args.forked, &sink) {
            Ok(()) => {}
            Err(f) => {
                crate::meter::sending();
                let failed = ResultMsg {
                    payload: Payload::default(),
                    job: task.claim.job,
                    chunk: task.claim.chunk,
                    kind: f.kind.into(),
                    pid,
                    message: f.message,
                    location: f.location,
                };
                put_result(&args.results, failed);
                crate::meter::sent();
            }
        }
        drop(task);
        crate::meter::chunk_done();
        if !slot.finish() {
            // The supervisor is stopping this task for its timeout (its result, if sent,
            // was taken first).
            crate::meter::await_kill();
        }
        done += 1;
        if args.max_tasks != 0 && done >= args.max_tasks {
            return;
        }
    }
}

/// A worker allocates and frees a few buffers of a chunk's size per chunk. glibc serves
/// large ones with mmap and gives them back at once, so every chunk would fault its pages in
/// again (zeroed by the kernel): keep them in the heap instead. A worker only runs tasks, so
/// holding on to that memory is what it should do.
fn keep_freed_memory() {
    // SAFETY: mallopt only changes this process's allocator settings (glibc's allocator
    // locks were reset by fork, and a re-executed worker has one thread here).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// A message about the worker itself (no job's chunk): its initializer, an unreadable task.
fn control_msg(kind: Kind, pid: u32, message: String) -> ResultMsg {
    ResultMsg {
        payload: Payload::default(),
        job: 0,
        chunk: 0,
        kind: kind.into(),
        pid,
        message,
        location: String::new(),
    }
}

/// Runs the pool's initializer in this worker: `Err` with the failure's message.
fn run_initializer(init: &InitSpec, resolved: &mut Resolved) -> Result<(), String> {
    let trampoline = resolved.get(init.trampoline)?;
    let target = resolved.get(init.target)?;
    // SAFETY: `trampoline` is `run_init::<I>` of this very executable (the parent computed
    // its offset in an image with the same build id, checked by `resolve`), and `target` is
    // the initializer of type `fn(I)` the parent instantiated it for.
    let trampoline = unsafe { std::mem::transmute::<usize, RunInit>(trampoline) };
    let bytes = init.args.bytes()?;
    // SAFETY: as above: `target` is a `fn(I)`.
    unsafe { trampoline(target, &bytes) }
}

/// Runs one chunk: its results go to the result queue through `sink`, unless it failed.
/// `forked`: this worker was forked from the parent (a closure task may run here).
fn run_task(
    task: &TaskMsg,
    resolved: &mut Resolved,
    forked: bool,
    sink: &Sink<'_>,
) -> Result<(), TaskFail> {
    let unknown = |message| TaskFail::new(Kind::ArgsUndecodable, message);
    let trampoline = resolved.get(task.trampoline).map_err(unknown)?;
    let target = if task.raw {
        if !forked {
            return Err(unknown(
                "a closure task reached a worker that was not forked".into(),
            ));
        }
        task.target as usize
    } else {
        resolved.get(task.target).map_err(unknown)?
    };
    // SAFETY: `trampoline` is `run_chunk::<C>` of this very executable (offset computed by
    // the parent in an image with the same build id, checked by `resolve`), called through
    // its exact type.
    let trampoline = unsafe { std::mem::transmute::<usize, RunChunk>(trampoline) };
    // SAFETY: `target` is the task's function, of the type the parent instantiated
    // `run_chunk::<C>` for (both come from the same `TaskMsg`). A raw target is the address
    // of the closure a `FnPool` holds in the parent for as long as its workers live; this
    // worker was forked from that parent, so its copy of the closure sits at the same
    // address.
    unsafe { trampoline(target, &task.payload.0, sink) }
}
