//! Running the target in a child, under every start method.
//!
//! * [`run_target`] runs the target under `catch_unwind`, sends the value (or the panic message
//!   and location) to the parent over the child's socket and returns the exit code.
//! * The panic hook (installed once, in the parent, before the first child is forked, so that
//!   a forked child never takes the hook lock that another thread may hold) records the panic
//!   location of a target and writes the message straight to file descriptor 2, so that it is
//!   on the child's stderr even when the parent's test harness captures output.
//! * [`run_boot`] reads a re-executed child's boot frame and calls its [`trampoline`], which
//!   decodes the arguments and runs the target.

use std::cell::RefCell;
use std::os::fd::BorrowedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Once;

use mp_core::message::{decode, encode, encode_into, Encoded};
use mp_core::util::panic_message;
use mp_core::Message;

use crate::boot::{fail_start, send_string, Boot, Trampoline};
use crate::consts::{PANIC_EXIT_CODE, START_FAILED_EXIT_CODE};
use crate::frame::{self, Tag};
use crate::identity::{identity, set_identity, Identity};
use crate::sys::write_stderr;

thread_local! {
    /// True on the thread that runs a target inside a child.
    static IN_TARGET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The last panic of the target: (message, location).
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// What the panic hook does about backtraces, decided in the parent before each fork (a forked
/// child must not read the environment or take std's backtrace lock: another thread of the
/// parent may have held either at the fork, and nothing would ever release it in the child).
static BACKTRACE: AtomicU8 = AtomicU8::new(BACKTRACE_OFF);
/// `RUST_BACKTRACE` is unset or 0.
const BACKTRACE_OFF: u8 = 0;
/// Backtraces are wanted, and the process had one thread when this was decided.
const BACKTRACE_ON: u8 = 1;
/// Backtraces are wanted, but the process ran other threads: a child forked now could block
/// forever in std's backtrace lock, so it prints a note instead.
const BACKTRACE_UNSAFE: u8 = 2;

/// Reads `RUST_BACKTRACE` (and, only when it asks for backtraces, this process's thread count)
/// for the panic hook of the children started next. Called by the parent before every start.
fn decide_backtrace() {
    let wanted = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
    let mode = if !wanted {
        BACKTRACE_OFF
    } else if std::fs::read_dir("/proc/self/task").map_or(2, |d| d.count()) <= 1 {
        BACKTRACE_ON
    } else {
        BACKTRACE_UNSAFE
    };
    BACKTRACE.store(mode, Ordering::Relaxed);
}

/// Installs the panic hook once per process (see the module doc), and reads what it needs from
/// the environment now, in the caller (before a fork), never in the panicking child.
pub(crate) fn install_panic_hook() {
    decide_backtrace();
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_TARGET.with(|t| t.get()) {
                return previous(info);
            }
            let message = panic_message(info.payload());
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_else(|| "<unknown>".into());
            let who = identity()
                .map(|i| i.name.clone())
                .unwrap_or_else(|| "MainProcess".into());
            let mut text = format!(
                "process '{who}' (pid {}) panicked at {location}:\n{message}\n",
                std::process::id()
            );
            match BACKTRACE.load(Ordering::Relaxed) {
                BACKTRACE_ON => {
                    text.push_str(&format!("{}\n", std::backtrace::Backtrace::force_capture()))
                }
                BACKTRACE_UNSAFE => text.push_str(
                    "(no backtrace: this child was forked from a multi-threaded parent, where \
                     capturing one could block forever; the spawn and forkserver start methods \
                     give backtraces)\n",
                ),
                _ => {}
            }
            // Straight to fd 2: a forked child of a test harness may have inherited a capture
            // of the thread's output, which would swallow the message.
            write_stderr(text.as_bytes());
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location)));
        }));
    });
}

/// Size of the stack buffer a child encodes its result into (see [`run_target`]).
const SMALL_ARCHIVE: usize = 256;

/// A stack buffer aligned for an archive ([`mp_core::message::ALIGN`]).
#[repr(C, align(16))]
struct SmallArchive([u8; SMALL_ARCHIVE]);
const _: () = assert!(std::mem::align_of::<SmallArchive>() == mp_core::message::ALIGN);

/// Runs the target in a child, reports its end to the parent over `chan` and returns the
/// exit code the child must exit with.
pub(crate) fn run_target<R: Message>(chan: BorrowedFd<'_>, f: impl FnOnce() -> R) -> i32 {
    IN_TARGET.with(|t| t.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_TARGET.with(|t| t.set(false));
    match result {
        Ok(value) => {
            // A small result is encoded on the stack: a heap buffer would cost the child
            // copy-on-write faults on the allocator's pages (a measurable share of a fork
            // start); a large one spills to the heap.
            let mut small = SmallArchive([0; SMALL_ARCHIVE]);
            // SAFETY: `small` is ours, SMALL_ARCHIVE bytes long and aligned to 16 (ALIGN).
            let encoded = unsafe { encode_into(&value, small.0.as_mut_ptr(), SMALL_ARCHIVE) };
            let code = match encoded {
                Ok(e) => {
                    let bytes = match &e {
                        Encoded::InPlace(n) => &small.0[..*n],
                        Encoded::Spilled(v) => v.as_slice(),
                    };
                    let _ = frame::send_final(chan, Tag::Returned, bytes);
                    0
                }
                Err(e) => {
                    let msg = format!("the return value could not be serialized: {e}");
                    write_stderr(
                        format!("mp child (pid {}): {msg}\n", std::process::id()).as_bytes(),
                    );
                    send_string(chan, Tag::ResultLost, msg);
                    PANIC_EXIT_CODE
                }
            };
            // Dropping the value may run destructors that panic; that is the target's
            // business, but it must not unwind out of the child's entry.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
            code
        }
        Err(payload) => {
            let (message, location) = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| (panic_message(&*payload), "<unknown>".into()));
            std::mem::forget(payload);
            if let Ok(bytes) = encode(&(message, location)) {
                let _ = frame::send_final(chan, Tag::Panicked, &bytes);
            }
            PANIC_EXIT_CODE
        }
    }
}

/// Decodes the arguments and runs the target of type `fn(A) -> R` at address `target`.
///
/// # Safety
/// `target` must be the address of a `fn(A) -> R` of this executable.
// Every instantiation goes into the section that holds only trampolines: a child calls only
// an address inside it (`image::resolve_trampoline`).
#[link_section = "mp_trampolines"]
pub(crate) unsafe fn trampoline<A: Message, R: Message>(
    target: usize,
    args: &[u8],
    chan: BorrowedFd<'_>,
) -> i32 {
    // SAFETY: by this function's contract `target` is a `fn(A) -> R`; fn pointers are
    // pointer-sized.
    let f: fn(A) -> R = unsafe { std::mem::transmute::<usize, fn(A) -> R>(target) };
    let a: A = match mp_core::message::decode(args) {
        Ok(a) => a,
        Err(e) => return fail_start(chan, format!("decoding the arguments: {e}")),
    };
    run_target(chan, move || f(a))
}

/// Reads the boot frame from `chan` and runs what it names. Used by spawn children and by
/// children of the fork server.
pub(crate) fn run_boot(chan: BorrowedFd<'_>) -> i32 {
    let boot = match frame::recv_blocking(chan) {
        Ok(Some((Tag::Boot, bytes))) => match decode::<Boot>(&bytes) {
            Ok(b) => b,
            Err(e) => return fail_start(chan, format!("malformed boot message: {e}")),
        },
        Ok(Some((tag, _))) => return fail_start(chan, format!("unexpected frame {tag:?}")),
        Ok(None) => return fail_start(chan, "the parent closed the channel before booting".into()),
        Err(e) => return fail_start(chan, format!("reading the boot message: {e}")),
    };
    let trampoline_addr =
        match crate::image::resolve_trampoline(boot.trampoline as isize, &boot.image_id) {
            Ok(a) => a,
            Err(e) => return fail_start(chan, e),
        };
    let target = match crate::image::resolve(boot.target as isize, &boot.image_id) {
        Ok(a) => a,
        Err(e) => return fail_start(chan, e),
    };
    set_identity(Box::new(Identity {
        name: boot.name,
        ident: boot.ident,
        daemon: boot.daemon,
        parent: Some((boot.parent_pid, boot.parent_name)),
    }));
    install_panic_hook();
    if frame::send(chan, Tag::Started, &[]).is_err() {
        // The parent is gone or dropped the child: nobody wants the result.
        return START_FAILED_EXIT_CODE;
    }
    // SAFETY: `trampoline_addr` is the address of `trampoline::<A, R>` (above) in this very
    // executable: the parent computed its offset from the anchor in an image with the same
    // build id, and `resolve_trampoline` checked that identity and that the address lies in
    // the section that holds only trampolines (and `no_trampoline`, which refuses). The
    // channel is the parent's own socket (`check_chan`, or the fork server's).
    let trampoline_fn: Trampoline = unsafe { std::mem::transmute(trampoline_addr) };
    // SAFETY: `target` is the target's address computed the same way, and the trampoline was
    // instantiated for the target's exact type by the parent (`Process::<A, R>::start`).
    unsafe { trampoline_fn(target, &boot.args, chan) }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    /// Has the signature of a trampoline, and is not one.
    unsafe fn not_a_trampoline(_target: usize, _args: &[u8], _chan: BorrowedFd<'_>) -> i32 {
        42
    }

    /// A boot frame whose trampoline is a function of this executable that is not a
    /// trampoline is refused (before: any address inside the executable was called).
    #[test]
    fn a_boot_frame_names_only_real_trampolines() {
        let (parent, child) = std::os::unix::net::UnixStream::pair().unwrap();
        let off =
            |addr: usize| crate::image::offset_of(addr, crate::method::StartMethod::Spawn).unwrap();
        let boot = crate::boot::Boot {
            image_id: crate::image::image_id().0.clone(),
            trampoline: off(not_a_trampoline as crate::boot::Trampoline as usize) as i64,
            target: off(not_a_trampoline as crate::boot::Trampoline as usize) as i64,
            name: "evil".into(),
            ident: "1".into(),
            daemon: false,
            parent_pid: 1,
            parent_name: "MainProcess".into(),
            args: Vec::new(),
        };
        frame::send(parent.as_fd(), Tag::Boot, &encode(&boot).unwrap()).unwrap();
        let code = run_boot(child.as_fd());
        assert_eq!(
            code, START_FAILED_EXIT_CODE,
            "the boot jumped to a non-trampoline"
        );
        match frame::recv_blocking(parent.as_fd()).unwrap() {
            Some((Tag::StartFailed, msg)) => {
                let msg: String = decode(&msg).unwrap();
                assert!(msg.contains("not a trampoline"), "{msg}");
            }
            other => panic!("{:?}", other.map(|(t, _)| t)),
        }
    }
}
