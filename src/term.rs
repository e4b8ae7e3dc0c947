//! Text for the terminal. Anything a peer sends is shown to a person somewhere: the CLI escapes
//! every character that could drive the terminal (move the cursor, recolour or clear the screen,
//! set the window title, reorder what is shown) instead of being shown as itself.

use std::borrow::Cow;
use std::fmt::Write as _;

/// One line of text (a title, tag, name, address, error message) made safe to print: every C0
/// control character (newline included), DEL, every C1 control character and every Unicode
/// bidirectional control is replaced by a visible escape (see [`escape`]). Everything else, all
/// ordinary Unicode included, is kept; borrowed when nothing needs escaping.
pub fn term_safe(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// Multi-line text (an idea's body, a comment) made safe to print: as [`term_safe`], but a
/// newline (`\n`, or `\r\n`, which becomes `\n`) is kept as a line break.
pub fn term_safe_multiline(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// Whether `c` must not reach the terminal as itself.
fn is_unsafe(c: char) -> bool {
    matches!(c,
        // C0 controls (ESC, BEL, CR, backspace...), DEL and C1 controls (CSI U+009B, OSC U+009D...).
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // Bidirectional controls (the Unicode Bidi_Control property): marks, embeddings,
        // overrides and isolates, which reorder how the text around them is displayed.
        | '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Replaces each unsafe character (see [`is_unsafe`]) by a visible escape: `\n`, `\r` and `\t`
/// for those three, `\xHH` for the other ASCII controls (ESC is `\x1b`, BEL `\x07`, DEL `\x7f`)
/// and `\u{HHHH}` for the rest (CSI U+009B is `\u{9b}`, RIGHT-TO-LEFT OVERRIDE `\u{202e}`). With
/// `keep_newlines`, `\n` and `\r\n` stay line breaks (`\n`).
fn escape(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    let Some(first) = s.find(|c| is_unsafe(c) && !(keep_newlines && c == '\n')) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 16);
    out.push_str(&s[..first]);
    let mut chars = s[first..].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' if keep_newlines => out.push('\n'),
            '\r' if keep_newlines && chars.peek() == Some(&'\n') => {}
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if !is_unsafe(c) => out.push(c),
            c if c.is_ascii() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

/// JSON text (as `serde_json` writes it) made safe to print, without changing what it means:
/// `serde_json` escapes C0 controls but writes DEL, the C1 controls and the bidirectional
/// controls as themselves; this writes each of them as a JSON `\uHHHH` escape, which a JSON
/// reader turns back into the same character. (Those characters can only occur inside JSON
/// strings, so nothing else changes.)
pub fn json_safe(json: &str) -> Cow<'_, str> {
    // C0 controls are already escaped, except the structural newlines of pretty output.
    let unsafe_char = |c: char| is_unsafe(c) && c > '\u{1f}';
    let Some(first) = json.find(unsafe_char) else {
        return Cow::Borrowed(json);
    };
    let mut out = String::with_capacity(json.len() + 16);
    out.push_str(&json[..first]);
    for c in json[first..].chars() {
        if unsafe_char(c) {
            // Every such character is in the Basic Multilingual Plane: one `\uHHHH` escape.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_borrowed(c: Cow<'_, str>) -> bool {
        matches!(c, Cow::Borrowed(_))
    }

    #[test]
    fn ordinary_text_is_kept_and_borrowed() {
        for s in [
            "",
            "Faster builds",
            "Easier on the eyes — and ünïcödé works.",
            "日本語のアイデア 🚀👍🏽",
            "שלום עולם مرحبا", // right-to-left scripts themselves are fine
            "C:\\path\\x1b is just text",
            "tabs?\u{a0}no-break space, \u{200b}zero width",
        ] {
            assert_eq!(term_safe(s), s);
            assert!(is_borrowed(term_safe(s)), "{s:?} should not be copied");
            assert_eq!(term_safe_multiline(s), s);
            assert!(
                is_borrowed(term_safe_multiline(s)),
                "{s:?} should not be copied"
            );
        }
        let body = "Fridays, 15 minutes.\nEveryone shows one thing.";
        assert!(is_borrowed(term_safe_multiline(body)));
    }

    #[test]
    fn terminal_sequences_are_shown_not_obeyed() {
        assert_eq!(term_safe("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(
            term_safe("\x1b]0;pwned\x07title"),
            "\\x1b]0;pwned\\x07title"
        );
        assert_eq!(term_safe("ok\rfake"), "ok\\rfake");
        assert_eq!(term_safe("a\x08\x08b\x7f"), "a\\x08\\x08b\\x7f");
        assert_eq!(term_safe("\0nul"), "\\x00nul");
        assert_eq!(term_safe("col\tumn"), "col\\tumn");
        assert_eq!(term_safe("csi\u{9b}31m"), "csi\\u{9b}31m");
        assert_eq!(term_safe("\u{80}\u{9d}\u{9f}"), "\\u{80}\\u{9d}\\u{9f}");
        assert_eq!(term_safe("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(
            term_safe("\u{202a}\u{202b}\u{202c}\u{202d}\u{2066}\u{2067}\u{2068}\u{2069}"),
            "\\u{202a}\\u{202b}\\u{202c}\\u{202d}\\u{2066}\\u{2067}\\u{2068}\\u{2069}"
        );
        assert_eq!(
            term_safe("\u{200e}\u{200f}\u{61c}"),
            "\\u{200e}\\u{200f}\\u{61c}"
        );
        // Ordinary text around an escape is kept, multi-byte characters included.
        assert_eq!(term_safe("café\x1b[2Jüñ🚀"), "café\\x1b[2Jüñ🚀");
    }

    #[test]
    fn newlines_break_lines_only_in_multiline_text() {
        assert_eq!(term_safe("one\ntwo"), "one\\ntwo");
        assert_eq!(term_safe("one\r\ntwo"), "one\\r\\ntwo");
        assert_eq!(term_safe_multiline("one\ntwo\r\nthree"), "one\ntwo\nthree");
        assert_eq!(
            term_safe_multiline("one\rtwo\x1b[1A\x07\u{9b}\u{202e}"),
            "one\\rtwo\\x1b[1A\\x07\\u{9b}\\u{202e}"
        );
        assert_eq!(term_safe_multiline("end\r"), "end\\r");
    }

    #[test]
    fn no_unsafe_character_survives() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        for (out, keep) in [(term_safe(&all), ""), (term_safe_multiline(&all), "\n")] {
            for c in out.chars() {
                assert!(
                    !is_unsafe(c) || keep.contains(c),
                    "{c:?} reached the output"
                );
            }
        }
    }

    #[test]
    fn json_keeps_its_meaning() {
        let title = "a\x1b[31m\r\x07\u{7f}\u{9b}\u{202e}\u{2066}é🚀\n\"q\"";
        let raw =
            serde_json::to_string_pretty(&serde_json::json!({ "title": title, "tags": ["x"] }))
                .expect("serialises");
        let safe = json_safe(&raw);
        for c in safe.chars() {
            assert!(!is_unsafe(c) || c == '\n', "{c:?} reached the output");
        }
        assert!(safe.contains("\\u009b") && safe.contains("\\u202e") && safe.contains("\\u007f"));
        let back: serde_json::Value = serde_json::from_str(&safe).expect("still JSON");
        assert_eq!(back["title"], title);
        assert!(is_borrowed(json_safe("{\n  \"a\": \"é 🚀\"\n}")));
    }
}
