//! How an error is shown: its message and every cause, in one line.
//!
//! bidorch's error types follow one rule — a message never repeats its source (the source is a
//! `#[source]`, not part of the text) — so an error shown with `%e` alone says what failed but not
//! why. Wherever an error is logged or turned into text, show it as [`Chain`]:
//! `tracing::warn!(error = %Chain(&e), "…")`.

use std::fmt;

/// Displays an error and its causes joined by `": "`, e.g.
/// `ledger unreachable: pool timed out while waiting for an open connection`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// [`Chain`] as an owned string (for outcome details and headers).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    Chain(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("ledger unreachable")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn shows_every_cause_once() {
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(chain(&e), "ledger unreachable: connection refused");
    }
}
