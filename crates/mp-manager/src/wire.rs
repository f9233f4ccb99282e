//! What a proxy and the server say to each other: one [`Request`] frame, one [`Reply`] frame,
//! both rkyv archives sent as byte messages over an authenticated [`mp_pipe::Connection`].
//! Values travel as the archived bytes of their Rust type: the server stores and compares
//! bytes and never needs the types; the proxy decodes (with validation) what comes back.

use mp_core::rkyv::{Archive, Deserialize, Serialize};

/// The kinds of object a manager holds.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = mp_core::rkyv)]
pub enum Kind {
    /// [`crate::Dict`]
    Dict,
    /// [`crate::List`]
    List,
    /// [`crate::Namespace`]
    Namespace,
    /// [`crate::Value`]
    Value,
    /// [`crate::Queue`]
    Queue,
    /// [`crate::Lock`]
    Lock,
    /// [`crate::Event`]
    Event,
    /// [`crate::RLock`]
    RLock,
    /// [`crate::Semaphore`]
    Semaphore,
    /// [`crate::BoundedSemaphore`]
    BoundedSemaphore,
    /// [`crate::Condition`]
    Condition,
    /// [`crate::Barrier`]
    Barrier,
    /// [`crate::Custom`]: an object of a registered type.
    Custom,
    /// [`crate::Array`]
    Array,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Bytes of one archived value.
pub(crate) type Bytes = Vec<u8>;

/// A timeout in milliseconds (`None`: wait for ever).
pub(crate) type Millis = Option<u64>;

#[derive(Archive, Serialize, Deserialize, Debug)]
#[rkyv(crate = mp_core::rkyv)]
pub(crate) enum Request {
    /// A new object (or, with a name, the object of that name, made on first use).
    Create {
        kind: Kind,
        name: Option<String>,
        /// A `Value`'s first value; an `Array`'s items (an archived `Vec<Vec<u8>>`); a
        /// `Queue`'s maxsize, a semaphore's value or a barrier's parties as 8 little-endian
        /// bytes.
        init: Bytes,
    },
    /// An operation on object `id`, which must be of kind `kind`.
    Call { id: u64, kind: Kind, op: Op },
    /// A new object of a registered type (or, with a name, the object of that name).
    CreateCustom {
        typeid: String,
        /// The proxy's Rust type name, checked against the registered one.
        type_name: String,
        name: Option<String>,
    },
    /// Stop the server (its process exits once it has answered).
    Shutdown,
    /// This connection lets go of object `id` (no reply: a proxy's `Drop` does not wait).
    Release { id: u64 },
    /// A ticket holding `ids` for another process (a proxy being serialized, or the proxies
    /// a forked child copies), owned by this connection until redeemed.
    Ticket { ids: Vec<u64> },
    /// This connection takes over ticket `ticket` (0: none) and holds each of `ids` that is
    /// still alive; the reply lists the ids it now holds.
    Redeem { ticket: u64, ids: Vec<u64> },
    /// How many objects the server holds (Python's `_number_of_objects`).
    ObjectCount,
    /// The name is forgotten; its object then lives as long as its proxies.
    Unname { name: String },
    /// This connection moves to shared memory: the server answers `Unit`, then sends the
    /// client's end of a new pipe through the socket (`Connection::send_connection`), and
    /// serves it instead of the socket from then on. Only on a Unix address.
    Upgrade,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
#[rkyv(crate = mp_core::rkyv)]
pub(crate) enum Op {
    Len,
    Clear,
    DictGet(Bytes),
    DictSet(Bytes, Bytes),
    DictPop(Bytes),
    DictContains(Bytes),
    DictItems,
    ListAppend(Bytes),
    ListExtend(Vec<Bytes>),
    ListGet(i64),
    ListSet(i64, Bytes),
    ListPop(i64),
    ListItems,
    NsGet(String),
    NsSet(String, Bytes),
    NsDel(String),
    NsNames,
    ValueGet,
    ValueSet(Bytes),
    QueuePut(Bytes, Millis),
    QueueGet(Millis),
    Acquire(Millis),
    Release,
    EventSet,
    EventClear,
    EventIsSet,
    EventWait(Millis),
    /// A semaphore's current value.
    SemValue,
    CondWait(Millis),
    CondNotify(u64),
    BarrierWait(Millis),
    BarrierAbort,
    BarrierReset,
    /// `(parties, n_waiting, broken)`.
    BarrierState,
    /// A request to a custom object, with the proxy's Rust type name.
    CustomCall(String, Bytes),
}

impl Op {
    /// The operation's name, without its payload: what an error message may show (a
    /// payload can be megabytes, and is the client's data).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Len => "Len",
            Op::Clear => "Clear",
            Op::DictGet(..) => "DictGet",
            Op::DictSet(..) => "DictSet",
            Op::DictPop(..) => "DictPop",
            Op::DictContains(..) => "DictContains",
            Op::DictItems => "DictItems",
            Op::ListAppend(..) => "ListAppend",
            Op::ListExtend(..) => "ListExtend",
            Op::ListGet(..) => "ListGet",
            Op::ListSet(..) => "ListSet",
            Op::ListPop(..) => "ListPop",
            Op::ListItems => "ListItems",
            Op::NsGet(..) => "NsGet",
            Op::NsSet(..) => "NsSet",
            Op::NsDel(..) => "NsDel",
            Op::NsNames => "NsNames",
            Op::ValueGet => "ValueGet",
            Op::ValueSet(..) => "ValueSet",
            Op::QueuePut(..) => "QueuePut",
            Op::QueueGet(..) => "QueueGet",
            Op::Acquire(..) => "Acquire",
            Op::Release => "Release",
            Op::EventSet => "EventSet",
            Op::EventClear => "EventClear",
            Op::EventIsSet => "EventIsSet",
            Op::EventWait(..) => "EventWait",
            Op::SemValue => "SemValue",
            Op::CondWait(..) => "CondWait",
            Op::CondNotify(..) => "CondNotify",
            Op::BarrierWait(..) => "BarrierWait",
            Op::BarrierAbort => "BarrierAbort",
            Op::BarrierReset => "BarrierReset",
            Op::BarrierState => "BarrierState",
            Op::CustomCall(..) => "CustomCall",
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug)]
#[rkyv(crate = mp_core::rkyv)]
pub(crate) enum Reply {
    Unit,
    Created(u64),
    Bool(bool),
    Len(u64),
    Bytes(Bytes),
    MaybeBytes(Option<Bytes>),
    Items(Vec<Bytes>),
    Pairs(Vec<(Bytes, Bytes)>),
    Names(Vec<String>),
    BarrierState(u64, u64, bool),
    Ticket(u64),
    Ids(Vec<u64>),
    Err(Refused),
}

impl Reply {
    /// The reply's kind, without its payload: what an error message may show.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Reply::Unit => "Unit",
            Reply::Created(..) => "Created",
            Reply::Bool(..) => "Bool",
            Reply::Len(..) => "Len",
            Reply::Bytes(..) => "Bytes",
            Reply::MaybeBytes(..) => "MaybeBytes",
            Reply::Items(..) => "Items",
            Reply::Pairs(..) => "Pairs",
            Reply::Names(..) => "Names",
            Reply::BarrierState(..) => "BarrierState",
            Reply::Ticket(..) => "Ticket",
            Reply::Ids(..) => "Ids",
            Reply::Err(..) => "Err",
        }
    }
}

/// Why the server refused an operation (the error the held object raised, in Python terms).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = mp_core::rkyv)]
pub(crate) enum Refused {
    KeyError,
    IndexError {
        index: i64,
        len: u64,
    },
    AttributeError(String),
    Empty,
    Full,
    NotLocked,
    NotOwner,
    TooManyReleases,
    BrokenBarrier,
    NoSuchObject(u64),
    WrongKind {
        expected: Kind,
        found: Kind,
    },
    UnknownType(String),
    WrongType {
        expected: String,
        found: String,
    },
    Raised(String),
    Malformed(String),
    /// A count would pass its largest value (what overflowed).
    Overflow(String),
    /// The server serves this many connections already.
    TooManyConnections(u64),
}
