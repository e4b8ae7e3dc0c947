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
