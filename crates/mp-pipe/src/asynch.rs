//! `async` receive and send (cargo feature `async`): a connection awaited on any runtime, with
//! no task spinning and no thread parked per waiting future.
//!
//! A waiting future sleeps on the connection's descriptor in mp-core's descriptor reactor
//! ([`mp_core::readable`]): for a pipe end, the receiver (or a sender waiting for room) arms its
//! side of the ring exactly as a blocking wait does, so that the peer's next message (or the
//! room it makes) sends a wake-up token to the socket; a socket connection waits for its
//! socket. A peer that dies closes its end of the socket, which wakes the future too: the
//! receive then reports [`Error::Eof`] (after every message the peer sent) and a send
//! [`Error::BrokenPipe`].
//!
//! Dropping a future loses nothing: a message is taken from the connection only in the poll
//! that returns it, never across an await.
//!
//! What still blocks, briefly: a message larger than half a pipe's ring is sent and received in
//! fragments, and once its first fragment is there the rest is awaited as in the blocking call
//! (the peer is writing or reading it at that moment); on a socket connection, a frame that has
//! begun to arrive is read to its end, and a frame is written once the socket takes data.

use std::os::fd::AsRawFd;

use mp_core::message;
use mp_core::readable::{readable, writable};
use mp_core::Message;

use crate::connection::{CanRecv, CanSend, Connection, Transport};
use crate::error::{Error, Result};
use crate::wait::Waitable;

/// Calls `finish_wait` (or another undo) when dropped: a future cancelled while armed disarms.
struct Undo<F: FnMut()>(F);

impl<F: FnMut()> Drop for Undo<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

fn reactor_error(e: std::io::Error) -> Error {
    Error::io("register with the async reactor", e)
}

/// Resolves when `object` is ready: [`wait`](crate::wait) for one object, as a future. A
/// connection is ready when a message or end-of-file is waiting, a listener when a client is,
/// a process sentinel when the process has ended, any other descriptor when it is readable.
pub async fn ready<W: Waitable + ?Sized>(object: &W) -> Result<()> {
    loop {
        if object.prepare_wait()? {
            object.finish_wait();
            return Ok(());
        }
        let undo = Undo(|| object.finish_wait());
        readable(object.wait_fd().as_raw_fd())
            .await
            .map_err(reactor_error)?;
        let confirmed = object.confirm_wait();
        drop(undo);
        if confirmed? {
            return Ok(());
        }
    }
}

impl<T: Message, D: CanRecv> Connection<T, D> {
    /// [`recv`](Connection::recv) as a future: resolves with the next value, or
    /// [`Error::Eof`] once the peer is gone and every message it sent has been received.
    ///
    /// ```
    /// # fn main() -> mp_pipe::Result<()> {
    /// use mp_pipe::{Duplex, Pipe};
    /// let (a, b) = Pipe::<u64>::new(Duplex)?;
    /// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// rt.block_on(async {
    ///     a.send_async(&7).await?;
    ///     assert_eq!(b.recv_async().await?, 7);
    ///     Ok(())
    /// })
    /// # }
    /// ```
    pub async fn recv_async(&self) -> Result<T> {
        ready(self).await?;
        self.recv()
    }
}

impl<T: Message, D: CanSend> Connection<T, D> {
    /// [`send`](Connection::send) as a future: waits (without blocking the thread) while the
    /// peer's ring is full; [`Error::BrokenPipe`] when the peer's end is gone.
    pub async fn send_async(&self, value: &T) -> Result<()> {
        // A pipe end with room takes the value straight into its ring, as `send` does; only
        // a value that does not fit now is encoded aside, to wait for room.
        let bytes = match &self.t {
            Transport::Local(l) => match l.send_in_place(value)? {
                Ok(()) => return Ok(()),
                Err(bytes) => bytes,
            },
            Transport::Stream(_) => message::encode(value)?,
        };
        self.send_bytes_async(&bytes).await
    }
}

impl<T, D: CanSend> Connection<T, D> {
    /// [`send_bytes`](Connection::send_bytes) of a whole buffer as a future.
    pub async fn send_bytes_async(&self, bytes: &[u8]) -> Result<()> {
        match &self.t {
            Transport::Local(l) => loop {
                if l.prepare_send(bytes.len())? {
                    l.finish_send();
                    return l.send_raw(bytes);
                }
                let undo = Undo(|| l.finish_send());
                readable(self.as_raw_fd()).await.map_err(reactor_error)?;
                drop(undo);
            },
            Transport::Stream(s) => {
                writable(self.as_raw_fd()).await.map_err(reactor_error)?;
                s.send_raw(bytes)
            }
        }
    }
}

impl<T, D: CanRecv> Connection<T, D> {
    /// [`recv_bytes`](Connection::recv_bytes) as a future.
    pub async fn recv_bytes_async(&self, max: Option<usize>) -> Result<Vec<u8>> {
        ready(self).await?;
        self.recv_bytes(max)
    }
}
