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
    /// Each cause once: other crates' errors often repeat their source in their own message
    /// (sqlx's "while executing migrations: error returned from database: …"), so a cause whose
    /// text the previous message already holds is not written again.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !shown.contains(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
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

    /// A foreign error whose message repeats its source, as sqlx's migration errors do.
    #[derive(Debug, thiserror::Error)]
    #[error("while executing migrations: {0}")]
    struct Repeats(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("error returned from database: {0}")]
    struct Inner(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("ledger migration failed")]
    struct Migration(#[source] Repeats);

    #[test]
    fn a_cause_its_parent_already_shows_is_not_repeated() {
        let e = Migration(Repeats(Inner(std::io::Error::other(
            "prepared statement \"sqlx_s_1\" already exists",
        ))));
        assert_eq!(
            chain(&e),
            "ledger migration failed: while executing migrations: error returned from database: \
             prepared statement \"sqlx_s_1\" already exists"
        );
    }
}
