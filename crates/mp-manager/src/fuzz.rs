//! Fuzzing entry points. **Not API**: hidden from the docs, exempt from semver, and may change
//! or go away in any release.
//!
//! `manager_wire` feeds untrusted frames to both directions of the manager's wire: the
//! server's request decoder and its dispatch (driven without a socket, as several
//! connections), and the client's reply decoder. The only failure is a panic, an abort, a hang
//! or undefined behaviour. The `cargo fuzz` target `fuzz/fuzz_targets/manager_wire.rs` calls
//! it, and `tests/fuzz_corpus.rs` replays the stored corpus through it on stable. `seeds`
//! makes valid inputs for the corpus from real encoded requests and replies. See
//! `docs/reliability.md`, "Fuzzing".

use mp_core::message::{decode, encode};

use crate::custom::{Ctor, Served};
use crate::server::{Dispatch, Types};
use crate::wire::{Kind, Op, Refused, Reply, Request};
use crate::Error;

/// The largest input the harness looks at.
pub const MAX_INPUT: usize = 64 * 1024;

/// At most this many frames per input.
pub const MAX_FRAMES: usize = 256;

/// The registered type of the harness's server: answers with the total length of the
/// strings it was sent.
#[derive(Default)]
struct Echo {
    total: u64,
}

impl Served for Echo {
    type Request = Vec<String>;
    type Reply = u64;
    fn handle(&mut self, request: Vec<String>) -> u64 {
        let n: usize = request.iter().map(String::len).sum();
        self.total = self.total.wrapping_add(n as u64);
        self.total
    }
}

/// The type id the harness registers its custom type (`Echo`) under.
pub const ECHO: &str = "Echo";

/// What [`manager_wire`] did with its input: frames decoded as requests and as replies.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Requests that decoded (and were dispatched).
    pub requests: usize,
    /// Requests the server answered with something other than an error.
    pub served: usize,
    /// Replies that decoded.
    pub replies: usize,
}

/// Both directions of the manager's wire fed hostile frames. `bytes` is a list of frames,
/// each a selector byte, a u16 little-endian length and that many bytes. The selector's bit 4
/// picks the direction: clear, the frame is a request that the server decodes as it does a
/// connection's (`decode::<Request>`) and answers as connection `sel & 3` (its timeouts cut to
/// zero, so that nothing waits: a real connection's wait blocks only its own thread), acting
/// as if the reply could not be sent when bit 2 is set (an item a `get` took goes back);
/// every reply is encoded and must decode again. Set, the frame is a reply that a proxy
/// decodes (`decode::<Reply>`), turns into its error, and whose payload it decodes as a
/// value. Bit 3 closes connection `sel & 3` afterwards: the server releases what it held. A
/// `Shutdown` request ends the input.
pub fn manager_wire(bytes: &[u8]) -> Outcome {
    let mut types = Types::new();
    types.insert(
        ECHO.to_string(),
        (
            std::any::type_name::<Echo>().to_string(),
            Ctor::of_default::<Echo>(),
        ),
    );
    let server = Dispatch::new(types);
    let mut out = Outcome::default();
    let mut rest = &bytes[..bytes.len().min(MAX_INPUT)];
    for _ in 0..MAX_FRAMES {
        let [sel, a, b, tail @ ..] = rest else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        let conn = u64::from(sel & 3);
        if sel & 0x10 != 0 {
            out.replies += usize::from(client_reply(frame));
        } else if let Ok(mut req) = decode::<Request>(frame) {
            out.requests += 1;
            cut_timeouts(&mut req);
            let (reply, stop) = server.answer(conn, req, sel & 4 != 0);
            if let Some(reply) = reply {
                out.served += usize::from(!matches!(reply, Reply::Err(_)));
                let wire = encode(&reply).map(|b| b.to_vec());
                let again = wire.map(|w| decode::<Reply>(&w).map(|r| r.name()));
                assert!(
                    matches!(again, Ok(Ok(name)) if name == reply.name()),
                    "a reply the server made does not decode again"
                );
            }
            if stop {
                break;
            }
        }
        if sel & 8 != 0 {
            server.close(conn);
        }
    }
    out
}

/// Sets every timeout of `req` to zero.
fn cut_timeouts(req: &mut Request) {
    if let Request::Call {
        op:
            Op::QueuePut(_, ms)
            | Op::QueueGet(ms)
            | Op::Acquire(ms)
            | Op::EventWait(ms)
            | Op::CondWait(ms)
            | Op::BarrierWait(ms),
        ..
    } = req
    {
        *ms = Some(0);
    }
}

/// What a proxy does with a reply frame: decodes it, turns a refusal into its error (and its
/// message), and decodes the payload of the others as a value. True when the frame decoded.
fn client_reply(frame: &[u8]) -> bool {
    let Ok(reply) = decode::<Reply>(frame) else {
        return false;
    };
    let value = |b: &[u8]| decode::<(u32, String)>(b).is_ok();
    match &reply {
        Reply::Err(r) => {
            std::hint::black_box(Error::from(r.clone()).to_string());
        }
        Reply::Bytes(b) | Reply::MaybeBytes(Some(b)) => {
            std::hint::black_box(value(b));
        }
        Reply::Items(v) => {
            std::hint::black_box(v.iter().filter(|b| value(b)).count());
        }
        Reply::Pairs(v) => {
            std::hint::black_box(v.iter().filter(|(k, b)| value(k) && value(b)).count());
        }
        _ => {}
    }
    std::hint::black_box(reply.name());
    true
}

/// One frame of [`manager_wire`]'s input.
fn frame(sel: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![sel];
    v.extend_from_slice(&(bytes.len().min(u16::MAX as usize) as u16).to_le_bytes());
    v.extend_from_slice(&bytes[..bytes.len().min(u16::MAX as usize)]);
    v
}

/// An archived value, as a proxy sends it.
fn value<T: mp_core::Message>(v: &T) -> Vec<u8> {
    encode(v).map(|b| b.to_vec()).unwrap_or_default()
}

/// The real requests of a session of two connections over every kind of object (their ids
/// are 1, 2, ... in the order they are made).
fn session() -> Vec<(u8, Request)> {
    let call = |id: u64, kind: Kind, op: Op| Request::Call { id, kind, op };
    let create = |kind: Kind, name: Option<&str>, init: Vec<u8>| Request::Create {
        kind,
        name: name.map(str::to_string),
        init,
    };
    let key = value(&(1u32, "key".to_string()));
    let val = value(&(2u32, "value".to_string()));
    vec![
        (0, create(Kind::Dict, Some("d"), vec![])),
        (
            0,
            call(1, Kind::Dict, Op::DictSet(key.clone(), val.clone())),
        ),
        (1, call(1, Kind::Dict, Op::DictGet(key.clone()))),
        (1, call(1, Kind::Dict, Op::DictItems)),
        (0, create(Kind::List, None, vec![])),
        (
            0,
            call(2, Kind::List, Op::ListExtend(vec![key.clone(), val])),
        ),
        (1, call(2, Kind::List, Op::ListGet(-1))),
        (1, call(2, Kind::List, Op::ListSet(i64::MIN, key.clone()))),
        (0, create(Kind::Lock, None, vec![])),
        (0, call(3, Kind::Lock, Op::Acquire(None))),
        (1, call(3, Kind::Lock, Op::Acquire(Some(100)))),
        (1, call(3, Kind::Lock, Op::Release)),
        (0, create(Kind::Queue, None, 1u64.to_le_bytes().to_vec())),
        (1, call(4, Kind::Queue, Op::QueuePut(key.clone(), None))),
        (1, call(4, Kind::Queue, Op::QueuePut(key.clone(), Some(5)))),
        (4, call(4, Kind::Queue, Op::QueueGet(None))),
        (0, call(4, Kind::Queue, Op::QueueGet(Some(1)))),
        (0, create(Kind::Condition, None, vec![])),
        (1, call(5, Kind::Condition, Op::Acquire(None))),
        (1, call(5, Kind::Condition, Op::CondWait(Some(1)))),
        (0, call(5, Kind::Condition, Op::CondNotify(1))),
        (0, create(Kind::Barrier, None, 2u64.to_le_bytes().to_vec())),
        (1, call(6, Kind::Barrier, Op::BarrierWait(None))),
        (0, call(6, Kind::Barrier, Op::BarrierState)),
        (
            0,
            Request::CreateCustom {
                typeid: ECHO.to_string(),
                type_name: std::any::type_name::<Echo>().to_string(),
                name: Some("e".to_string()),
            },
        ),
        (
            1,
            call(
                7,
                Kind::Custom,
                Op::CustomCall(
                    std::any::type_name::<Echo>().to_string(),
                    value(&vec!["abc".to_string()]),
                ),
            ),
        ),
        (0, create(Kind::Namespace, None, vec![])),
        (0, call(8, Kind::Namespace, Op::NsSet("x".into(), key))),
        (1, call(8, Kind::Namespace, Op::NsNames)),
        (
            0,
            create(Kind::BoundedSemaphore, None, 1u64.to_le_bytes().to_vec()),
        ),
        (1, call(9, Kind::BoundedSemaphore, Op::Release)),
        (2, call(99, Kind::Event, Op::EventSet)),
    ]
}

/// Valid inputs for the corpus, as `("manager_wire", bytes)`: a real session of requests
/// (with a connection closed holding a lock, and a `get` whose reply was not sent), every
/// kind of reply, and a shutdown.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut s = Vec::new();
    for (sel, req) in session() {
        s.extend(frame(sel, &value(&req)));
    }
    s.extend(frame(8, &value(&Request::Shutdown)));
    out.push(("manager_wire", s));
    let key = value(&(1u32, "key".to_string()));
    let replies = [
        Reply::Unit,
        Reply::Created(7),
        Reply::Bool(true),
        Reply::Len(3),
        Reply::Bytes(key.clone()),
        Reply::MaybeBytes(None),
        Reply::Items(vec![key.clone(), vec![1, 2, 3]]),
        Reply::Pairs(vec![(key.clone(), key)]),
        Reply::Names(vec!["x".into()]),
        Reply::BarrierState(3, 1, false),
        Reply::Err(Refused::IndexError { index: -4, len: 2 }),
        Reply::Err(Refused::WrongKind {
            expected: Kind::Dict,
            found: Kind::Lock,
        }),
        Reply::Err(Refused::TooManyConnections(1024)),
    ];
    let mut r = Vec::new();
    for reply in &replies {
        r.extend(frame(0x10, &value(reply)));
    }
    out.push(("manager_wire", r));
    // A lock taken, its connection closed, the lock taken by another.
    let lock = [
        (
            0,
            value(&Request::Create {
                kind: Kind::RLock,
                name: Some("r".into()),
                init: vec![],
            }),
        ),
        (
            8,
            value(&Request::Call {
                id: 1,
                kind: Kind::RLock,
                op: Op::Acquire(None),
            }),
        ),
        (
            1,
            value(&Request::Call {
                id: 1,
                kind: Kind::RLock,
                op: Op::Acquire(None),
            }),
        ),
    ];
    let mut l = Vec::new();
    for (sel, b) in lock {
        l.extend(frame(sel, &b));
    }
    out.push(("manager_wire", l));
    // Object lifetime: a dict made by connection 0, a ticket for it redeemed by connection 1,
    // released by 0, counted, then a named one made and unnamed; closing 1 frees the dict.
    let life = [
        Request::Create {
            kind: Kind::Dict,
            name: None,
            init: vec![],
        },
        Request::Ticket { ids: vec![1] },
        Request::Release { id: 1 },
        Request::ObjectCount,
        Request::Create {
            kind: Kind::Dict,
            name: Some("kept".into()),
            init: vec![],
        },
        Request::Unname {
            name: "kept".into(),
        },
    ];
    let mut t = Vec::new();
    for req in &life {
        t.extend(frame(0, &value(req)));
    }
    t.extend(frame(
        1 | 8,
        &value(&Request::Redeem {
            ticket: 1,
            ids: vec![1],
        }),
    ));
    t.extend(frame(0, &value(&Request::ObjectCount)));
    out.push(("manager_wire", t));
    out
}
