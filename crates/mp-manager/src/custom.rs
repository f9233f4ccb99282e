//! Objects of the program's own types in the manager: Python's `BaseManager.register(typeid,
//! callable)`, typed.
//!
//! A type implements [`Served`] (one request type, one reply type, and `handle`) and is
//! registered under a name with [`ManagerBuilder::register`](crate::ManagerBuilder::register)
//! before the server starts. The server finds the type's constructor again under every start
//! method by the same checked function offset that `Process` uses for its target
//! ([`mp_process::symbol`]). Each call of a [`Custom`] proxy sends one request and returns
//! the reply; a panic in `handle` comes back as [`Error::Raised`](crate::Error::Raised) and
//! the object stays usable.

use std::marker::PhantomData;

use mp_core::message::{decode, encode};
use mp_core::rkyv::{Archive, Deserialize, Serialize};
use mp_core::util::panic_message;
use mp_core::Message;

use crate::error::{Error, Result};
use crate::proxy::Token;
use crate::wire::{Kind, Op, Refused, Reply};

/// A type whose values a manager can hold: it answers requests of one type with replies of
/// another. To report errors, make `Reply` a `Result`.
///
/// ```
/// use mp_manager::{Manager, Served};
///
/// #[derive(Default)]
/// struct Counter { n: u64 }
///
/// impl Served for Counter {
///     type Request = u64;   // add this much
///     type Reply = u64;     // the new total
///     fn handle(&mut self, add: u64) -> u64 {
///         self.n += add;
///         self.n
///     }
/// }
///
/// let manager = Manager::builder().register::<Counter>("Counter").start()?;
/// let c = manager.custom::<Counter>("Counter")?;
/// assert_eq!(c.call(&5)?, 5);
/// assert_eq!(c.call(&2)?, 7);
/// # Ok::<(), mp_manager::Error>(())
/// ```
pub trait Served: Send + 'static {
    /// What a proxy sends.
    type Request: Message;
    /// What the object answers.
    type Reply: Message;
    /// Answers one request (one at a time: the server holds the object's lock meanwhile).
    fn handle(&mut self, request: Self::Request) -> Self::Reply;
}

/// A [`Served`] value behind bytes, as the server holds it.
pub(crate) trait Erased: Send {
    fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, Refused>;
}

struct Holder<S>(S);

impl<S: Served> Erased for Holder<S> {
    fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, Refused> {
        let req = decode_bounded::<S::Request>(request)?;
        let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.handle(req)))
            .map_err(|p| Refused::Raised(panic_message(&*p)))?;
        encode(&reply)
            .map(|b| b.to_vec())
            .map_err(|e| Refused::Malformed(format!("reply: {e}")))
    }
}

/// How deeply a custom request may nest (boxes, vectors, strings inside each other): deep
/// enough for any real request, shallow enough that checking, deserializing and dropping
/// one (each recursive, a stack frame per level) fits the stack of a server thread.
pub(crate) const MAX_REQUEST_DEPTH: usize = 256;

/// Decodes a client's request like [`decode`], refusing one nested deeper than
/// [`MAX_REQUEST_DEPTH`] before recursing into it.
fn decode_bounded<T: Message>(bytes: &[u8]) -> Result<T, Refused> {
    use mp_core::rkyv::validation::Validator;
    use mp_core::rkyv::validation::{archive::ArchiveValidator, shared::SharedValidator};
    let malformed = |e: &dyn std::fmt::Display| Refused::Malformed(format!("request: {e}"));
    let mut aligned;
    let mut bytes = bytes;
    if !bytes.is_empty() && (bytes.as_ptr() as usize) % mp_core::message::ALIGN != 0 {
        aligned = mp_core::rkyv::util::AlignedVec::<{ mp_core::message::ALIGN }>::new();
        aligned.extend_from_slice(bytes);
        bytes = &aligned;
    }
    let mut validator = Validator::new(
        ArchiveValidator::with_max_depth(bytes, std::num::NonZeroUsize::new(MAX_REQUEST_DEPTH)),
        SharedValidator::new(),
    );
    let archived = mp_core::rkyv::api::access_with_context::<
        T::Archived,
        _,
        mp_core::message::Failure,
    >(bytes, &mut validator)
    .map_err(|e| malformed(&e))?;
    mp_core::message::deserialize::<T>(archived).map_err(|e| malformed(&e))
}

/// Makes a fresh object of a registered type: `make(arg)`, where `arg` is the address of the
/// registered constructor (0 for a type made with `Default`).
#[derive(Clone, Copy)]
pub(crate) struct Ctor {
    make: fn(usize) -> Box<dyn Erased>,
    arg: usize,
}

impl Ctor {
    /// The constructor of a type made with `S::default()` in this process (the fuzz
    /// harness's server; a real server resolves its constructors from [`Registration`]s).
    pub(crate) fn of_default<S: Served + Default>() -> Ctor {
        Ctor {
            make: make_default::<S>,
            arg: 0,
        }
    }

    /// A fresh object (the constructor may panic: the caller catches it).
    pub(crate) fn make(&self) -> Box<dyn Erased> {
        (self.make)(self.arg)
    }
}

fn make_default<S: Served + Default>(_: usize) -> Box<dyn Erased> {
    Box::new(Holder(S::default()))
}

fn make_with<S: Served>(f: usize) -> Box<dyn Erased> {
    // SAFETY: `f` comes from `Registration::resolve`, which resolved (and checked: same
    // build, same object) the offset that `Registration::with` took of a `fn() -> S`, and
    // pairs it only with `make_with::<S>` for the same `S` (both offsets travel together in
    // one `Registration`).
    let f = unsafe { std::mem::transmute::<usize, fn() -> S>(f) };
    Box::new(Holder(f()))
}

/// A registered type as it travels to the server: its name, its Rust type's name (checked
/// against every proxy's), the offset of the function that makes one and, for
/// [`ManagerBuilder::register_with`](crate::ManagerBuilder::register_with), the offset of the
/// program's constructor.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
#[rkyv(crate = mp_core::rkyv)]
pub(crate) struct Registration {
    pub(crate) typeid: String,
    pub(crate) type_name: String,
    make: i64,
    ctor: Option<i64>,
}

impl Registration {
    /// A type made with `S::default()`.
    pub(crate) fn of<S: Served + Default>(typeid: &str) -> Result<Registration> {
        let make = make_default::<S> as fn(usize) -> Box<dyn Erased> as usize;
        Self::new::<S>(typeid, make, None)
    }

    /// A type made by `ctor`, afresh for every object.
    pub(crate) fn with<S: Served>(typeid: &str, ctor: fn() -> S) -> Result<Registration> {
        let make = make_with::<S> as fn(usize) -> Box<dyn Erased> as usize;
        Self::new::<S>(typeid, make, Some(ctor as usize))
    }

    fn new<S: Served>(typeid: &str, make: usize, ctor: Option<usize>) -> Result<Registration> {
        let offset = |addr| {
            mp_process::symbol::offset_of(addr)
                .map_err(|e| Error::Start(format!("registering {typeid:?}: {e}")))
        };
        Ok(Registration {
            typeid: typeid.to_string(),
            type_name: std::any::type_name::<S>().to_string(),
            make: offset(make)?,
            ctor: ctor.map(offset).transpose()?,
        })
    }

    /// The constructor, in the server process.
    pub(crate) fn resolve(&self, image_id: &[u8]) -> Result<Ctor, String> {
        let resolve =
            |offset| mp_process::symbol::resolve(offset, image_id).map_err(|e| e.to_string());
        let make = resolve(self.make)?;
        let arg = self.ctor.map(resolve).transpose()?.unwrap_or(0);
        // SAFETY: `make` was computed by `Registration::of` or `Registration::with` from
        // `make_default::<S>` or `make_with::<S>`, both of type `fn(usize) -> Box<dyn Erased>`
        // (those are the only places that make a Registration; it reaches the server in the
        // arguments of its own start, over the private channel of mp-process, the same way as
        // the server's target does), and `resolve` checked that this process runs the same
        // build and that the address lies inside the same object. `arg` is what that function
        // expects: 0 (ignored by `make_default`) or the constructor `make_with` was paired with.
        let make = unsafe { std::mem::transmute::<usize, fn(usize) -> Box<dyn Erased>>(make) };
        Ok(Ctor { make, arg })
    }
}

/// A proxy for an object of a registered type `S` ([`Manager::custom`](crate::Manager::custom)).
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct Custom<S> {
    token: Token,
    typeid: String,
    _t: PhantomData<fn() -> S>,
}

impl<S> Clone for Custom<S> {
    fn clone(&self) -> Self {
        Custom {
            token: self.token.clone(),
            typeid: self.typeid.clone(),
            _t: PhantomData,
        }
    }
}

impl<S> std::fmt::Debug for Custom<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custom")
            .field("typeid", &self.typeid)
            .field("id", &self.token.id)
            .finish()
    }
}

impl<S: Served> Custom<S> {
    pub(crate) fn new(token: Token, typeid: String) -> Self {
        Custom {
            token,
            typeid,
            _t: PhantomData,
        }
    }

    /// Sends `request` to the object and returns its reply. A panic in the object's `handle`
    /// is [`Error::Raised`](crate::Error::Raised) (the object stays usable).
    pub fn call(&self, request: &S::Request) -> Result<S::Reply> {
        let bytes = encode(request)?.to_vec();
        let op = Op::CustomCall(std::any::type_name::<S>().to_string(), bytes);
        match self.token.call(Kind::Custom, op)? {
            Reply::Bytes(b) => decode::<S::Reply>(&b)
                .map_err(|e| Error::Malformed(format!("a reply of {:?}: {e}", self.typeid))),
            r => Err(Error::Malformed(format!("unexpected reply {}", r.name()))),
        }
    }
}
