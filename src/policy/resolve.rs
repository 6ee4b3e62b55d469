//! From `[bidding]` to one [`RuleSet`] per marketplace: layers merged key by key, each value
//! checked where it is written, so an error names the exact key (`bidding.hourly.bid_floor`,
//! `bidding.marketplaces.upwork.min_budget`).
//!
//! Layers, most specific first. Any key: `[bidding.marketplaces.<name>]`, then `[bidding]`.
//! Budget and amount keys (`min_budget`, `max_budget`, `bid_fraction`, `bid_floor`,
//! `bid_ceiling`) for a posting of kind K: `[bidding.marketplaces.<name>.K]`, `[bidding.K]`,
//! `[bidding.marketplaces.<name>]`, `[bidding]` — a value for the kind wins over a value for
//! both kinds, because hourly rates and fixed prices are different units.

use rust_decimal::Decimal;

use super::PolicyError;
use super::amount::AmountStrategy;
use super::keywords::normalize;
use super::rules::{Pricing, Rules};
use super::values::{codes, invalid, non_negative, ordered};
use crate::config::{
    BidCost, BiddingOverrides, BiddingSettings, BudgetSettings, Money, PricingOverrides,
};
use crate::posting::BudgetKind;

/// Everything the policy needs for one marketplace.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSet {
    pub rules: Rules,
    pub fixed: Pricing,
    pub hourly: Pricing,
    /// `None`: no cap.
    pub daily_cap: Option<u64>,
    /// `None`: no credit budget.
    pub budget: Option<BudgetSettings>,
    /// Configuration key of the cover letter template (its name in [`super::CoverLetters`]).
    pub letter_key: String,
    pub letter_max_chars: usize,
}

impl RuleSet {
    /// The pricing for a budget of `kind`.
    pub fn pricing(&self, kind: BudgetKind) -> &Pricing {
        match kind {
            BudgetKind::Fixed => &self.fixed,
            BudgetKind::Hourly => &self.hourly,
        }
    }
}

/// One layer of settings and the key prefix its values are written under.
struct Layer<'a> {
    prefix: String,
    values: &'a BiddingOverrides,
}

/// The rule set of the marketplace `overrides` is for (`None`: the base, `[bidding]` alone).
pub fn rule_set(
    settings: &BiddingSettings,
    overrides: Option<(&str, &BiddingOverrides)>,
) -> Result<RuleSet, PolicyError> {
    let base = base_layer(settings);
    let mut layers = vec![Layer {
        prefix: "bidding".to_owned(),
        values: &base,
    }];
    if let Some((name, values)) = overrides {
        layers.push(Layer {
            prefix: format!("bidding.marketplaces.{name}"),
            values,
        });
    }
    let list = |name: &str, get: fn(&BiddingOverrides) -> Option<&Vec<String>>| {
        let (prefix, list) = pick(&layers, get).unwrap_or_default();
        (format!("{prefix}.{name}"), list)
    };
    let (key, currencies) = list("allowed_currencies", |v| v.allowed_currencies.as_ref());
    let allowed_currencies = codes(&key, &currencies, 3, "an ISO 4217 currency code like USD")?;
    let (key, countries) = list("allowed_client_countries", |v| {
        v.allowed_client_countries.as_ref()
    });
    let allowed_client_countries = codes(&key, &countries, 2, "an ISO 3166-1 code like US")?;
    let (key, countries) = list("blocked_client_countries", |v| {
        v.blocked_client_countries.as_ref()
    });
    let blocked_client_countries = codes(&key, &countries, 2, "an ISO 3166-1 code like US")?;
    let words = |list: Vec<String>| -> Vec<String> {
        list.iter()
            .map(|w| normalize(w))
            .filter(|w| !w.is_empty())
            .collect()
    };
    let min_client_rating = pick(&layers, |v| v.min_client_rating.as_ref());
    if let Some((prefix, r)) = &min_client_rating
        && !(r.is_finite() && *r >= 0.0)
    {
        return Err(invalid(
            format!("{prefix}.min_client_rating"),
            "must be a number of at least 0",
        ));
    }
    let max_posting_age = pick(&layers, |v| v.max_posting_age.as_ref());
    if let Some((prefix, age)) = &max_posting_age
        && age.is_zero()
    {
        return Err(invalid(
            format!("{prefix}.max_posting_age"),
            "must be positive (leave it out for no limit)",
        ));
    }
    let (prefix, letter_max_chars) =
        pick(&layers, |v| v.cover_letter_max_chars.as_ref()).unwrap_or_default();
    if letter_max_chars == 0 {
        return Err(invalid(
            format!("{prefix}.cover_letter_max_chars"),
            "must be at least 1",
        ));
    }
    let rules = Rules {
        allowed_currencies,
        required_skills: words(list("required_skills", |v| v.required_skills.as_ref()).1),
        required_skills_match: pick(&layers, |v| v.required_skills_match.as_ref())
            .map(|(_, m)| m)
            .unwrap_or_default(),
        blocked_keywords: words(list("blocked_keywords", |v| v.blocked_keywords.as_ref()).1),
        min_client_rating: min_client_rating.map(|(_, r)| r),
        require_payment_verified: pick(&layers, |v| v.require_payment_verified.as_ref())
            .is_some_and(|(_, r)| r),
        max_posting_age: max_posting_age.map(|(_, a)| a),
        allowed_client_countries,
        blocked_client_countries,
    };
    let letter_prefix = pick(&layers, |v| v.cover_letter.as_ref()).map(|(p, _)| p);
    Ok(RuleSet {
        rules,
        fixed: pricing(&layers, "fixed", |v| &v.fixed)?,
        hourly: pricing(&layers, "hourly", |v| &v.hourly)?,
        daily_cap: pick(&layers, |v| v.daily_bid_cap.as_ref())
            .map(|(_, cap)| cap)
            .filter(|cap| *cap > 0),
        budget: budget(&layers)?,
        letter_key: format!(
            "{}.cover_letter",
            letter_prefix.unwrap_or_else(|| "bidding".to_owned())
        ),
        letter_max_chars,
    })
}

/// The value of the most specific layer that sets it, with that layer's key prefix.
fn pick<T: Clone>(
    layers: &[Layer<'_>],
    get: impl Fn(&BiddingOverrides) -> Option<&T>,
) -> Option<(String, T)> {
    layers
        .iter()
        .rev()
        .find_map(|l| get(l.values).map(|v| (l.prefix.clone(), v.clone())))
}

/// `[bidding]` as a layer that sets every key it has a value for.
fn base_layer(s: &BiddingSettings) -> BiddingOverrides {
    BiddingOverrides {
        min_budget: Some(s.min_budget.clone()),
        max_budget: s.max_budget.clone(),
        bid_fraction: Some(s.bid_fraction),
        bid_floor: s.bid_floor.clone(),
        bid_ceiling: s.bid_ceiling.clone(),
        allowed_currencies: Some(s.allowed_currencies.clone()),
        required_skills: Some(s.required_skills.clone()),
        required_skills_match: Some(s.required_skills_match),
        blocked_keywords: Some(s.blocked_keywords.clone()),
        min_client_rating: s.min_client_rating,
        require_payment_verified: Some(s.require_payment_verified),
        max_posting_age: s.max_posting_age,
        allowed_client_countries: Some(s.allowed_client_countries.clone()),
        blocked_client_countries: Some(s.blocked_client_countries.clone()),
        daily_bid_cap: Some(s.daily_bid_cap),
        cover_letter: Some(s.cover_letter.clone()),
        cover_letter_max_chars: Some(s.cover_letter_max_chars),
        fixed: s.fixed.clone(),
        hourly: s.hourly.clone(),
        budget: s.budget.clone(),
    }
}

/// The credit budget of the layers, its values checked under the key that set it.
fn budget(layers: &[Layer<'_>]) -> Result<Option<BudgetSettings>, PolicyError> {
    let Some((prefix, budget)) = pick(layers, |v| v.budget.as_ref()) else {
        return Ok(None);
    };
    let key = |name: &str| format!("{prefix}.budget.{name}");
    let negative = |d: Decimal| d.is_sign_negative() && !d.is_zero();
    if negative(budget.credits) {
        return Err(invalid(key("credits"), "must not be negative"));
    }
    if negative(budget.default_cost) {
        return Err(invalid(key("default_cost"), "must not be negative"));
    }
    if let BidCost::Fixed(cost) = budget.cost
        && negative(cost)
    {
        return Err(invalid(key("cost"), "must not be negative"));
    }
    Ok(Some(budget))
}

/// The pricing for one kind, each value from the most specific layer that sets it.
fn pricing(
    layers: &[Layer<'_>],
    kind: &str,
    kind_of: fn(&BiddingOverrides) -> &PricingOverrides,
) -> Result<Pricing, PolicyError> {
    // (key, value) of the first layer, in the module's order, that sets the key.
    fn find<'a, T>(
        layers: &'a [Layer<'_>],
        kind: &str,
        kind_of: fn(&BiddingOverrides) -> &PricingOverrides,
        name: &str,
        in_kind: fn(&PricingOverrides) -> Option<&T>,
        in_layer: fn(&BiddingOverrides) -> Option<&T>,
    ) -> Option<(String, &'a T)> {
        let by_kind = layers.iter().rev().find_map(|l| {
            in_kind(kind_of(l.values)).map(|v| (format!("{}.{kind}.{name}", l.prefix), v))
        });
        by_kind.or_else(|| {
            layers
                .iter()
                .rev()
                .find_map(|l| in_layer(l.values).map(|v| (format!("{}.{name}", l.prefix), v)))
        })
    }
    let money = |name, in_kind: fn(&PricingOverrides) -> Option<&Money>, in_layer| {
        find(layers, kind, kind_of, name, in_kind, in_layer)
            .map(|(key, m)| non_negative(&key, m).map(|()| (key, m.clone())))
            .transpose()
    };
    let min = money(
        "min_budget",
        |p| p.min_budget.as_ref(),
        |l| l.min_budget.as_ref(),
    )?;
    let max = money(
        "max_budget",
        |p| p.max_budget.as_ref(),
        |l| l.max_budget.as_ref(),
    )?;
    let floor = money(
        "bid_floor",
        |p| p.bid_floor.as_ref(),
        |l| l.bid_floor.as_ref(),
    )?;
    let ceiling = money(
        "bid_ceiling",
        |p| p.bid_ceiling.as_ref(),
        |l| l.bid_ceiling.as_ref(),
    )?;
    if let Some((key, c)) = &ceiling
        && c.amounts().iter().any(|(_, v)| v.is_zero())
    {
        return Err(invalid(
            key.clone(),
            "must be above 0 (a zero ceiling never bids)",
        ));
    }
    ordered(min.as_ref(), max.as_ref())?;
    ordered(floor.as_ref(), ceiling.as_ref())?;
    let (key, fraction) = find(
        layers,
        kind,
        kind_of,
        "bid_fraction",
        |p| p.bid_fraction.as_ref(),
        |l| l.bid_fraction.as_ref(),
    )
    .map_or_else(
        || ("bidding.bid_fraction".to_owned(), Decimal::ONE),
        |(k, f)| (k, f.0),
    );
    if fraction <= Decimal::ZERO || fraction > Decimal::ONE {
        return Err(invalid(key, "must be above 0 and at most 1 (e.g. \"0.9\")"));
    }
    Ok(Pricing {
        min_budget: min.map_or(Money::Any(Decimal::ZERO), |(_, m)| m),
        max_budget: max.map(|(_, m)| m),
        amount: AmountStrategy {
            fraction,
            floor: floor.map(|(_, m)| m),
            ceiling: ceiling.map(|(_, m)| m),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Fraction;

    fn d(v: i64) -> Money {
        Money::from(v)
    }

    #[test]
    fn the_kind_wins_over_the_marketplace_which_wins_over_the_base() {
        let mut s = BiddingSettings {
            min_budget: d(100),
            ..BiddingSettings::default()
        };
        s.hourly.min_budget = Some(d(20));
        let upwork = BiddingOverrides {
            min_budget: Some(d(300)),
            blocked_keywords: Some(vec!["Unpaid".into()]),
            daily_bid_cap: Some(5),
            ..BiddingOverrides::default()
        };
        let base = rule_set(&s, None).unwrap();
        assert_eq!(base.fixed.min_budget, d(100));
        assert_eq!(base.hourly.min_budget, d(20));
        assert_eq!(base.daily_cap, None);
        let set = rule_set(&s, Some(("upwork", &upwork))).unwrap();
        assert_eq!(set.fixed.min_budget, d(300));
        assert_eq!(
            set.hourly.min_budget,
            d(20),
            "the hourly value is for hourly"
        );
        assert_eq!(set.rules.blocked_keywords, ["unpaid"]);
        assert_eq!(set.daily_cap, Some(5));
        assert_eq!(set.letter_key, "bidding.cover_letter");
        let mut upwork_hourly = upwork.clone();
        upwork_hourly.hourly.min_budget = Some(d(40));
        upwork_hourly.cover_letter = Some("Hi".into());
        let set = rule_set(&s, Some(("upwork", &upwork_hourly))).unwrap();
        assert_eq!(set.hourly.min_budget, d(40));
        assert_eq!(set.letter_key, "bidding.marketplaces.upwork.cover_letter");
    }

    fn error_key(s: &BiddingSettings, o: Option<(&str, &BiddingOverrides)>) -> String {
        rule_set(s, o).unwrap_err().key().to_owned()
    }

    #[test]
    fn bad_values_name_the_key_they_are_written_under() {
        let mut s = BiddingSettings::default();
        s.hourly.bid_fraction = Some(Fraction(Decimal::new(15, 1)));
        assert_eq!(error_key(&s, None), "bidding.hourly.bid_fraction");
        let s = BiddingSettings {
            min_budget: Money::from(-1),
            ..BiddingSettings::default()
        };
        assert_eq!(error_key(&s, None), "bidding.min_budget");
        let o = BiddingOverrides {
            allowed_currencies: Some(vec!["dollars".into()]),
            ..BiddingOverrides::default()
        };
        let s = BiddingSettings::default();
        assert_eq!(
            error_key(&s, Some(("upwork", &o))),
            "bidding.marketplaces.upwork.allowed_currencies"
        );
        let o = BiddingOverrides {
            cover_letter_max_chars: Some(0),
            ..BiddingOverrides::default()
        };
        assert_eq!(
            error_key(&s, Some(("guru", &o))),
            "bidding.marketplaces.guru.cover_letter_max_chars"
        );
    }

    #[test]
    fn bounds_that_could_never_bid_are_refused() {
        let s = BiddingSettings {
            min_budget: d(500),
            max_budget: Some(d(100)),
            ..BiddingSettings::default()
        };
        assert_eq!(error_key(&s, None), "bidding.min_budget");
        let s = BiddingSettings {
            bid_floor: Some(Money::PerCurrency(
                [("USD".to_owned(), Decimal::from(50))].into(),
            )),
            bid_ceiling: Some(Money::PerCurrency(
                [("USD".to_owned(), Decimal::from(40))].into(),
            )),
            ..BiddingSettings::default()
        };
        assert_eq!(error_key(&s, None), "bidding.bid_floor");
        let s = BiddingSettings {
            bid_ceiling: Some(d(0)),
            ..BiddingSettings::default()
        };
        assert_eq!(error_key(&s, None), "bidding.bid_ceiling");
        let mut s = BiddingSettings {
            max_posting_age: Some(std::time::Duration::ZERO),
            ..BiddingSettings::default()
        };
        assert_eq!(error_key(&s, None), "bidding.max_posting_age");
        s.max_posting_age = None;
        s.min_client_rating = Some(f64::NAN);
        assert_eq!(error_key(&s, None), "bidding.min_client_rating");
    }

    #[test]
    fn codes_are_upper_cased_and_keywords_normalised() {
        let s = BiddingSettings {
            allowed_currencies: vec!["usd".into()],
            blocked_client_countries: vec![" kp".into()],
            blocked_keywords: vec!["  Unpaid   Trial ".into(), " ".into()],
            ..BiddingSettings::default()
        };
        let set = rule_set(&s, None).unwrap();
        assert_eq!(set.rules.allowed_currencies, ["USD"]);
        assert_eq!(set.rules.blocked_client_countries, ["KP"]);
        assert_eq!(set.rules.blocked_keywords, ["unpaid trial"]);
    }
}
