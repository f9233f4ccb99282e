//! [`Token`]: which object of which server a proxy stands for, and the reference this process
//! holds on it (`crate::refs`). Cloning a token counts one more proxy, dropping one counts one
//! less; serializing one takes a ticket for the receiver, decoding one redeems it.

use mp_core::rkyv::rancor::Fallible;
use mp_core::rkyv::{Archive, Deserialize, Place, Serialize};

use crate::client::{request, Endpoint};
use crate::error::Result;
use crate::refs;
use crate::wire::{Kind, Op, Reply, Request};

/// A token as it travels: with the ticket that holds the object until the receiver redeems it
/// (0: none).
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct WireToken {
    ep: Endpoint,
    id: u64,
    ticket: u64,
}

/// Which object of which server a proxy stands for (inside every proxy; not for direct use).
#[doc(hidden)]
pub struct Token {
    pub(crate) ep: Endpoint,
    pub(crate) id: u64,
    /// The generation of this process's session the reference is counted under (0: this
    /// token holds nothing, and its object may be gone).
    generation: u64,
}

impl Token {
    /// The token of an object this process holds under `generation`, counted already.
    pub(crate) fn held(ep: Endpoint, id: u64, generation: u64) -> Token {
        Token { ep, id, generation }
    }

    pub(crate) fn call(&self, kind: Kind, op: Op) -> Result<Reply> {
        request(
            &self.ep,
            &Request::Call {
                id: self.id,
                kind,
                op,
            },
            &refs::settle,
        )
    }
}

impl Clone for Token {
    fn clone(&self) -> Token {
        Token {
            ep: self.ep.clone(),
            id: self.id,
            generation: refs::clone_ref(&self.ep, self.id, self.generation),
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        refs::drop_ref(&self.ep, self.id, self.generation);
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("ep", &self.ep)
            .field("id", &self.id)
            .field("held", &(self.generation != 0))
            .finish()
    }
}

impl Archive for Token {
    type Archived = ArchivedWireToken;
    /// The wire form's resolver and the ticket it was serialized with.
    type Resolver = (WireTokenResolver, u64);

    fn resolve(&self, (resolver, ticket): Self::Resolver, out: Place<Self::Archived>) {
        // The same value as the one `serialize` wrote (the resolver refers to its parts).
        let wire = WireToken {
            ep: self.ep.clone(),
            id: self.id,
            ticket,
        };
        wire.resolve(resolver, out);
    }
}

impl<S: Fallible + ?Sized> Serialize<S> for Token
where
    WireToken: Serialize<S>,
{
    fn serialize(&self, serializer: &mut S) -> std::result::Result<Self::Resolver, S::Error> {
        let ticket = refs::ticket(&self.ep, self.id, self.generation);
        let wire = WireToken {
            ep: self.ep.clone(),
            id: self.id,
            ticket,
        };
        Ok((wire.serialize(serializer)?, ticket))
    }
}

impl<D: Fallible + ?Sized> Deserialize<Token, D> for ArchivedWireToken
where
    ArchivedWireToken: Deserialize<WireToken, D>,
{
    fn deserialize(&self, deserializer: &mut D) -> std::result::Result<Token, D::Error> {
        let w: WireToken = Deserialize::<WireToken, D>::deserialize(self, deserializer)?;
        let generation = refs::redeem(&w.ep, w.id, w.ticket);
        Ok(Token::held(w.ep, w.id, generation))
    }
}
