//! The rule set of one marketplace, already resolved and normalised, and its evaluation: every
//! rule runs and adds its own reason, so a skip says everything that was wrong.
//!
//! A rule can only judge what the posting says. A rule that asks for proof of something good
//! (`min_client_rating`, `require_payment_verified`, `max_posting_age`,
//! `allowed_client_countries`) skips a posting that lacks the field, with an `*_unknown` reason:
//! unproven is not eligible. A rule that excludes something bad (`blocked_client_countries`)
//! lets a posting without the field through: nothing known is blocked.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::SkipReason;
use super::amount::AmountStrategy;
use super::keywords::{contains_words, normalize};
use crate::config::{Money, SkillsMatch};
use crate::posting::{Budget, Posting};

/// Budget range and amount for one kind of budget (fixed or hourly) on one marketplace.
#[derive(Clone, Debug, PartialEq)]
pub struct Pricing {
    /// Skip when the budget (max, else min) is below it.
    pub min_budget: Money,
    /// Skip when the budget (min, else max) is above it.
    pub max_budget: Option<Money>,
    pub amount: AmountStrategy,
}

impl Pricing {
    /// Checks the budget range; returns the bid amount when the budget can be priced (a skip
    /// for another reason still reports an unpriceable budget).
    pub fn check(&self, budget: &Budget, reasons: &mut Vec<SkipReason>) -> Option<Decimal> {
        let currency = &budget.currency;
        let (Some(high), Some(low)) = (budget.max.or(budget.min), budget.min.or(budget.max)) else {
            reasons.push(SkipReason::NoBudget);
            return None;
        };
        if let Some(min) = self.min_budget.for_currency(currency)
            && high < min
        {
            reasons.push(SkipReason::BelowMinBudget {
                budget: high,
                min,
                currency: currency.clone(),
            });
        }
        if let Some(max) = self
            .max_budget
            .as_ref()
            .and_then(|m| m.for_currency(currency))
            && low > max
        {
            reasons.push(SkipReason::AboveMaxBudget {
                budget: low,
                max,
                currency: currency.clone(),
            });
        }
        match self.amount.amount(budget) {
            Ok(amount) => Some(amount),
            Err(reason) => {
                reasons.push(reason);
                None
            }
        }
    }
}

/// The rules that do not depend on the budget's kind, normalised for comparison.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    /// Upper-case ISO 4217 codes; empty: any.
    pub allowed_currencies: Vec<String>,
    /// [`normalize`]d skill names.
    pub required_skills: Vec<String>,
    pub required_skills_match: SkillsMatch,
    /// [`normalize`]d keywords, none empty.
    pub blocked_keywords: Vec<String>,
    pub min_client_rating: Option<f64>,
    pub require_payment_verified: bool,
    pub max_posting_age: Option<Duration>,
    /// Upper-case ISO 3166-1 alpha-2 codes; empty: any.
    pub allowed_client_countries: Vec<String>,
    pub blocked_client_countries: Vec<String>,
}

impl Rules {
    /// Adds a reason for every rule `posting` breaks at `now`.
    pub fn evaluate(&self, posting: &Posting, now: DateTime<Utc>, reasons: &mut Vec<SkipReason>) {
        if let Some(budget) = &posting.budget
            && !self.allowed_currencies.is_empty()
            && !self.allowed_currencies.contains(&budget.currency)
        {
            reasons.push(SkipReason::CurrencyNotAllowed {
                currency: budget.currency.clone(),
            });
        }
        self.skills(posting, reasons);
        self.keywords(posting, reasons);
        self.client(posting, reasons);
        if let Some(max) = self.max_posting_age {
            match posting.posted_at {
                None => reasons.push(SkipReason::PostedAtUnknown),
                Some(posted) => {
                    // A posting dated in the future (clock skew) is new, not an error.
                    let age = (now - posted).to_std().unwrap_or(Duration::ZERO);
                    if age > max {
                        reasons.push(SkipReason::PostingTooOld { age, max });
                    }
                }
            }
        }
    }

    fn skills(&self, posting: &Posting, reasons: &mut Vec<SkipReason>) {
        if self.required_skills.is_empty() {
            return;
        }
        let listed: Vec<String> = posting.skills.iter().map(|s| normalize(s)).collect();
        let missing: Vec<String> = self
            .required_skills
            .iter()
            .filter(|r| !listed.contains(r))
            .cloned()
            .collect();
        let met = match self.required_skills_match {
            SkillsMatch::Any => missing.len() < self.required_skills.len(),
            SkillsMatch::All => missing.is_empty(),
        };
        if !met {
            reasons.push(SkipReason::MissingRequiredSkills { missing });
        }
    }

    fn keywords(&self, posting: &Posting, reasons: &mut Vec<SkipReason>) {
        if self.blocked_keywords.is_empty() {
            return;
        }
        let texts: Vec<String> = [&posting.title, &posting.description]
            .into_iter()
            .chain(&posting.skills)
            .map(|t| normalize(t))
            .collect();
        for keyword in &self.blocked_keywords {
            if texts.iter().any(|t| contains_words(t, keyword)) {
                reasons.push(SkipReason::BlockedKeyword(keyword.clone()));
            }
        }
    }

    fn client(&self, posting: &Posting, reasons: &mut Vec<SkipReason>) {
        let client = &posting.client;
        if let Some(min) = self.min_client_rating {
            match client.rating {
                None => reasons.push(SkipReason::ClientRatingUnknown),
                Some(rating) if rating < min => {
                    reasons.push(SkipReason::ClientRatingTooLow { rating, min });
                }
                Some(_) => {}
            }
        }
        if self.require_payment_verified {
            match client.payment_verified {
                None => reasons.push(SkipReason::PaymentVerifiedUnknown),
                Some(false) => reasons.push(SkipReason::PaymentNotVerified),
                Some(true) => {}
            }
        }
        let country = client
            .country
            .as_deref()
            .map(|c| c.trim().to_ascii_uppercase())
            .filter(|c| !c.is_empty());
        match country {
            None if !self.allowed_client_countries.is_empty() => {
                reasons.push(SkipReason::ClientCountryUnknown);
            }
            None => {}
            Some(country) => {
                if !self.allowed_client_countries.is_empty()
                    && !self.allowed_client_countries.contains(&country)
                {
                    reasons.push(SkipReason::ClientCountryNotAllowed {
                        country: country.clone(),
                    });
                }
                if self.blocked_client_countries.contains(&country) {
                    reasons.push(SkipReason::ClientCountryBlocked { country });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::{at, posting};

    fn reasons(rules: &Rules, p: &Posting) -> Vec<&'static str> {
        let mut r = Vec::new();
        rules.evaluate(p, at("2026-11-26T12:00:00Z"), &mut r);
        r.iter().map(SkipReason::code).collect()
    }

    #[test]
    fn no_rules_pass_anything() {
        assert!(reasons(&Rules::default(), &posting()).is_empty());
    }

    #[test]
    fn allowed_currencies() {
        let rules = Rules {
            allowed_currencies: vec!["USD".into()],
            ..Rules::default()
        };
        assert!(reasons(&rules, &posting()).is_empty());
        let mut jpy = posting();
        jpy.budget.as_mut().unwrap().currency = "JPY".into();
        assert_eq!(reasons(&rules, &jpy), ["currency_not_allowed"]);
    }

    #[test]
    fn required_skills_any_and_all() {
        let mut rules = Rules {
            required_skills: vec!["rust".into(), "kafka".into()],
            ..Rules::default()
        };
        assert!(reasons(&rules, &posting()).is_empty(), "rust is listed");
        rules.required_skills_match = SkillsMatch::All;
        let mut r = Vec::new();
        rules.evaluate(&posting(), at("2026-11-26T12:00:00Z"), &mut r);
        assert_eq!(
            r,
            [SkipReason::MissingRequiredSkills {
                missing: vec!["kafka".into()]
            }]
        );
        rules.required_skills = vec!["go".into()];
        rules.required_skills_match = SkillsMatch::Any;
        assert_eq!(reasons(&rules, &posting()), ["missing_required_skills"]);
    }

    #[test]
    fn blocked_keywords_in_title_description_and_skills_each_reported() {
        let rules = Rules {
            blocked_keywords: vec!["crypto".into(), "redis".into(), "worker".into()],
            ..Rules::default()
        };
        let mut p = posting();
        p.description = "Some CRYPTO work".into();
        let mut r = Vec::new();
        rules.evaluate(&p, at("2026-11-26T12:00:00Z"), &mut r);
        assert_eq!(
            r,
            [
                SkipReason::BlockedKeyword("crypto".into()),
                SkipReason::BlockedKeyword("redis".into()),
                SkipReason::BlockedKeyword("worker".into()),
            ]
        );
        p.title = "Workers wanted".into();
        p.description = "cryptocurrency".into();
        p.skills = vec!["redis-cluster".into()];
        assert_eq!(
            reasons(&rules, &p),
            ["blocked_keyword"],
            "whole words only: redis-cluster matches, cryptocurrency and workers do not"
        );
    }

    #[test]
    fn min_client_rating_known_low_and_unknown() {
        let rules = Rules {
            min_client_rating: Some(4.5),
            ..Rules::default()
        };
        assert!(reasons(&rules, &posting()).is_empty());
        let mut p = posting();
        p.client.rating = Some(4.2);
        assert_eq!(reasons(&rules, &p), ["client_rating_too_low"]);
        p.client.rating = None;
        assert_eq!(reasons(&rules, &p), ["client_rating_unknown"]);
    }

    #[test]
    fn payment_verified_required_known_false_and_unknown() {
        let rules = Rules {
            require_payment_verified: true,
            ..Rules::default()
        };
        assert!(reasons(&rules, &posting()).is_empty());
        let mut p = posting();
        p.client.payment_verified = Some(false);
        assert_eq!(reasons(&rules, &p), ["payment_not_verified"]);
        p.client.payment_verified = None;
        assert_eq!(reasons(&rules, &p), ["payment_verified_unknown"]);
    }

    #[test]
    fn max_posting_age_old_undated_and_future() {
        let rules = Rules {
            max_posting_age: Some(Duration::from_secs(3600)),
            ..Rules::default()
        };
        let mut p = posting();
        p.posted_at = Some(at("2026-11-26T11:30:00Z"));
        assert!(reasons(&rules, &p).is_empty());
        p.posted_at = Some(at("2026-11-26T10:00:00Z"));
        assert_eq!(reasons(&rules, &p), ["posting_too_old"]);
        p.posted_at = Some(at("2026-11-27T00:00:00Z"));
        assert!(reasons(&rules, &p).is_empty(), "future dates are new");
        p.posted_at = None;
        assert_eq!(reasons(&rules, &p), ["posted_at_unknown"]);
    }

    #[test]
    fn client_countries_allow_and_deny() {
        let allow = Rules {
            allowed_client_countries: vec!["US".into(), "DE".into()],
            ..Rules::default()
        };
        let deny = Rules {
            blocked_client_countries: vec!["US".into()],
            ..Rules::default()
        };
        let mut p = posting();
        assert!(reasons(&allow, &p).is_empty());
        assert_eq!(reasons(&deny, &p), ["client_country_blocked"]);
        p.client.country = Some(" fr ".into());
        assert_eq!(reasons(&allow, &p), ["client_country_not_allowed"]);
        assert!(reasons(&deny, &p).is_empty());
        p.client.country = None;
        assert_eq!(reasons(&allow, &p), ["client_country_unknown"]);
        assert!(reasons(&deny, &p).is_empty(), "nothing known is blocked");
    }

    fn pricing(min: i64, max: Option<i64>) -> Pricing {
        Pricing {
            min_budget: Money::from(min),
            max_budget: max.map(Money::from),
            amount: AmountStrategy {
                fraction: Decimal::ONE,
                floor: None,
                ceiling: None,
            },
        }
    }

    fn budget(min: Option<i64>, max: Option<i64>) -> Budget {
        Budget {
            min: min.map(Decimal::from),
            max: max.map(Decimal::from),
            currency: "USD".into(),
            kind: crate::posting::BudgetKind::Fixed,
        }
    }

    fn check(p: &Pricing, b: &Budget) -> (Option<Decimal>, Vec<&'static str>) {
        let mut r = Vec::new();
        let amount = p.check(b, &mut r);
        (amount, r.iter().map(SkipReason::code).collect())
    }

    #[test]
    fn budget_range_overlaps_min_and_max() {
        let p = pricing(100, Some(1000));
        assert!(check(&p, &budget(Some(50), Some(150))).1.is_empty());
        assert_eq!(
            check(&p, &budget(Some(10), Some(99))).1,
            ["below_min_budget"]
        );
        assert_eq!(check(&p, &budget(Some(1001), None)).1, ["above_max_budget"]);
        assert_eq!(check(&p, &budget(None, None)).1, ["no_budget"]);
    }

    #[test]
    fn per_currency_bounds_apply_to_their_currency_only() {
        let p = Pricing {
            min_budget: Money::PerCurrency([("JPY".to_owned(), Decimal::from(10_000))].into()),
            ..pricing(0, None)
        };
        assert!(check(&p, &budget(None, Some(50))).1.is_empty());
        let mut jpy = budget(None, Some(5000));
        jpy.currency = "JPY".into();
        assert_eq!(check(&p, &jpy).1, ["below_min_budget"]);
    }

    #[test]
    fn an_unpriceable_budget_is_reported_with_the_other_reasons() {
        let (amount, codes) = check(&pricing(100, None), &budget(Some(0), Some(0)));
        assert_eq!(amount, None);
        assert_eq!(codes, ["below_min_budget", "amount_not_positive"]);
    }
}
