//! [`Process`] and [`ClosureProcess`]: the builders of a child (how each start method makes
//! one is [`crate::start`]).

use mp_core::Message;

use crate::error::Error;
use crate::handle::Child;
use crate::method::StartMethod;
use crate::start::{self, Options};

/// A child to start and its options: the one builder behind [`Process`] (a `fn` target with
/// message arguments, any start method) and [`ClosureProcess`] (a closure, under fork). The
/// options both have (`name`, `daemon`) are set here; `T` is what the child runs.
pub struct ProcessBuilder<T> {
    target: T,
    opts: Options,
}

/// What a [`Process`] runs: a plain `fn(A) -> R` and its arguments.
pub struct FnTarget<A, R> {
    target: fn(A) -> R,
    args: A,
}

/// What a [`ClosureProcess`] runs: a closure.
pub struct ClosureTarget<F>(F);

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
pub type Process<A, R> = ProcessBuilder<FnTarget<A, R>>;

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
pub type ClosureProcess<F> = ProcessBuilder<ClosureTarget<F>>;

impl<T> ProcessBuilder<T> {
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
}

impl<A, R> std::fmt::Debug for Process<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.opts.debug(f, "Process", true)
    }
}

impl<F> std::fmt::Debug for ClosureProcess<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.opts.debug(f, "ClosureProcess", false)
    }
}

impl<A: Message, R: Message> Process<A, R> {
    /// A process that will run `target(args)`.
    pub fn new(target: fn(A) -> R, args: A) -> Self {
        ProcessBuilder {
            target: FnTarget { target, args },
            opts: Options::default(),
        }
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
                let FnTarget { target, args } = self.target;
                start::fork::start(self.opts, move || target(args))
            }
            StartMethod::Spawn | StartMethod::ForkServer => {
                let boot = start::prepare::<A, R>(
                    self.target.target,
                    &self.target.args,
                    &self.opts,
                    method,
                )?;
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

impl<R: Message, F: FnOnce() -> R + Send + 'static> ClosureProcess<F> {
    /// A process that will run `f` in a forked child.
    pub fn new(f: F) -> Self {
        ProcessBuilder {
            target: ClosureTarget(f),
            opts: Options::default(),
        }
    }

    /// Forks the child.
    pub fn start(self) -> Result<Child<R>, Error> {
        start::fork::start(self.opts, self.target.0)
    }
}
