//! Text a peer or a certificate controls, made safe to print: in the
//! gateway's and client's own logs and in tables on a terminal, a control
//! character could forge a log line or drive the terminal, and an
//! unbounded string could flood the log.

use std::fmt;

/// Characters of untrusted text printed before it is cut short.
pub const MAX_PRINTED_CHARS: usize = 256;

/// Displays untrusted text escaped and capped: control characters (C0, C1,
/// DEL), bidirectional overrides and the backslash are written as escapes
/// (`\n`, `\x1b`, `\u{202e}`, `\\`), so one value is always one line of
/// plain text; past `max` characters the rest is counted, not printed.
#[derive(Clone, Copy)]
pub struct Untrusted<'a> {
    text: &'a str,
    max: usize,
}

impl<'a> Untrusted<'a> {
    /// `text` capped at [`MAX_PRINTED_CHARS`].
    pub fn new(text: &'a str) -> Self {
        Untrusted::capped(text, MAX_PRINTED_CHARS)
    }

    /// `text` capped at `max` characters.
    pub fn capped(text: &'a str, max: usize) -> Self {
        Untrusted { text, max }
    }
}

/// Shorthand for [`Untrusted::new`].
pub fn untrusted(text: &str) -> Untrusted<'_> {
    Untrusted::new(text)
}

/// Bidirectional formatting characters: they reorder what a terminal shows.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn write_escaped(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        '\t' => f.write_str("\\t"),
        '\\' => f.write_str("\\\\"),
        c if (c as u32) < 0x80 => write!(f, "\\x{:02x}", c as u32),
        c => write!(f, "\\u{{{:x}}}", c as u32),
    }
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.text.chars();
        for c in chars.by_ref().take(self.max) {
            if c.is_control() || c == '\\' || is_bidi_control(c) {
                write_escaped(f, c)?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        let rest = chars.count();
        if rest > 0 {
            write!(f, "...({rest} more characters)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// `text` cut to at most `max` characters, for values stored (a reason in
/// the connection log) rather than printed: the JSON encoder escapes them.
pub fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_is_one_plain_line() {
        let s = untrusted("a\nb\r\u{1b}[31m\u{0}\u{7f}\u{85}\u{202e}\\z").to_string();
        assert_eq!(s, "a\\nb\\r\\x1b[31m\\x00\\x7f\\u{85}\\u{202e}\\\\z");
        assert!(!s.chars().any(char::is_control));
    }

    #[test]
    fn printable_unicode_passes() {
        assert_eq!(untrusted("Zoë 東京").to_string(), "Zoë 東京");
    }

    #[test]
    fn long_text_is_capped() {
        let long = "x".repeat(16_000);
        let s = untrusted(&long).to_string();
        assert!(s.starts_with(&"x".repeat(MAX_PRINTED_CHARS)));
        assert!(s.ends_with("...(15744 more characters)"));
        assert_eq!(Untrusted::capped("abc", 3).to_string(), "abc");
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate_chars("ééé", 2), "éé...");
        assert_eq!(truncate_chars("ab", 2), "ab");
    }
}
