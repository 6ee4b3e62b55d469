//! Text shown to people in a terminal (`inspect`, `dlq list`, `policy check`): what came from
//! events or headers is publisher input, so its control characters are shown escaped, never
//! sent raw — a raw ESC rewrites the operator's terminal, a raw newline forges an output line.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal raw: C0 and C1 controls, DEL, and the bidirectional
/// formatting characters that reorder what is shown (Trojan Source).
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A duration as people set long ones: whole days as `90d` (humantime would say
/// `2months 29days 2h 52m 48s`), anything else as humantime writes it.
pub fn duration(d: std::time::Duration) -> String {
    if d.as_secs() >= 86_400 && d.as_secs().is_multiple_of(86_400) && d.subsec_nanos() == 0 {
        format!("{}d", d.as_secs() / 86_400)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// `s` with every unsafe character escaped (`\n`, `\t`, `\u{1b}`, `\u{202e}`); borrowed when
/// there is none.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(escape_controls("job_1 é €"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\u{1b}[2Jb\nc\td\u{7f}\u{9b}\u{202e}"),
            "a\\u{1b}[2Jb\\nc\\td\\u{7f}\\u{9b}\\u{202e}"
        );
    }
}
