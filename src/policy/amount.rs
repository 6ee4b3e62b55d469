//! The bid amount: a fraction of the budget (max, else min), held between a floor and a ceiling,
//! never above the posting's max, rounded down to the currency's minor unit, and never zero or
//! negative — a posting that cannot be priced is skipped, never bid at 0.00.

use rust_decimal::{Decimal, RoundingStrategy};

use super::SkipReason;
use crate::posting::Budget;

/// Digits after the decimal point of a currency (ISO 4217 exponent). Codes not listed use 2:
/// that is the exponent of almost every currency, and a posting's currency is only checked to
/// look like a code — `allowed_currencies` is the rule that limits which ones are bid in.
pub fn minor_unit(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// `amount` written with exactly the currency's minor unit (`450.00` USD, `60000` JPY,
/// `1.250` KWD), rounded down: what goes into the bid request's `amount.value`.
pub fn format_amount(amount: Decimal, currency: &str) -> String {
    let unit = minor_unit(currency);
    let mut v = amount.round_dp_with_strategy(unit, RoundingStrategy::ToZero);
    v.rescale(unit);
    v.to_string()
}

/// How a bid amount follows from a budget, for one marketplace and kind; checked when the
/// policy is built (fraction in (0, 1], floor at most the ceiling).
#[derive(Clone, Debug, PartialEq)]
pub struct AmountStrategy {
    /// Share of the budget to bid.
    pub fraction: Decimal,
    /// Lowest bid per currency (`None`: no floor in any currency).
    pub floor: Option<crate::config::Money>,
    /// Highest bid per currency.
    pub ceiling: Option<crate::config::Money>,
}

impl AmountStrategy {
    /// The amount to bid on `budget`, or why there is none.
    pub fn amount(&self, budget: &Budget) -> Result<Decimal, SkipReason> {
        let basis = budget.max.or(budget.min).ok_or(SkipReason::NoBudget)?;
        let c = budget.currency.as_str();
        bid_amount(
            basis,
            budget.max,
            c,
            self.fraction,
            self.floor.as_ref().and_then(|m| m.for_currency(c)),
            self.ceiling.as_ref().and_then(|m| m.for_currency(c)),
        )
    }
}

/// `basis × fraction`, raised to `floor`, lowered to `ceiling` and then to `posting_max` (so a
/// floor never lifts a bid above what the client offers), rounded down to the minor unit.
/// The result has exactly the currency's scale and is above zero, or is a reason to skip.
pub fn bid_amount(
    basis: Decimal,
    posting_max: Option<Decimal>,
    currency: &str,
    fraction: Decimal,
    floor: Option<Decimal>,
    ceiling: Option<Decimal>,
) -> Result<Decimal, SkipReason> {
    // A fraction of at most 1 cannot overflow; the fallback only keeps this total.
    let mut amount = basis.checked_mul(fraction).unwrap_or(basis);
    if let Some(floor) = floor {
        amount = amount.max(floor);
    }
    if let Some(ceiling) = ceiling {
        amount = amount.min(ceiling);
    }
    if let Some(max) = posting_max {
        amount = amount.min(max);
    }
    let unit = minor_unit(currency);
    // Down, so that rounding can never take the bid above the posting's max or the ceiling.
    let mut amount = amount.round_dp_with_strategy(unit, RoundingStrategy::ToZero);
    amount.rescale(unit);
    if amount <= Decimal::ZERO {
        return Err(SkipReason::AmountNotPositive {
            currency: currency.to_owned(),
        });
    }
    // `rescale` keeps a smaller scale when the digits do not fit 96 bits.
    if amount.scale() != unit {
        return Err(SkipReason::AmountOutOfRange {
            currency: currency.to_owned(),
        });
    }
    Ok(amount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn minor_units_follow_iso_4217() {
        assert_eq!(minor_unit("USD"), 2);
        assert_eq!(minor_unit("EUR"), 2);
        assert_eq!(minor_unit("JPY"), 0);
        assert_eq!(minor_unit("KWD"), 3);
        assert_eq!(minor_unit("BHD"), 3);
        assert_eq!(minor_unit("OMR"), 3);
        assert_eq!(minor_unit("XYZ"), 2, "unknown codes use 2");
    }

    #[test]
    fn amounts_are_written_with_the_currency_scale() {
        assert_eq!(format_amount(d("450"), "USD"), "450.00");
        assert_eq!(format_amount(d("60000"), "JPY"), "60000");
        assert_eq!(format_amount(d("1.2345"), "KWD"), "1.234");
        assert_eq!(format_amount(d("12.999"), "EUR"), "12.99", "rounded down");
    }

    #[test]
    fn fraction_of_the_budget_rounded_down() {
        assert_eq!(
            bid_amount(d("1500"), Some(d("1500")), "USD", d("0.333"), None, None),
            Ok(d("499.50"))
        );
        assert_eq!(
            bid_amount(d("999"), None, "JPY", d("0.5"), None, None),
            Ok(d("499"))
        );
        assert_eq!(
            bid_amount(d("1.2347"), None, "KWD", d("1"), None, None),
            Ok(d("1.234"))
        );
    }

    #[test]
    fn floor_and_ceiling_bound_the_amount() {
        let floor = bid_amount(d("100"), None, "USD", d("0.1"), Some(d("50")), None);
        assert_eq!(floor, Ok(d("50.00")));
        let ceiling = bid_amount(d("10000"), None, "USD", d("1"), None, Some(d("2500")));
        assert_eq!(ceiling, Ok(d("2500.00")));
    }

    #[test]
    fn the_floor_never_lifts_a_bid_above_the_posting_max() {
        let a = bid_amount(d("30"), Some(d("30")), "USD", d("0.5"), Some(d("50")), None);
        assert_eq!(a, Ok(d("30.00")));
    }

    #[test]
    fn zero_or_sub_unit_amounts_are_skipped_not_bid() {
        for (basis, currency) in [("0", "USD"), ("0.004", "USD"), ("0.9", "JPY")] {
            assert_eq!(
                bid_amount(d(basis), Some(d(basis)), currency, d("1"), None, None),
                Err(SkipReason::AmountNotPositive {
                    currency: currency.into()
                }),
                "{basis} {currency}"
            );
        }
    }

    #[test]
    fn absurd_budgets_are_out_of_range_not_mis_scaled() {
        let huge = Decimal::MAX;
        assert_eq!(
            bid_amount(huge, None, "KWD", d("1"), None, None),
            Err(SkipReason::AmountOutOfRange {
                currency: "KWD".into()
            })
        );
    }

    #[test]
    fn the_strategy_uses_the_max_else_the_min_and_per_currency_bounds() {
        use crate::config::Money;
        use crate::posting::BudgetKind;
        let s = AmountStrategy {
            fraction: d("0.5"),
            floor: Some(Money::PerCurrency([("EUR".to_owned(), d("400"))].into())),
            ceiling: None,
        };
        let budget = |min: Option<&str>, max: Option<&str>, currency: &str| Budget {
            min: min.map(d),
            max: max.map(d),
            currency: currency.into(),
            kind: BudgetKind::Fixed,
        };
        assert_eq!(
            s.amount(&budget(Some("10"), Some("600"), "USD")),
            Ok(d("300.00"))
        );
        assert_eq!(s.amount(&budget(Some("600"), None, "USD")), Ok(d("300.00")));
        assert_eq!(
            s.amount(&budget(None, Some("600"), "EUR")),
            Ok(d("400.00")),
            "the EUR floor applies to EUR only"
        );
        assert_eq!(
            s.amount(&budget(None, None, "USD")),
            Err(SkipReason::NoBudget)
        );
    }

    fn currency() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("USD"), Just("EUR"), Just("JPY"), Just("KWD")]
    }

    /// Up to a billion with up to four decimals: every budget a posting plausibly carries.
    fn money() -> impl Strategy<Value = Decimal> {
        (0i64..10_000_000_000_000, 0u32..=4).prop_map(|(n, scale)| Decimal::new(n, scale))
    }

    proptest! {
        #[test]
        fn bids_are_positive_at_most_the_max_and_in_minor_units(
            max in money(),
            min_share in 0u32..=100,
            use_min_only in any::<bool>(),
            fraction in 1i64..=10_000,
            floor in proptest::option::of(money()),
            ceiling in proptest::option::of(money()),
            currency in currency(),
        ) {
            let min = max * Decimal::new(i64::from(min_share), 2);
            let (basis, posting_max) = if use_min_only { (min, None) } else { (max, Some(max)) };
            let fraction = Decimal::new(fraction, 4);
            match bid_amount(basis, posting_max, currency, fraction, floor, ceiling) {
                Ok(amount) => {
                    prop_assert!(amount > Decimal::ZERO);
                    prop_assert_eq!(amount.scale(), minor_unit(currency));
                    if let Some(max) = posting_max {
                        prop_assert!(amount <= max, "{} > max {}", amount, max);
                    }
                    if let Some(ceiling) = ceiling {
                        prop_assert!(amount <= ceiling, "{} > ceiling {}", amount, ceiling);
                    }
                }
                Err(reason) => prop_assert_eq!(reason.code(), "amount_not_positive"),
            }
        }

        #[test]
        fn formatted_amounts_have_the_minor_unit_digits(amount in money(), currency in currency()) {
            let text = format_amount(amount, currency);
            let decimals = text.split_once('.').map_or(0, |(_, f)| f.len());
            prop_assert_eq!(decimals as u32, minor_unit(currency));
            prop_assert!(Decimal::from_str_exact(&text).unwrap() <= amount);
        }
    }
}
