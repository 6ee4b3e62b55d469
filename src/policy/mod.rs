//! Should-bid policy: a pure function of the posting, the settings and a `now` passed in — no
//! I/O, no clock reads — so the same posting and time always give the same decision, in the
//! worker and in `bidorch policy check`.
//!
//! - [`resolve`]: `[bidding]` and its per-kind and per-marketplace layers into one rule set per
//!   marketplace, every value checked where it is written ([`PolicyError`] names the key);
//!   `values`: those checks.
//! - [`rules`]: the rules and their evaluation; [`keywords`]: whole-word matching.
//! - [`amount`]: the bid amount strategy and currency minor units.
//! - [`cover_letter`]: the minijinja template, checked at start, cut to length.
//! - [`reason`]: [`SkipReason`], bounded codes for metrics and texts for the ledger.
//! - [`check`]: the `bidorch policy check` report.

pub mod amount;
pub mod check;
pub mod cover_letter;
pub mod keywords;
pub mod reason;
pub mod resolve;
pub mod rules;
#[cfg(test)]
mod test_support;
mod values;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

pub use self::amount::{format_amount, minor_unit};
pub use self::cover_letter::CoverLetters;
pub use self::reason::SkipReason;
use self::resolve::RuleSet;
use crate::config::BiddingSettings;
use crate::posting::Posting;

/// `[bidding]` does not make a policy. Each variant names the configuration key at fault.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
    #[error("configuration key `{key}`: not a valid cover letter template")]
    Template {
        key: String,
        #[source]
        source: minijinja::Error,
    },
}

impl PolicyError {
    /// The configuration key at fault, e.g. `bidding.marketplaces.upwork.cover_letter`.
    pub fn key(&self) -> &str {
        match self {
            Self::Invalid { key, .. } | Self::Template { key, .. } => key,
        }
    }
}

/// The policy's verdict.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Bid `amount` (scaled to the currency's minor unit, above zero, at most the posting's
    /// max) in `currency` with this cover letter.
    Bid {
        amount: Decimal,
        currency: String,
        cover_letter: String,
    },
    /// Do not bid, for these reasons: every rule the posting breaks, at least one.
    Skip(Vec<SkipReason>),
}

/// The should-bid rules, built and checked once from `[bidding]`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Policy {
    base: RuleSet,
    /// Marketplaces with a `[bidding.marketplaces.<name>]` section.
    marketplaces: BTreeMap<String, RuleSet>,
    letters: CoverLetters,
    /// How long the ledger remembers a posting (`ledger.retention`); `None`: forever.
    retention: Option<std::time::Duration>,
}

impl Policy {
    /// Builds the policy, or says which key of `[bidding]` is wrong (bad values, bounds that
    /// could never bid, a cover letter template that does not parse or render).
    pub fn new(settings: &BiddingSettings) -> Result<Self, PolicyError> {
        let base = resolve::rule_set(settings, None)?;
        let mut marketplaces = BTreeMap::new();
        for (name, overrides) in &settings.marketplaces {
            if crate::posting::PostingKey::new(name, "x").is_err() {
                return Err(PolicyError::Invalid {
                    key: format!("bidding.marketplaces.{name}"),
                    problem: "name must match ^[a-z0-9][a-z0-9_-]{0,31}$".to_owned(),
                });
            }
            let set = resolve::rule_set(settings, Some((name, overrides)))?;
            marketplaces.insert(name.clone(), set);
        }
        let keys: Vec<(String, &str)> = std::iter::once((
            "bidding.cover_letter".to_owned(),
            settings.cover_letter.as_str(),
        ))
        .chain(settings.marketplaces.iter().filter_map(|(name, o)| {
            let source = o.cover_letter.as_deref()?;
            Some((format!("bidding.marketplaces.{name}.cover_letter"), source))
        }))
        .collect();
        let letters = CoverLetters::new(keys.iter().map(|(k, s)| (k.as_str(), *s)))?;
        Ok(Self {
            base,
            marketplaces,
            letters,
            retention: None,
        })
    }

    /// Skips (`beyond_retention`) every posting whose `posted_at` is older than `retention`:
    /// the ledger may have pruned its row, so it could not tell a second bid from a first.
    /// A row is pruned only once its outcome is older than `retention`, and an outcome comes
    /// after the posting, so a posting inside the window still has its row. An undated
    /// posting cannot be judged and is decided as usual (`bidding.max_posting_age` refuses
    /// those too).
    pub fn with_retention(mut self, retention: std::time::Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    fn rule_set(&self, marketplace: &str) -> &RuleSet {
        self.marketplaces.get(marketplace).unwrap_or(&self.base)
    }

    /// Bids allowed per UTC day on `marketplace`, fleet-wide (reserved exactly by the ledger's
    /// claim); `None`: no cap.
    pub fn daily_cap(&self, marketplace: &str) -> Option<u64> {
        self.rule_set(marketplace).daily_cap
    }

    /// The credit budget of `marketplace` (`[bidding.budget]`, or its own), if it has one.
    pub fn budget(&self, marketplace: &str) -> Option<&crate::config::BudgetSettings> {
        self.rule_set(marketplace).budget.as_ref()
    }

    /// Decides on one posting, at `now`.
    pub fn decide(&self, posting: &Posting, now: DateTime<Utc>) -> Decision {
        let set = self.rule_set(posting.key.marketplace());
        let mut reasons = Vec::new();
        let priced = match &posting.budget {
            // Nothing to price a bid from: never a bid of 0.00, whatever else is configured.
            None => {
                reasons.push(SkipReason::NoBudget);
                None
            }
            Some(budget) => set
                .pricing(budget.kind)
                .check(budget, &mut reasons)
                .map(|amount| (amount, budget.currency.clone())),
        };
        set.rules.evaluate(posting, now, &mut reasons);
        if let (Some(retention), Some(posted)) = (self.retention, posting.posted_at) {
            let age = (now - posted).to_std().unwrap_or(std::time::Duration::ZERO);
            if age > retention {
                reasons.push(SkipReason::BeyondRetention { age, retention });
            }
        }
        let (Some((amount, currency)), true) = (priced, reasons.is_empty()) else {
            return Decision::Skip(reasons);
        };
        match self
            .letters
            .render(&set.letter_key, posting, amount, set.letter_max_chars)
        {
            Ok(cover_letter) => Decision::Bid {
                amount,
                currency,
                cover_letter,
            },
            Err(reason) => Decision::Skip(vec![reason]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{at, posting};
    use super::*;
    use crate::config::{BiddingOverrides, Fraction, Money};
    use crate::posting::BudgetKind;

    fn now() -> DateTime<Utc> {
        at("2026-11-26T12:00:00Z")
    }

    fn codes(d: &Decision) -> Vec<&'static str> {
        match d {
            Decision::Skip(r) => r.iter().map(SkipReason::code).collect(),
            Decision::Bid { .. } => vec![],
        }
    }

    #[test]
    fn the_defaults_bid_the_budget_max_with_the_default_letter() {
        let p = Policy::new(&BiddingSettings::default()).unwrap();
        assert_eq!(
            p.decide(&posting(), now()),
            Decision::Bid {
                amount: Decimal::new(150000, 2),
                currency: "USD".into(),
                cover_letter: "Hello! I read \"Build a Rust worker\" and would love to help."
                    .into(),
            }
        );
    }

    #[test]
    fn the_defaults_never_bid_without_a_budget_or_at_zero() {
        let p = Policy::new(&BiddingSettings::default()).unwrap();
        let mut none = posting();
        none.budget = None;
        assert_eq!(
            p.decide(&none, now()),
            Decision::Skip(vec![SkipReason::NoBudget])
        );
        let mut zero = posting();
        zero.budget.as_mut().unwrap().min = Some(Decimal::ZERO);
        zero.budget.as_mut().unwrap().max = Some(Decimal::ZERO);
        assert_eq!(codes(&p.decide(&zero, now())), ["amount_not_positive"]);
        let mut empty = posting();
        empty.budget.as_mut().unwrap().min = None;
        empty.budget.as_mut().unwrap().max = None;
        assert_eq!(codes(&p.decide(&empty, now())), ["no_budget"]);
    }

    #[test]
    fn postings_older_than_the_retention_are_skipped_and_undated_ones_decided() {
        let day = std::time::Duration::from_secs(86_400);
        let p = Policy::new(&BiddingSettings::default())
            .unwrap()
            .with_retention(90 * day);
        let mut old = posting();
        old.posted_at = Some(now() - chrono::Duration::days(91));
        assert_eq!(codes(&p.decide(&old, now())), ["beyond_retention"]);
        let mut inside = posting();
        inside.posted_at = Some(now() - chrono::Duration::days(89));
        assert!(matches!(p.decide(&inside, now()), Decision::Bid { .. }));
        let mut undated = posting();
        undated.posted_at = None;
        assert!(matches!(p.decide(&undated, now()), Decision::Bid { .. }));
    }

    #[test]
    fn every_reason_is_reported_at_once() {
        let s = BiddingSettings {
            min_budget: Money::from(5000),
            blocked_keywords: vec!["rust".into(), "rabbitmq".into()],
            require_payment_verified: true,
            ..BiddingSettings::default()
        };
        let mut p = posting();
        p.client.payment_verified = None;
        assert_eq!(
            codes(&Policy::new(&s).unwrap().decide(&p, now())),
            [
                "below_min_budget",
                "blocked_keyword",
                "blocked_keyword",
                "payment_verified_unknown"
            ]
        );
    }

    #[test]
    fn hourly_postings_use_the_hourly_pricing() {
        let mut s = BiddingSettings {
            min_budget: Money::from(100),
            bid_fraction: Fraction(Decimal::new(9, 1)),
            ..BiddingSettings::default()
        };
        s.hourly.min_budget = Some(Money::from(20));
        s.hourly.bid_fraction = Some(Fraction(Decimal::ONE));
        let policy = Policy::new(&s).unwrap();
        let mut hourly = posting();
        let b = hourly.budget.as_mut().unwrap();
        b.kind = BudgetKind::Hourly;
        b.min = Some(Decimal::new(25, 0));
        b.max = Some(Decimal::new(45, 0));
        match policy.decide(&hourly, now()) {
            Decision::Bid { amount, .. } => assert_eq!(amount, Decimal::new(4500, 2)),
            other => panic!("expected a bid, got {other:?}"),
        }
        assert!(matches!(
            policy.decide(&posting(), now()),
            Decision::Bid { amount, .. } if amount == Decimal::new(135000, 2)
        ));
    }

    #[test]
    fn marketplace_overrides_apply_to_that_marketplace_only() {
        let mut s = BiddingSettings {
            daily_bid_cap: 10,
            ..BiddingSettings::default()
        };
        s.marketplaces.insert(
            "upwork".into(),
            BiddingOverrides {
                min_budget: Some(Money::from(2000)),
                daily_bid_cap: Some(0),
                cover_letter: Some("Upwork: {{ title }} for {{ amount }} {{ currency }}".into()),
                ..BiddingOverrides::default()
            },
        );
        let policy = Policy::new(&s).unwrap();
        assert_eq!(
            codes(&policy.decide(&posting(), now())),
            ["below_min_budget"]
        );
        let mut guru = posting();
        guru.key = crate::posting::PostingKey::new("guru", "g1").unwrap();
        match policy.decide(&guru, now()) {
            Decision::Bid { cover_letter, .. } => assert!(cover_letter.starts_with("Hello!")),
            other => panic!("expected a bid, got {other:?}"),
        }
        assert_eq!(policy.daily_cap("upwork"), None);
        assert_eq!(policy.daily_cap("guru"), Some(10));
        s.marketplaces.get_mut("upwork").unwrap().min_budget = None;
        let policy = Policy::new(&s).unwrap();
        match policy.decide(&posting(), now()) {
            Decision::Bid { cover_letter, .. } => {
                assert_eq!(cover_letter, "Upwork: Build a Rust worker for 1500.00 USD");
            }
            other => panic!("expected a bid, got {other:?}"),
        }
    }

    #[test]
    fn a_bad_template_fails_new_naming_its_key() {
        let mut s = BiddingSettings::default();
        s.marketplaces.insert(
            "upwork".into(),
            BiddingOverrides {
                cover_letter: Some("{% if title %}unclosed".into()),
                ..BiddingOverrides::default()
            },
        );
        let err = Policy::new(&s).unwrap_err();
        assert_eq!(err.key(), "bidding.marketplaces.upwork.cover_letter");
        let s = BiddingSettings {
            cover_letter: "{{ title".into(),
            ..BiddingSettings::default()
        };
        assert_eq!(Policy::new(&s).unwrap_err().key(), "bidding.cover_letter");
    }

    #[test]
    fn a_long_letter_is_cut_to_the_limit() {
        let s = BiddingSettings {
            cover_letter_max_chars: 40,
            ..BiddingSettings::default()
        };
        let mut p = posting();
        p.title = "x".repeat(10_000);
        match Policy::new(&s).unwrap().decide(&p, now()) {
            Decision::Bid { cover_letter, .. } => {
                assert_eq!(cover_letter.chars().count(), 40);
                assert!(cover_letter.ends_with('…'));
            }
            other => panic!("expected a bid, got {other:?}"),
        }
    }

    #[test]
    fn amounts_follow_the_currency_minor_unit() {
        let s = BiddingSettings {
            bid_fraction: Fraction(Decimal::new(3333, 4)),
            ..BiddingSettings::default()
        };
        let policy = Policy::new(&s).unwrap();
        for (currency, expected) in [("JPY", "499"), ("KWD", "499.950"), ("EUR", "499.95")] {
            let mut p = posting();
            p.budget.as_mut().unwrap().currency = currency.into();
            match policy.decide(&p, now()) {
                Decision::Bid { amount, .. } => assert_eq!(amount.to_string(), expected),
                other => panic!("expected a bid, got {other:?}"),
            }
        }
    }
}
