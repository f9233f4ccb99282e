//! The two error types of mp-process: [`Error`] (starting a child, configuring start methods)
//! and [`ProcessError`] (how a child ended, as reported by [`Child::join`](crate::Child::join)).

use std::io;

/// Everything that can go wrong while starting a child or choosing a start method.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What mp was doing.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// An error of mp-core (most often: an argument could not be serialized).
    #[error(transparent)]
    Core(#[from] mp_core::Error),
    /// The spawn and forkserver start methods re-run this program as the child; the program
    /// must cooperate by calling [`init`](crate::init) first thing in `main` (or, in a test
    /// binary, by containing [`test_support!`](crate::test_support)).
    #[error(
        "the {method} start method needs the program to call mp_process::init() (mp::init()) \
         first thing in main, or, in an integration test file, mp_process::test_support!() at \
         the top level; use the fork start method otherwise"
    )]
    NotInitialized {
        /// The start method that was asked for.
        method: crate::method::StartMethod,
    },
    /// This process was started as an mp child by spawn or forkserver but its `main` did not
    /// call [`init`](crate::init): starting children from it would re-run the program forever.
    #[error(
        "this process was started as an mp child (spawn/forkserver) but main() did not call \
         mp_process::init() first; refusing to start children so that the program does not \
         re-run itself without end"
    )]
    ChildWithoutInit,
    /// The target function cannot be found again in a re-executed child: it is not part of
    /// the executable that contains mp-process (for example it lives in a shared library).
    #[error("the target function cannot be started with {method}: {reason}")]
    TargetNotInExecutable {
        /// The start method that was asked for.
        method: crate::method::StartMethod,
        /// Why.
        reason: String,
    },
    /// [`set_start_method`](crate::set_start_method) was called a second time without
    /// `force`.
    #[error(
        "the start method is already set to {current}; call set_start_method(.., force = true) \
         to change it"
    )]
    StartMethodAlreadySet {
        /// The method that is in force.
        current: crate::method::StartMethod,
    },
    /// The fork server could not be started or stopped answering.
    #[error("fork server: {0}")]
    ForkServer(String),
}

impl Error {
    pub(crate) fn last_os(op: &'static str) -> Self {
        Error::Io {
            op,
            source: io::Error::last_os_error(),
        }
    }

    pub(crate) fn io(op: &'static str, source: io::Error) -> Self {
        Error::Io { op, source }
    }
}

/// How a child ended when it did not return a value, or why its value could not be had.
///
/// `join` returns `Ok(value)` only when the target returned normally and its value arrived;
/// every other end is one of these, so that exit codes, signals and panics are told apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The child exited with this code without returning from its target (it called
    /// `std::process::exit(code)`, or the program's own `main` ran and returned). Code 0 is
    /// reported here too: the process succeeded but there is no return value to give.
    #[error("the child exited with code {code} before its target returned")]
    Exited {
        /// The exit code (0..=255).
        code: i32,
    },
    /// The child was killed by a signal (Python's negative exit code `-signal`).
    #[error("the child was killed by signal {signal} ({name}){core}",
            name = signal_name(*signal),
            core = if *core_dumped { ", core dumped" } else { "" })]
    Signaled {
        /// The signal number (15 for SIGTERM, 9 for SIGKILL, ...).
        signal: i32,
        /// Whether a core dump was written.
        core_dumped: bool,
    },
    /// The target panicked. The same message was printed on the child's stderr.
    #[error("the child panicked at {location}: {message}")]
    Panicked {
        /// The panic message (the payload if it was a string, otherwise a placeholder).
        message: String,
        /// `file:line:column` of the panic, when known.
        location: String,
    },
    /// The child could not be created, or it could not start its target (the executable
    /// changed, the arguments could not be decoded, the program did not call `init`).
    #[error("the child could not start its target: {0}")]
    StartFailed(String),
    /// The target returned but its value could not be sent back (it failed to serialize, or
    /// the bytes that arrived are not a valid archive of the return type).
    #[error("the child's return value was lost: {0}")]
    ResultLost(String),
    /// The value was already taken by an earlier `join`.
    #[error("the child was already joined and its result taken")]
    AlreadyJoined,
    /// A system call failed while waiting for or signalling the child.
    #[error("{op} failed: {message}")]
    Io {
        /// What mp was doing.
        op: &'static str,
        /// The operating system's message.
        message: String,
    },
}

impl ProcessError {
    /// Python's `exitcode` for this end, when there is one: the exit code, or minus the
    /// signal number.
    pub fn exitcode(&self) -> Option<i32> {
        match self {
            ProcessError::Exited { code } => Some(*code),
            ProcessError::Signaled { signal, .. } => Some(-*signal),
            ProcessError::Panicked { .. } => Some(crate::consts::PANIC_EXIT_CODE),
            _ => None,
        }
    }

    pub(crate) fn io(op: &'static str, e: impl std::fmt::Display) -> Self {
        ProcessError::Io {
            op,
            message: e.to_string(),
        }
    }
}

pub(crate) fn signal_name(signal: i32) -> &'static str {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(s) => s.as_str(),
        Err(_) => "unknown signal",
    }
}
