//! Values written into SQL text, for the statements the ledger sends whole by the simple query
//! protocol (one message, one round trip, its own transaction; see `steps`).
//!
//! An array goes as one escape-string constant holding PostgreSQL's array input text, cast to
//! its type (`E'{"a",NULL}'::text[]`): the server reads it with one call of the array's input
//! function, where an `ARRAY[…]` of constants cost parse analysis and constant folding per
//! element. Each element is double-quoted with its quotes and backslashes escaped for the array
//! reader, and the whole escaped again for the string constant (quotes doubled, backslashes
//! doubled): an escape string reads the same whatever `standard_conforming_strings` says, so no
//! value can end its constant or its element early. A NUL, which no PostgreSQL text may hold,
//! goes as the escape `\000`, which the server refuses with the same error a bound parameter
//! holding one gets.

use std::fmt::Write as _;

/// Appends an array of `ty` (a SQL type name, e.g. `text`) holding `items`, each element's text
/// written by `write` into a scratch buffer, or `NULL` when absent.
pub(super) fn push_array<T>(
    out: &mut String,
    ty: &str,
    items: impl IntoIterator<Item = Option<T>>,
    mut write: impl FnMut(&mut String, T),
) {
    let mut scratch = String::new();
    push_list(out, "E'{", items, |out, value| {
        scratch.clear();
        write(&mut scratch, value);
        push_element(out, &scratch);
    });
    out.push_str("}'::");
    out.push_str(ty);
    out.push_str("[]");
}

/// Appends `items` after `open`, comma-separated, each written by `write` or `NULL` when absent.
fn push_list<T>(
    out: &mut String,
    open: &str,
    items: impl IntoIterator<Item = Option<T>>,
    mut write: impl FnMut(&mut String, T),
) {
    out.push_str(open);
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Some(value) => write(out, value),
            None => out.push_str("NULL"),
        }
    }
}

/// An array of texts (borrowed or owned), as [`push_array`] without the scratch copy.
pub(super) fn push_text_array<S: AsRef<str>>(
    out: &mut String,
    items: impl IntoIterator<Item = Option<S>>,
) {
    push_list(out, "E'{", items, |out, value| {
        push_element(out, value.as_ref())
    });
    out.push_str("}'::text[]");
}

/// The bytes an array element escapes.
const SPECIAL: [bool; 256] = {
    let mut special = [false; 256];
    special[b'\'' as usize] = true;
    special[b'\\' as usize] = true;
    special[b'"' as usize] = true;
    special[0] = true;
    special
};

/// Appends one array element, quoted for the array reader and escaped for the string constant.
fn push_element(out: &mut String, value: &str) {
    out.push('"');
    // Elements are short (ids, hashes, amounts: the long body goes dollar-quoted) and seldom
    // hold anything to escape: one look-up per byte decides, then one copy.
    if value.bytes().any(|b| SPECIAL[usize::from(b)]) {
        push_escaped(out, value);
    } else {
        out.push_str(value);
    }
    out.push('"');
}

/// Appends `value` with each of its bytes that needs it escaped; the others go as they are.
fn push_escaped(out: &mut String, value: &str) {
    let mut plain = 0;
    for i in 0..value.len() {
        let escaped = match value.as_bytes()[i] {
            b'\'' => "''",
            // `\\` for the array reader, each backslash doubled for the constant.
            b'\\' => r"\\\\",
            // `\"` for the array reader, its backslash doubled for the constant.
            b'"' => r#"\\""#,
            0 => r"\000",
            _ => continue,
        };
        // Only ASCII bytes are escaped, so both ends of the slice are character boundaries.
        out.push_str(&value[plain..i]);
        out.push_str(escaped);
        plain = i + 1;
    }
    out.push_str(&value[plain..]);
}

/// Writes a value by its `Display` (numbers, `true`, dates, decimals): the element's text.
pub(super) fn display(out: &mut String, value: impl std::fmt::Display) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{value}");
}

/// Appends a single value by its `Display`, as a string constant (a date, cast after it).
pub(super) fn push_constant(out: &mut String, value: impl std::fmt::Display) {
    let mut text = String::new();
    display(&mut text, value);
    push_escape_string(out, &text);
}

/// Appends `value` as an escape-string constant, quotes and backslashes doubled.
fn push_escape_string(out: &mut String, value: &str) {
    out.push_str("E'");
    for ch in value.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str(r"\\"),
            '\0' => out.push_str(r"\000"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// The dollar-quote tag long texts go in: no escaping, so a bid body of JSON, all quotes, is
/// copied as it is rather than escaped quote by quote.
const TAG: &str = "$bidorch_text$";

/// Appends an array of long texts as an `ARRAY[…]` of dollar-quoted constants (the server pays
/// per element here, so only for arrays of one long text per posting). A text the tag would not
/// enclose whole goes as an escape string instead.
pub(super) fn push_long_text_array<'a>(
    out: &mut String,
    items: impl IntoIterator<Item = Option<&'a str>>,
) {
    push_list(out, "ARRAY[", items, |out, value| {
        if dollar_quotable(value) {
            out.push_str(TAG);
            out.push_str(value);
            out.push_str(TAG);
        } else {
            push_escape_string(out, value);
        }
    });
    out.push_str("]::text[]");
}

/// Whether `value` followed by the closing tag ends exactly there: the constant ends at the first
/// tag in it, which is inside `value` if `value` holds the tag, or straddles the two if `value`
/// ends with the tag but its last `$` (the tag's one overlap with itself: `$…$`). A NUL goes the
/// escaped way, to be refused as ever.
fn dollar_quotable(value: &str) -> bool {
    memchr::memmem::find(value.as_bytes(), TAG.as_bytes()).is_none()
        && !value.ends_with(&TAG[..TAG.len() - 1])
        && memchr::memchr(0, value.as_bytes()).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `push` writes for `values`.
    fn written(values: &[Option<&str>], push: fn(&mut String, Vec<Option<&str>>)) -> String {
        let mut out = String::new();
        push(&mut out, values.to_vec());
        out
    }

    fn texts(values: &[Option<&str>]) -> String {
        written(values, |out, v| push_text_array(out, v))
    }

    fn long_texts(values: &[Option<&str>]) -> String {
        written(values, |out, v| push_long_text_array(out, v))
    }

    #[test]
    fn elements_are_quoted_for_the_array_and_escaped_for_the_constant() {
        assert_eq!(texts(&[Some("plain")]), r#"E'{"plain"}'::text[]"#);
        assert_eq!(texts(&[]), "E'{}'::text[]");
        assert_eq!(texts(&[Some(""), None]), r#"E'{"",NULL}'::text[]"#);
        assert_eq!(texts(&[Some("it's")]), r#"E'{"it''s"}'::text[]"#);
        assert_eq!(texts(&[Some(r"a\b")]), r#"E'{"a\\\\b"}'::text[]"#);
        assert_eq!(
            texts(&[Some(r#"say "hi""#)]),
            r#"E'{"say \\"hi\\""}'::text[]"#
        );
        assert_eq!(texts(&[Some("NULL")]), r#"E'{"NULL"}'::text[]"#);
        assert_eq!(
            texts(&[Some("{,} $$ ; -- é\n🦀")]),
            "E'{\"{,} $$ ; -- é\n🦀\"}'::text[]"
        );
    }

    #[test]
    fn long_texts_are_dollar_quoted_unless_they_hold_the_tag() {
        assert_eq!(
            long_texts(&[Some(r#"{"a":"it's \\"}"#), None]),
            r#"ARRAY[$bidorch_text${"a":"it's \\"}$bidorch_text$,NULL]::text[]"#
        );
        assert_eq!(long_texts(&[]), "ARRAY[]::text[]");
        assert_eq!(
            long_texts(&[Some(r"x$bidorch_text$'\")]),
            r"ARRAY[E'x$bidorch_text$''\\']::text[]"
        );
        assert_eq!(
            long_texts(&[Some("x$bidorch_text")]),
            r"ARRAY[E'x$bidorch_text']::text[]"
        );
        assert_eq!(long_texts(&[Some("a\0")]), r"ARRAY[E'a\000']::text[]");
    }

    #[test]
    fn a_nul_is_the_escape_the_server_refuses() {
        assert_eq!(texts(&[Some("a\0b")]), r#"E'{"a\000b"}'::text[]"#);
    }

    #[test]
    fn other_arrays_write_each_value_by_its_display_and_end_with_their_type() {
        let mut out = String::new();
        push_array(&mut out, "bigint", [Some(1_i64), None, Some(-2)], display);
        assert_eq!(out, r#"E'{"1",NULL,"-2"}'::bigint[]"#);
        let mut out = String::new();
        push_array(&mut out, "int", std::iter::empty::<Option<i32>>(), display);
        assert_eq!(out, "E'{}'::int[]");
    }

    #[test]
    fn a_single_value_is_a_string_constant() {
        let mut out = String::new();
        push_constant(
            &mut out,
            chrono::NaiveDate::from_ymd_opt(2026, 12, 8).expect("date"),
        );
        assert_eq!(out, "E'2026-12-08'");
        let mut out = String::new();
        push_constant(&mut out, r"a'b\c");
        assert_eq!(out, r"E'a''b\\c'");
    }
}
