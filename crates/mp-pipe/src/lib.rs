//! Python's `Pipe()` and `multiprocessing.connection`, for [mp](https://docs.rs/mp): typed
//! [`Connection<T>`]s, [`wait`] over many of them, and [`Listener`]/[`Client`] with an authkey,
//! wire-compatible with CPython.
//!
//! # Hello, pipe
//!
//! A pipe has two ends; what one sends, the other receives. Here a child process (started with
//! `mp_process`, which the `mp` crate re-exports) gets one end as its argument and answers:
//!
//! ```
//! use mp_pipe::{Connection, Duplex, Pipe};
//! use mp_process::Process;
//!
//! fn greeter(conn: Connection<String>) -> usize {
//!     let mut n = 0;
//!     while let Ok(name) = conn.recv() {
//!         if name.is_empty() {
//!             break;
//!         }
//!         conn.send(&format!("hello, {name}")).expect("send");
//!         n += 1;
//!     }
//!     n
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (parent, child) = Pipe::<String>::new(Duplex)?;
//! let mut p = Process::new(greeter, child).start()?;
//! parent.send(&"world".to_string())?;
//! assert_eq!(parent.recv()?, "hello, world");
//! parent.send(&String::new())?;
//! assert_eq!(p.join()?, 1);
//! # Ok(()) }
//! ```
//!
//! The connection is a message of the handle kind, so this works under every start method
//! (fork, spawn, forkserver): its descriptors and shared rings travel with it.
//!
//! # Typed messages and bytes
//!
//! `Connection<T>` sends and receives values of `T`, any [`mp_core::Message`] (derive rkyv's
//! `Archive`, `Serialize`, `Deserialize`). Every connection also carries plain byte messages,
//! with Python's argument rules:
//!
//! ```
//! use mp_pipe::{Duplex, Error, Pipe};
//!
//! let (a, b) = Pipe::<(u32, String)>::new(Duplex)?;
//! a.send(&(7, "seven".into()))?;
//! assert_eq!(b.recv()?, (7, "seven".to_string()));
//!
//! a.send_bytes(b"..hello..", 2, Some(5))?;          // buf[2..7]
//! let mut buf = [0u8; 8];
//! assert_eq!(b.recv_bytes_into(&mut buf, 3)?, 5);   // written at buf[3..8]
//! assert_eq!(&buf[3..], b"hello");
//!
//! a.send_bytes(b"too long for that", 0, None)?;
//! assert!(matches!(b.recv_bytes_into(&mut buf, 0), Err(Error::BufferTooShort { needed: 17, .. })));
//! assert_eq!(b.recv_bytes(None)?, b"too long for that"); // the message was kept
//! assert!(matches!(a.send_bytes(b"abc", 4, None), Err(Error::InvalidArgument("buffer length < offset"))));
//! # Ok::<(), mp_pipe::Error>(())
//! ```
//!
//! # One-way pipes
//!
//! `Pipe::new(OneWay)` returns `(reader, writer)` as Python's `Pipe(duplex=False)` does, but
//! typed: a [`Reader`] has no `send` and a [`Writer`] has no `recv`, so misuse does not compile.
//!
//! ```
//! use mp_pipe::{OneWay, Pipe};
//! let (reader, writer) = Pipe::<u64>::new(OneWay)?;
//! writer.send(&42)?;
//! assert_eq!(reader.recv()?, 42);
//! # Ok::<(), mp_pipe::Error>(())
//! ```
//!
//! # Timeouts, poll and end-of-file
//!
//! [`Connection::poll`] tells whether a receive would not block (without consuming anything);
//! [`Connection::recv_timeout`] gives up with [`Error::Timeout`]. When the peer closes its end,
//! or its process dies (even by `SIGKILL`), the receiver gets the messages still on the way,
//! then [`Error::Eof`]: never a hang.
//!
//! ```
//! use std::time::Duration;
//! use mp_pipe::{Duplex, Error, Pipe};
//!
//! let (a, b) = Pipe::<u8>::new(Duplex)?;
//! assert!(!b.poll(Some(Duration::ZERO))?);
//! assert!(matches!(b.recv_timeout(Duration::from_millis(20)), Err(Error::Timeout)));
//! a.send(&1)?;
//! assert!(b.poll(None)?);
//! drop(a);
//! assert_eq!(b.recv()?, 1);
//! assert!(matches!(b.recv(), Err(Error::Eof)));
//! # Ok::<(), mp_pipe::Error>(())
//! ```
//!
//! # Fork and end-of-file
//!
//! End-of-file comes when every copy of the other end is closed, in every process. A child
//! started with **fork** holds a copy of every end its parent had at that moment, so it never
//! sees end-of-file on a pipe whose other end the parent held when it forked (Python has the
//! same rule: close what you do not use). `Process::new(f, end)` moves `end` into the child, so
//! the parent's copy is dropped for you; to stop a forked child that waits for messages, send
//! it one that says so. Under spawn and forkserver only the arguments reach the child. A peer
//! that *dies* closes all its copies: the other side gets [`Error::Eof`] (or
//! [`Error::Truncated`] mid-message) on receive and [`Error::BrokenPipe`] on send.
//!
//! A message larger than the ring travels in pieces, and the receiving end puts them together
//! in its own process. So while `recv_timeout` has given up in the middle of such a message,
//! that end must go on receiving in the same process: if the end is handed to another process
//! (or two processes take turns on it), the other process sees the rest of a message without its
//! start and gets [`Error::Protocol`] from then on.
//!
//! # Waiting on many connections
//!
//! [`wait`] blocks until any of several connections, process sentinels (pidfds) or other
//! descriptors is ready, like `multiprocessing.connection.wait`; it returns the indices of the
//! ready ones. See its documentation for an example.
//!
//! # Listener and Client
//!
//! Processes that did not start each other meet at an address, a Unix socket or TCP, with an
//! optional authkey checked by a mutual HMAC challenge-response. The framing and the handshake
//! are byte for byte CPython's, so the other side may be Python:
//!
//! ```no_run
//! # fn main() -> mp_pipe::Result<()> {
//! use mp_pipe::{Address, Client, Connection};
//! // Python: Listener(('127.0.0.1', 6000), authkey=b'secret')
//! let conn: Connection<Vec<u8>> = Client::connect(Address::tcp("127.0.0.1", 6000)?, Some(b"secret"))?;
//! conn.send_bytes(b"hello from Rust", 0, None)?;    // Python: conn.recv_bytes()
//! # Ok(()) }
//! ```
//!
//! Typed `send`/`recv` work between Rust peers (the frame holds an rkyv archive); a Python
//! peer uses `send_bytes`/`recv_bytes` (Python's `send`/`recv` pickle, which Rust does not
//! read). A frame larger than [`Connection::max_message_size`] (1 GiB by default) is refused
//! before anything is allocated for it.
//!
//! Unlike CPython, a [`Listener`] takes connections from the kernel at once and runs their
//! handshakes side by side on one thread of its own, with a time limit
//! ([`DEFAULT_HANDSHAKE_TIMEOUT`]) and caps on handshakes in progress (in total and per IP
//! address; past a cap an old one is dropped), so silent or slow peers cannot keep real
//! clients out;
//! its Unix sockets refuse processes of another uid (`SO_PEERCRED`) before the handshake.
//! [`Client::connect`] gives up after the same default time. The threat model is in
//! `docs/security.md`.
//!
//! # How it is fast
//!
//! A pipe end serializes straight into a shared-memory ring and the receiver spins briefly
//! before sleeping, so while both processes are busy a message costs no system call; the
//! socket pair under each pipe only carries wake-ups and end-of-file. See `local/mod.rs` and
//! `ring.rs` for the protocol, and `docs/python-mapping.md` for every Python name.

mod address;
#[cfg(feature = "async")]
mod asynch;
mod auth;
mod connection;
mod error;
pub mod handle;
mod listener;
mod local;
mod pass;
mod ring;
mod stream;
mod sys;
mod wait;

/// Fuzzing entry points (`fuzz/`, `tests/fuzz_corpus.rs`). Not API: hidden, may change in any
/// release.
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;

#[cfg(feature = "async")]
pub use asynch::ready;
pub use connection::{
    CanRecv, CanSend, Connection, Direction, Duplex, Ends, OneWay, Pipe, PipeKind, ReadOnly,
    Reader, Received, WriteOnly, Writer,
};
pub use error::{Error, Result};
pub use listener::{
    Address, Client, Listener, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_PENDING_HANDSHAKES,
    DEFAULT_MAX_PENDING_PER_PEER,
};
pub use local::{DEFAULT_RING_CAPACITY, MAX_RING_CAPACITY, MIN_RING_CAPACITY};
pub use stream::DEFAULT_MAX_MESSAGE_SIZE;
pub use wait::{wait, Waitable};
