//! Whole-word, case-insensitive keyword matching: `rust` matches "Rust-based" and "rust" but not
//! "trusty"; `c++` matches "C++ developer"; a multi-word keyword matches across any whitespace.
//! A keyword's edge that is a word character (letter, digit, `_`) must meet a non-word character
//! or the end of the text — the edges of a regex `\bkeyword\b`, without a regex engine.

/// Lower-cased with runs of whitespace collapsed to one space: the form both keywords and the
/// texts they are searched in are compared in.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `keyword` occurs in `text` as whole words; both already [`normalize`]d, `keyword`
/// not empty.
pub fn contains_words(text: &str, keyword: &str) -> bool {
    let (Some(first), Some(last)) = (keyword.chars().next(), keyword.chars().next_back()) else {
        return false;
    };
    let mut from = 0;
    while let Some(found) = text[from..].find(keyword) {
        let start = from + found;
        let end = start + keyword.len();
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        let starts_a_word = !is_word(first) || before.is_none_or(|c| !is_word(c));
        let ends_a_word = !is_word(last) || after.is_none_or(|c| !is_word(c));
        if starts_a_word && ends_a_word {
            return true;
        }
        // Next char boundary: occurrences may overlap ("ab ab" in "xab ab ab").
        from = start + text[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(text: &str, keyword: &str) -> bool {
        contains_words(&normalize(text), &normalize(keyword))
    }

    #[test]
    fn whole_words_only() {
        assert!(matches("Build a Rust worker", "rust"));
        assert!(matches("rust", "RUST"));
        assert!(matches("Rust-based (rust!)", "rust"));
        assert!(!matches("a trusty helper", "rust"));
        assert!(!matches("rusty", "rust"));
        assert!(!matches("crypto_miner", "crypto"), "_ is a word character");
    }

    #[test]
    fn case_insensitive_beyond_ascii() {
        assert!(matches("ÜBER Projekt", "über"));
        assert!(!matches("überall", "über"));
    }

    #[test]
    fn punctuation_at_a_keyword_edge_needs_no_boundary() {
        assert!(matches("Senior C++ developer", "c++"));
        assert!(matches("we use node.js.", "node.js"));
        assert!(!matches("abc++", "c++"));
    }

    #[test]
    fn multi_word_keywords_match_across_whitespace() {
        assert!(matches("An unpaid\n\t trial task", "unpaid  trial"));
        assert!(!matches("unpaid, trial", "unpaid trial"));
    }

    #[test]
    fn overlapping_occurrences_are_all_tried() {
        assert!(matches("xab ab ab", "ab ab"));
        assert!(!matches("xab", "ab"));
    }

    #[test]
    fn empty_keywords_never_match() {
        assert!(!contains_words("anything", ""));
    }
}
