//! [`Process`] and [`ClosureProcess`]: the builders of a child (how each start method makes
//! one is [`crate::start`]).

use mp_core::Message;

use crate::error::Error;
use crate::handle::Child;
use crate::method::StartMethod;
use crate::start::{self, Options};

/// A process to start: Python's `Process(target=f, args=a, name=.., daemon=..)`.
///
/// The target is a plain `fn(A) -> R` (a closure that captures nothing coerces to one), so
/// that a re-executed child (spawn, forkserver) can find it again; `A` and `R` are
/// [messages](mp_core::Message). Under fork any closure works: see [`Process::fork`] and
/// [`ClosureProcess`].
///
/// ```
/// # mp_process::init();
/// use mp_process::{Process, StartMethod};
/// fn square(x: u64) -> u64 { x * x }
/// let mut child = Process::new(square, 12).name("squarer").start()?;
/// assert_eq!(child.join()?, 144);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Process<A, R> {
    target: fn(A) -> R,
    args: A,
    opts: Options,
}

impl<A, R> std::fmt::Debug for Process<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.opts.name)
            .field("daemon", &self.opts.daemon)
            .field("start_method", &self.opts.method)
            .finish_non_exhaustive()
    }
}

impl<A: Message, R: Message> Process<A, R> {
    /// A process that will run `target(args)`.
    pub fn new(target: fn(A) -> R, args: A) -> Self {
        Process {
            target,
            args,
            opts: Options::default(),
        }
    }

    /// Sets the name (Python's default is `Process-N`, N counting this process's children,
    /// `Process-1:2` for the second child of the first child).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.opts.name = Some(name.into());
        self
    }

    /// A daemon child dies with its parent, even when the parent is killed with SIGKILL.
    pub fn daemon(mut self, yes: bool) -> Self {
        self.opts.daemon = yes;
        self
    }

    /// Chooses the start method for this process (the default is the one of
    /// [`get_start_method`](crate::get_start_method)).
    pub fn start_method(mut self, m: StartMethod) -> Self {
        self.opts.method = Some(m);
        self
    }

    /// Starts the child.
    pub fn start(self) -> Result<Child<R>, Error> {
        let method = self
            .opts
            .method
            .unwrap_or_else(crate::method::get_start_method);
        match method {
            StartMethod::Fork => {
                let (target, args) = (self.target, self.args);
                start::fork::start(self.opts, move || target(args))
            }
            StartMethod::Spawn | StartMethod::ForkServer => {
                let boot = start::prepare::<A, R>(self.target, &self.args, &self.opts, method)?;
                if method == StartMethod::Spawn {
                    start::spawn::start(boot)
                } else {
                    start::forkserver::start(boot)
                }
            }
        }
    }
}

impl Process<(), ()> {
    /// Forks a child that runs the closure `f` and returns its value to [`Child::join`]:
    /// the shortcut for `ClosureProcess::new(f).start()`. Always the fork start method (a
    /// closure cannot cross an `exec`).
    ///
    /// The child is a copy of the calling thread only; see the crate doc, "Fork and threads",
    /// for what it may do when the parent runs other threads.
    pub fn fork<R: Message, F: FnOnce() -> R + Send + 'static>(f: F) -> Result<Child<R>, Error> {
        ClosureProcess::new(f).start()
    }
}

/// A process that runs a closure, under the fork start method: the builder behind
/// [`Process::fork`], for when the child needs a name or the daemon flag.
///
/// ```
/// use mp_process::ClosureProcess;
/// let greeting = String::from("hello");
/// let mut child = ClosureProcess::new(move || format!("{greeting} from a child"))
///     .name("greeter")
///     .start()?;
/// assert_eq!(child.join()?, "hello from a child");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ClosureProcess<F> {
    f: F,
    opts: Options,
}

impl<F> std::fmt::Debug for ClosureProcess<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClosureProcess")
            .field("name", &self.opts.name)
            .field("daemon", &self.opts.daemon)
            .finish_non_exhaustive()
    }
}

impl<R: Message, F: FnOnce() -> R + Send + 'static> ClosureProcess<F> {
    /// A process that will run `f` in a forked child.
    pub fn new(f: F) -> Self {
        ClosureProcess {
            f,
            opts: Options::default(),
        }
    }

    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.opts.name = Some(name.into());
        self
    }

    /// A daemon child dies with its parent.
    pub fn daemon(mut self, yes: bool) -> Self {
        self.opts.daemon = yes;
        self
    }

    /// Forks the child.
    pub fn start(self) -> Result<Child<R>, Error> {
        start::fork::start(self.opts, self.f)
    }
}
