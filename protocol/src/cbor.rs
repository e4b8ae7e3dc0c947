//! The small canonical-CBOR toolkit of the version 2 formats (membership operations, tickets,
//! sealed contributions): builders for maps with text keys in a fixed order, and a strict reader
//! that accepts exactly those keys in exactly that order. Callers re-encode what they decoded and
//! compare bytes, so every value has one encoding.

use ciborium::Value;

/// Why bytes were refused by the strict reader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CborError(pub String);

pub(crate) fn err(msg: impl Into<String>) -> CborError {
    CborError(msg.into())
}

pub(crate) fn bytes(b: &[u8]) -> Value {
    Value::Bytes(b.to_vec())
}

pub(crate) fn uint(n: u64) -> Value {
    Value::Integer(n.into())
}

pub(crate) fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::Text(k.to_string()), v))
            .collect(),
    )
}

pub(crate) fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR encoding into a Vec cannot fail");
    out
}

/// Decodes at most `max` bytes into a value (no canonical check: the caller re-encodes).
pub(crate) fn decode(input: &[u8], max: usize) -> Result<Value, CborError> {
    if input.len() > max {
        return Err(err(format!(
            "{} bytes, more than the {max} allowed",
            input.len()
        )));
    }
    ciborium::from_reader(input)
        .map_err(|e| err(e.to_string().chars().take(200).collect::<String>()))
}

/// Reads a map's entries in order, each under the key the format puts there.
pub(crate) struct Fields {
    entries: std::vec::IntoIter<(Value, Value)>,
    what: &'static str,
}

impl Fields {
    pub(crate) fn of(value: Value, what: &'static str) -> Result<Fields, CborError> {
        match value {
            Value::Map(entries) => Ok(Fields {
                entries: entries.into_iter(),
                what,
            }),
            _ => Err(err(format!("{what} is not a map"))),
        }
    }

    pub(crate) fn next(&mut self, key: &str) -> Result<Value, CborError> {
        match self.entries.next() {
            Some((Value::Text(k), v)) if k == key => Ok(v),
            Some((k, _)) => Err(err(format!(
                "{}: expected key {key:?}, found {:?}",
                self.what,
                format!("{k:?}").chars().take(40).collect::<String>()
            ))),
            None => Err(err(format!("{}: missing key {key:?}", self.what))),
        }
    }

    pub(crate) fn bytes(&mut self, key: &str) -> Result<Vec<u8>, CborError> {
        as_bytes(self.next(key)?, key)
    }

    pub(crate) fn array<const N: usize>(&mut self, key: &str) -> Result<[u8; N], CborError> {
        let b = self.bytes(key)?;
        <[u8; N]>::try_from(&b[..])
            .map_err(|_| err(format!("field {key} is {} bytes, expected {N}", b.len())))
    }

    pub(crate) fn uint(&mut self, key: &str) -> Result<u64, CborError> {
        as_uint(self.next(key)?, key)
    }

    pub(crate) fn list(&mut self, key: &str, max: usize) -> Result<Vec<Value>, CborError> {
        match self.next(key)? {
            Value::Array(items) if items.len() <= max => Ok(items),
            Value::Array(items) => Err(err(format!(
                "field {key} has {} items, more than the {max} allowed",
                items.len()
            ))),
            _ => Err(err(format!("field {key} is not an array"))),
        }
    }

    pub(crate) fn finish(mut self) -> Result<(), CborError> {
        match self.entries.next() {
            None => Ok(()),
            Some(_) => Err(err(format!("{}: unexpected extra key", self.what))),
        }
    }
}

pub(crate) fn as_bytes(v: Value, key: &str) -> Result<Vec<u8>, CborError> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(err(format!("field {key} is not a byte string"))),
    }
}

pub(crate) fn as_array<const N: usize>(v: Value, key: &str) -> Result<[u8; N], CborError> {
    let b = as_bytes(v, key)?;
    <[u8; N]>::try_from(&b[..])
        .map_err(|_| err(format!("field {key} is {} bytes, expected {N}", b.len())))
}

pub(crate) fn as_uint(v: Value, key: &str) -> Result<u64, CborError> {
    match v {
        Value::Integer(i) => u64::try_from(i).map_err(|_| err(format!("field {key} is negative"))),
        _ => Err(err(format!("field {key} is not an unsigned integer"))),
    }
}

/// Writes a CBOR head (major type and argument) in its shortest form.
pub(crate) fn put_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// Bytes of a CBOR head whose argument is `n` (what [`put_head`] writes).
pub(crate) fn head_len(n: usize) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Bytes of a CBOR text or byte string of `n` bytes.
pub(crate) fn string_len(n: usize) -> usize {
    head_len(n) + n
}

/// Writes a text key.
pub(crate) fn put_key(out: &mut Vec<u8>, key: &str) {
    put_head(out, 3, key.len() as u64);
    out.extend_from_slice(key.as_bytes());
}

/// Writes a byte string.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_head(out, 2, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A strict reader of canonical CBOR over a byte slice, for fixed layouts on hot paths: every
/// head must be in its shortest form, so what it accepts has exactly one encoding.
pub(crate) struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { input }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CborError> {
        if self.input.len() < n {
            return Err(err("truncated"));
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    /// A head of `major` type; its argument, refused unless in its shortest form.
    fn head(&mut self, major: u8) -> Result<u64, CborError> {
        let first = self.take(1)?[0];
        if first >> 5 != major {
            return Err(err(format!("expected CBOR major type {major}")));
        }
        let info = first & 0x1f;
        let (n, min) = match info {
            0..=23 => return Ok(u64::from(info)),
            24 => (u64::from(self.take(1)?[0]), 24),
            25 => (
                u64::from(u16::from_be_bytes(
                    self.take(2)?.try_into().unwrap_or_default(),
                )),
                0x100,
            ),
            26 => (
                u64::from(u32::from_be_bytes(
                    self.take(4)?.try_into().unwrap_or_default(),
                )),
                0x1_0000,
            ),
            27 => (
                u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default()),
                0x1_0000_0000,
            ),
            _ => return Err(err("indefinite or reserved length")),
        };
        if n < min {
            return Err(err("non-minimal length"));
        }
        Ok(n)
    }

    /// A map header with exactly `n` entries.
    pub(crate) fn map(&mut self, n: u64) -> Result<(), CborError> {
        if self.head(5)? != n {
            return Err(err(format!("expected a map of {n} entries")));
        }
        Ok(())
    }

    /// The text key `key`, exactly.
    pub(crate) fn key(&mut self, key: &str) -> Result<(), CborError> {
        let n = self.head(3)?;
        if n != key.len() as u64 || self.take(key.len())? != key.as_bytes() {
            return Err(err(format!("expected key {key:?}")));
        }
        Ok(())
    }

    pub(crate) fn uint(&mut self) -> Result<u64, CborError> {
        self.head(0)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], CborError> {
        let n = self.head(2)?;
        let n = usize::try_from(n).map_err(|_| err("byte string too long"))?;
        self.take(n)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CborError> {
        let b = self.bytes()?;
        <[u8; N]>::try_from(b).map_err(|_| err(format!("expected {N} bytes, got {}", b.len())))
    }

    /// Whether the next item is the text key `key` (nothing is consumed).
    pub(crate) fn next_is_key(&self, key: &str) -> bool {
        let mut encoded = Vec::with_capacity(key.len() + 2);
        put_key(&mut encoded, key);
        self.input.starts_with(&encoded)
    }

    /// An array header; its length.
    pub(crate) fn array_len(&mut self) -> Result<u64, CborError> {
        self.head(4)
    }

    /// A text string.
    pub(crate) fn text(&mut self) -> Result<&'a str, CborError> {
        let n = usize::try_from(self.head(3)?).map_err(|_| err("text too long"))?;
        std::str::from_utf8(self.take(n)?).map_err(|_| err("text is not UTF-8"))
    }

    /// Succeeds if nothing is left.
    pub(crate) fn end(&self) -> Result<(), CborError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(err("trailing bytes"))
        }
    }
}
