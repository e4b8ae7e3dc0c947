//! What both vector tests share: reading the `vector.*` lines of `docs/PROTOCOL.md` and printing
//! a block to paste back into it.

use std::collections::BTreeMap;

/// The protocol document.
pub const SPEC: &str = include_str!("../../../docs/PROTOCOL.md");

/// The `vector.*` lines of the document, continuation lines joined.
pub fn spec_vectors() -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for line in SPEC.lines() {
        let Some(rest) = line.trim().strip_prefix("vector.") else {
            continue;
        };
        if let Some((name, value)) = rest.split_once(" += ") {
            out.get_mut(name.trim())
                .unwrap_or_else(|| panic!("`vector.{name} +=` before `vector.{name} =`"))
                .push_str(value.trim());
        } else if let Some((name, value)) = rest.split_once(" = ") {
            let old = out.insert(name.trim().to_string(), value.trim().to_string());
            assert!(
                old.is_none(),
                "vector.{name} is defined twice in PROTOCOL.md"
            );
        }
    }
    out
}

/// The block to paste into the document, long values wrapped at 64 hex digits.
pub fn render(values: &BTreeMap<&'static str, String>) -> String {
    let mut s = String::new();
    for (name, value) in values {
        let is_hex = value.len() > 64 && value.bytes().all(|b| b.is_ascii_hexdigit());
        if is_hex {
            for (i, chunk) in value.as_bytes().chunks(64).enumerate() {
                let op = if i == 0 { "=" } else { "+=" };
                let chunk = std::str::from_utf8(chunk).unwrap();
                s.push_str(&format!("vector.{name} {op} {chunk}\n"));
            }
        } else {
            s.push_str(&format!("vector.{name} = {value}\n"));
        }
    }
    s
}
