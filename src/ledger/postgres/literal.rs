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
    out.push_str("E'{");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Some(value) => {
                scratch.clear();
                write(&mut scratch, value);
                push_element(out, &scratch);
            }
            None => out.push_str("NULL"),
        }
    }
    out.push_str("}'::");
    out.push_str(ty);
    out.push_str("[]");
}

/// An array of texts, as [`push_array`] without the scratch copy.
pub(super) fn push_text_array<'a>(
    out: &mut String,
    items: impl IntoIterator<Item = Option<&'a str>>,
) {
    out.push_str("E'{");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Some(value) => push_element(out, value),
            None => out.push_str("NULL"),
        }
    }
    out.push_str("}'::text[]");
}

/// Appends one array element, quoted for the array reader and escaped for the string constant.
fn push_element(out: &mut String, value: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, byte) in value.bytes().enumerate() {
        let escaped = match byte {
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
    out.push('"');
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
    out.push_str("E'");
    for ch in text.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str(r"\\"),
            '\0' => out.push_str(r"\000"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(values: &[Option<&str>]) -> String {
        let mut out = String::new();
        push_text_array(&mut out, values.iter().copied());
        out
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
