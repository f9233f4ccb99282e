//! [`Dict`]: a named map on the server (a Redis hash).

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use mp_core::message::{decode, encode};
use mp_core::Message;

use crate::conn::{Conn, Shared};
use crate::error::{Error, Result};

/// A named dict of `K -> V` (a Manager's `dict()`, across machines); made by
/// [`Cluster::dict`](crate::Cluster::dict). The hash `{prefix}:dict:{name}`, whose fields
/// and values are the encoded keys and values: two keys are the same key when their
/// messages encode to the same bytes (true of integers, strings, tuples and vectors of them,
/// not of hash maps).
pub struct Dict<K, V> {
    sh: Arc<Shared>,
    name: String,
    key: String,
    con: Mutex<Conn>,
    _t: PhantomData<fn(K) -> V>,
}

impl<K, V> std::fmt::Debug for Dict<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dict").field("name", &self.name).finish()
    }
}

impl<K: Message, V: Message> Dict<K, V> {
    pub(crate) fn open(sh: Arc<Shared>, name: &str) -> Dict<K, V> {
        Dict {
            key: sh.key(&format!("dict:{name}")),
            name: name.to_string(),
            sh,
            con: Mutex::new(Conn::new()),
            _t: PhantomData,
        }
    }

    fn run<T>(&self, f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>) -> Result<T> {
        self.con
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .run(&self.sh, None, f)
    }

    fn field(&self, k: &K) -> Result<Vec<u8>> {
        let b = encode(k)?;
        self.sh.check_size(b.len())?;
        Ok(b.to_vec())
    }

    /// Python's `d.get(k)`: the value, or `None`.
    pub fn get(&self, k: &K) -> Result<Option<V>> {
        let f = self.field(k)?;
        let got: Option<Vec<u8>> =
            self.run(|c| redis::cmd("HGET").arg(&self.key).arg(&f).query(c))?;
        got.map(|b| decode(&b).map_err(Error::from)).transpose()
    }

    /// Python's `d[k]`: the value, or [`Error::KeyNotFound`].
    pub fn get_item(&self, k: &K) -> Result<V> {
        self.get(k)?.ok_or(Error::KeyNotFound)
    }

    /// Python's `d[k] = v`.
    pub fn set(&self, k: &K, v: &V) -> Result<()> {
        let f = self.field(k)?;
        let b = encode(v)?;
        self.sh.check_size(f.len().saturating_add(b.len()))?;
        self.run(|c| {
            redis::cmd("HSET")
                .arg(&self.key)
                .arg(&f)
                .arg(b.as_slice())
                .query::<()>(c)
        })
    }

    /// Python's `d.setdefault(k, v)`: sets `k` only if it is absent; returns the value `k`
    /// has afterwards.
    pub fn setdefault(&self, k: &K, v: &V) -> Result<V> {
        let f = self.field(k)?;
        let b = encode(v)?;
        self.sh.check_size(f.len().saturating_add(b.len()))?;
        let (_, now): (u64, Vec<u8>) = self.run(|c| {
            redis::pipe()
                .atomic()
                .cmd("HSETNX")
                .arg(&self.key)
                .arg(&f)
                .arg(b.as_slice())
                .cmd("HGET")
                .arg(&self.key)
                .arg(&f)
                .query(c)
        })?;
        Ok(decode(&now)?)
    }

    /// Python's `d.pop(k)`: removes and returns the value, or [`Error::KeyNotFound`].
    pub fn pop(&self, k: &K) -> Result<V> {
        let f = self.field(k)?;
        let (got, _): (Option<Vec<u8>>, u64) = self.run(|c| {
            redis::pipe()
                .atomic()
                .cmd("HGET")
                .arg(&self.key)
                .arg(&f)
                .cmd("HDEL")
                .arg(&self.key)
                .arg(&f)
                .query(c)
        })?;
        match got {
            Some(b) => Ok(decode(&b)?),
            None => Err(Error::KeyNotFound),
        }
    }

    /// Python's `k in d`.
    pub fn contains(&self, k: &K) -> Result<bool> {
        let f = self.field(k)?;
        self.run(|c| redis::cmd("HEXISTS").arg(&self.key).arg(&f).query(c))
    }

    /// Python's `len(d)`.
    pub fn len(&self) -> Result<usize> {
        self.run(|c| redis::cmd("HLEN").arg(&self.key).query(c))
    }

    /// True when the dict has no entry.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Python's `d.items()` (in no particular order).
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        let all: Vec<(Vec<u8>, Vec<u8>)> =
            self.run(|c| redis::cmd("HGETALL").arg(&self.key).query(c))?;
        all.iter()
            .map(|(k, v)| Ok((decode(k)?, decode(v)?)))
            .collect()
    }

    /// Python's `d.keys()` (in no particular order).
    pub fn keys(&self) -> Result<Vec<K>> {
        let all: Vec<Vec<u8>> = self.run(|c| redis::cmd("HKEYS").arg(&self.key).query(c))?;
        all.iter().map(|k| Ok(decode(k)?)).collect()
    }

    /// Python's `d.values()` (in no particular order).
    pub fn values(&self) -> Result<Vec<V>> {
        let all: Vec<Vec<u8>> = self.run(|c| redis::cmd("HVALS").arg(&self.key).query(c))?;
        all.iter().map(|v| Ok(decode(v)?)).collect()
    }

    /// Python's `d.clear()`.
    pub fn clear(&self) -> Result<()> {
        self.run(|c| redis::cmd("DEL").arg(&self.key).query::<()>(c))
    }
}
