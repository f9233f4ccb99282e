//! What travels between the pool and its workers, and the per-worker slot in shared memory.
//!
//! * The parent puts [`TaskMsg`]s (one per chunk) on the shared task queue; any idle worker
//!   takes the next one. Each names its function by two offsets (a trampoline monomorphized
//!   for the task's types, and the user's function; see `mp_process::symbol`) and carries the
//!   chunk's items as one encoded `Vec<T>`.
//! * Workers put [`ResultMsg`]s (one per chunk: the encoded `Vec<R>`, or an error) on the
//!   shared result queue, which the parent's supervisor thread drains.
//! * Each worker has a [`Slot`]: which task it runs. The slot is written *while the task
//!   message is being taken from the queue*: mp-queue decodes a message under its consumer
//!   lock and removes it only once decoding returned, and [`Claim`]'s deserializer is part of
//!   that decoding. So a worker killed at any point either left the message in the queue (the
//!   slot is not `RUNNING` yet, or the kill came between the slot store and the removal, see
//!   below) or has the task in its slot; the supervisor fails the task in the slot of a dead
//!   worker with `WorkerLost`. In the narrow window between the slot store and the removal
//!   the task is both failed and left in the queue: another worker runs it and its result is
//!   ignored (the task was already answered).

use mp_core::message::SliceAsVec;
use mp_core::message::ALIGN;
use rkyv::munge::munge;
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer, WriterExt};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::util::AlignedVec;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Deserialize, Place, Serialize, SerializeUnsized};

pub(crate) use crate::slot::{set_claim_slot, Claim, ClaimResolver, Slot};

/// Encoded bytes (an archive) that keep their 16-byte alignment when received: archived as a
/// byte vector, deserialized into an aligned buffer so that it can be accessed in place.
#[derive(Debug, Default)]
pub(crate) struct Payload(pub(crate) AlignedVec<ALIGN>);

impl Archive for Payload {
    type Archived = ArchivedVec<u8>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::<u8>::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<S> Serialize<S> for Payload
where
    S: Fallible + Allocator + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::<u8>::serialize_from_slice(self.0.as_slice(), serializer)
    }
}

impl<D: Fallible + ?Sized> Deserialize<Payload, D> for ArchivedVec<u8> {
    fn deserialize(&self, _: &mut D) -> Result<Payload, D::Error> {
        let mut v = AlignedVec::<ALIGN>::with_capacity(self.len());
        v.extend_from_slice(self.as_slice());
        Ok(Payload(v))
    }
}

/// A chunk of work (or, with `job == 0`, the order to stop).
#[derive(Debug, Archive, Serialize, Deserialize)]
pub(crate) struct TaskMsg {
    /// The encoded `Vec<T>` of the chunk's items. First, so that it sits at the start of the
    /// archive (16-aligned in the ring).
    pub(crate) payload: Payload,
    pub(crate) claim: Claim,
    /// Offset of the trampoline (`worker::run_chunk::<C>`).
    pub(crate) trampoline: i64,
    /// Offset of the user's function, or with `raw`, the address of a closure in a forked
    /// worker's copy of the parent's memory.
    pub(crate) target: i64,
    pub(crate) raw: bool,
}

impl TaskMsg {
    /// The message that tells one worker to exit.
    pub(crate) fn stop() -> TaskMsg {
        TaskMsg {
            payload: Payload::default(),
            claim: Claim {
                job: 0,
                chunk: 0,
                first: 0,
                timeout_ns: 0,
            },
            trampoline: 0,
            target: 0,
            raw: false,
        }
    }
}

/// What a [`ResultMsg`] reports: its `kind` field, as a `u32` on the wire.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `payload` is the encoded `Vec<R>`.
    Ok = 0,
    /// A task panicked; `message` is the panic message.
    Panicked = 1,
    /// A fallible task returned `Err`; `message` is its `Display`.
    Failed = 2,
    /// The result could not be serialized.
    ResultUnserializable = 3,
    /// The arguments could not be decoded (or the function could not be found).
    ArgsUndecodable = 4,
    /// The worker's initializer failed; the worker exits.
    InitFailed = 5,
    /// Put by the parent itself to wake the supervisor.
    Wake = 6,
    /// The worker's initializer completed (sent only when there is one).
    InitOk = 7,
    /// The worker could not read a task from the task queue (it was skipped); `message`
    /// says why.
    TaskUnreadable = 8,
    /// The result could not be stored: the result queue's shared memory could not grow.
    ResultNoSpace = 9,
}

/// A `kind` code that no [`Kind`] has: the peer is not a worker of this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnknownKind(pub(crate) u32);

impl From<Kind> for u32 {
    fn from(k: Kind) -> u32 {
        k as u32
    }
}

impl TryFrom<u32> for Kind {
    type Error = UnknownKind;

    fn try_from(code: u32) -> Result<Kind, UnknownKind> {
        Ok(match code {
            0 => Kind::Ok,
            1 => Kind::Panicked,
            2 => Kind::Failed,
            3 => Kind::ResultUnserializable,
            4 => Kind::ArgsUndecodable,
            5 => Kind::InitFailed,
            6 => Kind::Wake,
            7 => Kind::InitOk,
            8 => Kind::TaskUnreadable,
            9 => Kind::ResultNoSpace,
            _ => return Err(UnknownKind(code)),
        })
    }
}

/// A chunk's outcome, from a worker to the supervisor.
#[derive(Debug, Archive, Serialize, Deserialize)]
pub(crate) struct ResultMsg {
    /// The encoded `Vec<R>` (kind OK). First, so that it is 16-aligned in the ring.
    pub(crate) payload: Payload,
    pub(crate) job: u64,
    pub(crate) chunk: u64,
    /// A [`Kind`] code.
    pub(crate) kind: u32,
    pub(crate) pid: u32,
    pub(crate) message: String,
    /// Where a task panicked (`file:line:column`), or empty.
    pub(crate) location: String,
}

/// A chunk's items (or results) as a standalone archive of `Vec<T>` nested in a message,
/// written in the same pass as the message, straight from a borrowed slice. It archives as
/// [`Payload`] does (the bytes of an archive, in an `ArchivedVec<u8>`), so the receiver cannot
/// tell the two apart.
///
/// The nested archive starts at a 16-aligned position of the message, which starts 16-aligned
/// itself: read in place, it is aligned as a standalone archive would be (and its relative
/// pointers do not depend on where it starts). It ends with its root, as `access` expects.
pub(crate) struct NestedArchive<'a, T>(pub(crate) &'a [T]);

/// Where a [`NestedArchive`] archive was written: its start and length.
pub(crate) struct NestedArchiveResolver {
    pos: usize,
    len: usize,
}

impl<T> Archive for NestedArchive<'_, T> {
    type Archived = ArchivedVec<u8>;
    type Resolver = NestedArchiveResolver;

    fn resolve(&self, r: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::<u8>::resolve_from_len(r.len, VecResolver::from_pos(r.pos), out);
    }
}

impl<T, S> Serialize<S> for NestedArchive<'_, T>
where
    T: Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, s: &mut S) -> Result<Self::Resolver, S::Error> {
        let pos = s.align(ALIGN)?;
        SliceAsVec(self.0).serialize_unsized(s)?;
        Ok(NestedArchiveResolver {
            pos,
            len: s.pos() - pos,
        })
    }
}

/// A chunk of work written straight from the caller's items: archives exactly as
/// [`TaskMsg`] (the workers receive a `TaskMsg`).
pub(crate) struct TaskRef<'a, T> {
    pub(crate) items: NestedArchive<'a, T>,
    pub(crate) claim: Claim,
    pub(crate) trampoline: i64,
    pub(crate) target: i64,
    pub(crate) raw: bool,
}

impl<T> Archive for TaskRef<'_, T> {
    type Archived = ArchivedTaskMsg;
    type Resolver = (NestedArchiveResolver, ClaimResolver);

    fn resolve(&self, (items, c): Self::Resolver, out: Place<Self::Archived>) {
        munge!(let ArchivedTaskMsg { payload, claim, trampoline, target, raw } = out);
        self.items.resolve(items, payload);
        self.claim.resolve(c, claim);
        self.trampoline.resolve((), trampoline);
        self.target.resolve((), target);
        self.raw.resolve((), raw);
    }
}

impl<T, S> Serialize<S> for TaskRef<'_, T>
where
    T: Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, s: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok((self.items.serialize(s)?, self.claim.serialize(s)?))
    }
}

/// A chunk's successful results written straight from the worker's `Vec<R>`: archives
/// exactly as a [`ResultMsg`] of kind [`Kind::Ok`] with empty message and location.
pub(crate) struct OkRef<'a, R> {
    pub(crate) results: NestedArchive<'a, R>,
    pub(crate) job: u64,
    pub(crate) chunk: u64,
    pub(crate) pid: u32,
}

impl<R> Archive for OkRef<'_, R> {
    type Archived = ArchivedResultMsg;
    type Resolver = (NestedArchiveResolver, StringResolver, StringResolver);

    fn resolve(&self, (items, m, l): Self::Resolver, out: Place<Self::Archived>) {
        munge!(let ArchivedResultMsg { payload, job, chunk, kind, pid, message, location } = out);
        self.results.resolve(items, payload);
        self.job.resolve((), job);
        self.chunk.resolve((), chunk);
        u32::from(Kind::Ok).resolve((), kind);
        self.pid.resolve((), pid);
        ArchivedString::resolve_from_str("", m, message);
        ArchivedString::resolve_from_str("", l, location);
    }
}

impl<R, S> Serialize<S> for OkRef<'_, R>
where
    R: Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, s: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok((
            self.results.serialize(s)?,
            ArchivedString::serialize_from_str("", s)?,
            ArchivedString::serialize_from_str("", s)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind goes through its code and back; a code no kind has is an error.
    #[test]
    fn kinds_round_trip_through_their_codes() {
        for code in 0..10 {
            let k = Kind::try_from(code).unwrap();
            assert_eq!(u32::from(k), code);
        }
        assert_eq!(Kind::try_from(10), Err(UnknownKind(10)));
        assert_eq!(Kind::try_from(u32::MAX), Err(UnknownKind(u32::MAX)));
    }

    /// A `TaskRef` is received as a `TaskMsg` whose payload is a standalone archive of the
    /// items, 16-aligned in place (items with out-of-line data too, and none at all).
    #[test]
    fn borrowed_messages_are_received_as_owned_ones() {
        use mp_core::message::{access, decode, encode};
        fn check<T: mp_core::Message + PartialEq + std::fmt::Debug>(items: &[T]) {
            let t = TaskRef {
                items: NestedArchive(items),
                claim: Claim {
                    job: 7,
                    chunk: 9,
                    first: 63,
                    timeout_ns: 5,
                },
                trampoline: -3,
                target: 1 << 40,
                raw: true,
            };
            let bytes = encode(&t).unwrap();
            let a = access::<TaskMsg>(&bytes).unwrap();
            assert_eq!((a.claim.job.to_native(), a.claim.chunk.to_native()), (7, 9));
            assert_eq!(
                (a.claim.first.to_native(), a.claim.timeout_ns.to_native()),
                (63, 5)
            );
            assert_eq!(
                (a.trampoline.to_native(), a.target.to_native(), a.raw),
                (-3, 1 << 40, true)
            );
            let p = a.payload.as_slice();
            assert_eq!(p.as_ptr() as usize % ALIGN, 0);
            assert_eq!(decode::<Vec<T>>(p).unwrap(), items);
            let m = decode::<TaskMsg>(&bytes).unwrap();
            assert_eq!(decode::<Vec<T>>(&m.payload.0).unwrap(), items);

            let r = OkRef {
                results: NestedArchive(items),
                job: 5,
                chunk: 6,
                pid: 42,
            };
            let bytes = encode(&r).unwrap();
            let a = access::<ResultMsg>(&bytes).unwrap();
            assert_eq!((a.job.to_native(), a.chunk.to_native()), (5, 6));
            assert_eq!(
                (a.kind.to_native(), a.pid.to_native()),
                (u32::from(Kind::Ok), 42)
            );
            assert!(a.message.is_empty() && a.location.is_empty());
            assert_eq!(a.payload.as_slice().as_ptr() as usize % ALIGN, 0);
            assert_eq!(decode::<Vec<T>>(a.payload.as_slice()).unwrap(), items);
        }
        let v: Vec<u64> = (0..1000).collect();
        check(&v[10..20]);
        check::<u8>(&[]);
        check(&[3u8]);
        let s: Vec<String> = (0..50).map(|i| "x".repeat(i * 10)).collect();
        check(&s);
        check(&[(1u16, String::from("a"), vec![1.5f64])]);
    }
}
