//! Why the policy declined a posting: one typed variant per rule outcome, with a bounded
//! [`code`](SkipReason::code) for metric labels and a [`describe`](SkipReason::describe) text for
//! the ledger (`code` or `code:detail`; readers that need the code split at the first `:`).

use std::time::Duration;

use rust_decimal::Decimal;

/// One reason not to bid. A decision carries every reason that applies, in rule order.
#[derive(Clone, Debug, PartialEq)]
pub enum SkipReason {
    /// The posting has no budget (or a budget with neither min nor max): there is nothing to
    /// price a bid from.
    NoBudget,
    /// The budget's currency is not in `allowed_currencies`.
    CurrencyNotAllowed { currency: String },
    /// The budget (max, else min) is below `min_budget`.
    BelowMinBudget {
        budget: Decimal,
        min: Decimal,
        currency: String,
    },
    /// The budget (min, else max) is above `max_budget`.
    AboveMaxBudget {
        budget: Decimal,
        max: Decimal,
        currency: String,
    },
    /// The bid amount came out zero or negative (after fraction, floor, ceiling and rounding).
    AmountNotPositive { currency: String },
    /// The amount cannot be written with the currency's minor unit (absurdly large budget).
    AmountOutOfRange { currency: String },
    /// `required_skills` not met; `missing` are the required skills the posting lacks.
    MissingRequiredSkills { missing: Vec<String> },
    /// Title, description or a skill contains this blocked keyword as whole words.
    BlockedKeyword(String),
    /// `min_client_rating` is set but the posting does not rate the client.
    ClientRatingUnknown,
    /// The client's rating is below `min_client_rating`.
    ClientRatingTooLow { rating: f64, min: f64 },
    /// `require_payment_verified` is set but the posting does not say.
    PaymentVerifiedUnknown,
    /// The client's payment method is not verified.
    PaymentNotVerified,
    /// `max_posting_age` is set but the posting has no `posted_at`.
    PostedAtUnknown,
    /// The posting is older than `max_posting_age` at decision time.
    PostingTooOld { age: Duration, max: Duration },
    /// The posting is older than `ledger.retention`: its row may be pruned.
    BeyondRetention { age: Duration, retention: Duration },
    /// `allowed_client_countries` is set but the posting does not give the client's country.
    ClientCountryUnknown,
    /// The client's country is not in `allowed_client_countries`.
    ClientCountryNotAllowed { country: String },
    /// The client's country is in `blocked_client_countries`.
    ClientCountryBlocked { country: String },
    /// The cover letter template failed on this posting (it rendered at start-up).
    CoverLetterFailed { error: String },
}

/// Every code, for documentation and for metrics that pre-register their label values.
pub const CODES: &[&str] = &[
    "no_budget",
    "currency_not_allowed",
    "below_min_budget",
    "above_max_budget",
    "amount_not_positive",
    "amount_out_of_range",
    "missing_required_skills",
    "blocked_keyword",
    "client_rating_unknown",
    "client_rating_too_low",
    "payment_verified_unknown",
    "payment_not_verified",
    "posted_at_unknown",
    "posting_too_old",
    "beyond_retention",
    "client_country_unknown",
    "client_country_not_allowed",
    "client_country_blocked",
    "cover_letter_failed",
];

/// Longest detail kept in the ledger text: details quote postings, which are not ours to size.
const MAX_DETAIL_CHARS: usize = 200;

impl SkipReason {
    /// Bounded code, safe as a metric label (one of [`CODES`]).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoBudget => "no_budget",
            Self::CurrencyNotAllowed { .. } => "currency_not_allowed",
            Self::BelowMinBudget { .. } => "below_min_budget",
            Self::AboveMaxBudget { .. } => "above_max_budget",
            Self::AmountNotPositive { .. } => "amount_not_positive",
            Self::AmountOutOfRange { .. } => "amount_out_of_range",
            Self::MissingRequiredSkills { .. } => "missing_required_skills",
            Self::BlockedKeyword(_) => "blocked_keyword",
            Self::ClientRatingUnknown => "client_rating_unknown",
            Self::ClientRatingTooLow { .. } => "client_rating_too_low",
            Self::PaymentVerifiedUnknown => "payment_verified_unknown",
            Self::PaymentNotVerified => "payment_not_verified",
            Self::PostedAtUnknown => "posted_at_unknown",
            Self::PostingTooOld { .. } => "posting_too_old",
            Self::BeyondRetention { .. } => "beyond_retention",
            Self::ClientCountryUnknown => "client_country_unknown",
            Self::ClientCountryNotAllowed { .. } => "client_country_not_allowed",
            Self::ClientCountryBlocked { .. } => "client_country_blocked",
            Self::CoverLetterFailed { .. } => "cover_letter_failed",
        }
    }

    /// What went wrong beyond the code, if anything (`90 USD < 100`).
    pub fn detail(&self) -> Option<String> {
        let detail = match self {
            Self::NoBudget
            | Self::ClientRatingUnknown
            | Self::PaymentVerifiedUnknown
            | Self::PaymentNotVerified
            | Self::PostedAtUnknown
            | Self::ClientCountryUnknown => return None,
            Self::CurrencyNotAllowed { currency }
            | Self::AmountNotPositive { currency }
            | Self::AmountOutOfRange { currency } => currency.clone(),
            Self::BelowMinBudget {
                budget,
                min,
                currency,
            } => format!("{budget} {currency} < {min}"),
            Self::AboveMaxBudget {
                budget,
                max,
                currency,
            } => format!("{budget} {currency} > {max}"),
            Self::MissingRequiredSkills { missing } => missing.join(","),
            Self::BlockedKeyword(k) => k.clone(),
            Self::ClientRatingTooLow { rating, min } => format!("{rating} < {min}"),
            Self::PostingTooOld { age, max } => format!(
                "{} > {}",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(*max)
            ),
            // In days, as retention is set: humantime would say "2months 29days 2h 52m 48s".
            Self::BeyondRetention { age, retention } => format!(
                "{}d > ledger.retention {}",
                age.as_secs() / 86_400,
                crate::text::duration(*retention)
            ),
            Self::ClientCountryNotAllowed { country } | Self::ClientCountryBlocked { country } => {
                country.clone()
            }
            Self::CoverLetterFailed { error } => error.clone(),
        };
        Some(match detail.char_indices().nth(MAX_DETAIL_CHARS) {
            Some((cut, _)) => format!("{}…", &detail[..cut]),
            None => detail,
        })
    }

    /// Full text for the ledger: `code`, or `code:detail` (`blocked_keyword:crypto`).
    pub fn describe(&self) -> String {
        match self.detail() {
            Some(detail) => format!("{}:{detail}", self.code()),
            None => self.code().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_codes_and_ledger_texts_are_kept() {
        assert_eq!(SkipReason::NoBudget.describe(), "no_budget");
        assert_eq!(
            SkipReason::BlockedKeyword("crypto".into()).describe(),
            "blocked_keyword:crypto"
        );
        let below = SkipReason::BelowMinBudget {
            budget: Decimal::new(90, 0),
            min: Decimal::new(100, 0),
            currency: "USD".into(),
        };
        assert_eq!(below.code(), "below_min_budget");
        assert_eq!(below.describe(), "below_min_budget:90 USD < 100");
    }

    #[test]
    fn every_code_is_listed_and_the_text_starts_with_it() {
        let all = [
            SkipReason::NoBudget,
            SkipReason::CurrencyNotAllowed {
                currency: "XYZ".into(),
            },
            SkipReason::MissingRequiredSkills {
                missing: vec!["rust".into(), "go".into()],
            },
            SkipReason::ClientRatingTooLow {
                rating: 3.5,
                min: 4.0,
            },
            SkipReason::PostingTooOld {
                age: Duration::from_millis(90_061_500),
                max: Duration::from_secs(86_400),
            },
            SkipReason::ClientCountryBlocked {
                country: "KP".into(),
            },
            SkipReason::BeyondRetention {
                age: Duration::from_secs(91 * 86_400),
                retention: Duration::from_secs(90 * 86_400),
            },
        ];
        for r in &all {
            assert!(CODES.contains(&r.code()), "{r:?}");
            assert!(r.describe().starts_with(r.code()));
        }
        assert_eq!(
            all[2].describe(),
            "missing_required_skills:rust,go",
            "the detail lists what is missing"
        );
        assert_eq!(all[4].describe(), "posting_too_old:1day 1h 1m 1s > 1day");
        assert_eq!(
            all[6].describe(),
            "beyond_retention:91d > ledger.retention 90d"
        );
    }

    #[test]
    fn long_details_are_cut_on_a_char_boundary() {
        let r = SkipReason::CoverLetterFailed {
            error: "é".repeat(500),
        };
        let text = r.describe();
        assert_eq!(
            text.chars().count(),
            "cover_letter_failed:".len() + MAX_DETAIL_CHARS + 1
        );
        assert!(text.ends_with('…'));
    }
}
