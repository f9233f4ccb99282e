//! [`Item`], the values a slot holds, and the slot size CPython gives each at creation.

use super::*;

/// One value of a [`ShareableList`]: the kinds CPython's `ShareableList` allows.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A 64-bit signed integer (Python `int`, format `q`).
    Int(i64),
    /// A 64-bit float (Python `float`, format `d`).
    Float(f64),
    /// A boolean (Python `bool`, format `xxxxxxx?`).
    Bool(bool),
    /// A UTF-8 string (Python `str`, format `<slot size>s`).
    Str(String),
    /// Bytes (Python `bytes`, format `<slot size>s`).
    Bytes(Vec<u8>),
    /// Python's `None` (format `xxxxxx?x`).
    None,
}

impl Item {
    /// The bytes of a string or bytes value, `None` for the 8-byte scalars.
    pub(super) fn payload(&self) -> Option<&[u8]> {
        match self {
            Item::Str(s) => Some(s.as_bytes()),
            Item::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The Python name of the item's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Item::Int(_) => "int",
            Item::Float(_) => "float",
            Item::Bool(_) => "bool",
            Item::Str(_) => "str",
            Item::Bytes(_) => "bytes",
            Item::None => "NoneType",
        }
    }

    /// The integer, if this is an [`Item::Int`].
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Item::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The float, if this is an [`Item::Float`].
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Item::Float(v) => Some(*v),
            _ => None,
        }
    }

    /// The boolean, if this is an [`Item::Bool`].
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Item::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// The string, if this is an [`Item::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Item::Str(v) => Some(v),
            _ => None,
        }
    }

    /// The bytes, if this is an [`Item::Bytes`].
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Item::Bytes(v) => Some(v),
            _ => None,
        }
    }

    /// True for [`Item::None`].
    pub fn is_none(&self) -> bool {
        matches!(self, Item::None)
    }
}

impl From<i64> for Item {
    fn from(v: i64) -> Self {
        Item::Int(v)
    }
}
impl From<i32> for Item {
    fn from(v: i32) -> Self {
        Item::Int(v.into())
    }
}
impl From<u32> for Item {
    fn from(v: u32) -> Self {
        Item::Int(v.into())
    }
}
impl From<f64> for Item {
    fn from(v: f64) -> Self {
        Item::Float(v)
    }
}
impl From<bool> for Item {
    fn from(v: bool) -> Self {
        Item::Bool(v)
    }
}
impl From<&str> for Item {
    fn from(v: &str) -> Self {
        Item::Str(v.to_owned())
    }
}
impl From<String> for Item {
    fn from(v: String) -> Self {
        Item::Str(v)
    }
}
impl From<&[u8]> for Item {
    fn from(v: &[u8]) -> Self {
        Item::Bytes(v.to_vec())
    }
}
impl From<Vec<u8>> for Item {
    fn from(v: Vec<u8>) -> Self {
        Item::Bytes(v)
    }
}
impl From<()> for Item {
    fn from(_: ()) -> Self {
        Item::None
    }
}
impl<T: Into<Item>> From<Option<T>> for Item {
    fn from(v: Option<T>) -> Self {
        v.map_or(Item::None, Into::into)
    }
}

/// The slot size CPython gives an item at creation.
pub(super) fn slot_size(item: &Item) -> Result<usize> {
    match item.payload() {
        None => Ok(SLOT_ALIGN),
        Some(b) if b.len() > MAX_ITEM_LEN => Err(Error::InvalidSize {
            size: b.len() as u64,
            max: MAX_ITEM_LEN as u64,
        }),
        Some(b) => Ok(SLOT_ALIGN * (b.len() / SLOT_ALIGN + 1)),
    }
}
