//! Checks on configured values, each error naming the key the value is written under: amounts
//! and their currency codes, bounds that could never bid, ISO codes in lists.

use super::PolicyError;
use crate::config::Money;

/// Amounts are not negative and are keyed by currency codes.
pub fn non_negative(key: &str, money: &Money) -> Result<(), PolicyError> {
    for (currency, amount) in money.amounts() {
        if let Some(c) = currency
            && !(c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(invalid(
                key,
                format!("{c:?} is not an ISO 4217 currency code like USD"),
            ));
        }
        if amount.is_sign_negative() {
            return Err(invalid(key, "must not be negative"));
        }
    }
    Ok(())
}

/// `low` is at most `high` wherever both apply to a currency; the error names `low`'s key.
pub fn ordered(
    low: Option<&(String, Money)>,
    high: Option<&(String, Money)>,
) -> Result<(), PolicyError> {
    let (Some((low_key, low)), Some((high_key, high))) = (low, high) else {
        return Ok(());
    };
    for (lc, lv) in low.amounts() {
        for (hc, hv) in high.amounts() {
            let same = lc.is_none() || hc.is_none() || lc == hc;
            if same && lv > hv {
                return Err(invalid(
                    low_key.clone(),
                    format!("{lv} is above {high_key} ({hv}): nothing could ever be bid"),
                ));
            }
        }
    }
    Ok(())
}

/// Upper-cased codes of `len` ASCII letters.
pub fn codes(
    key: &str,
    list: &[String],
    len: usize,
    what: &str,
) -> Result<Vec<String>, PolicyError> {
    list.iter()
        .map(|c| {
            let code = c.trim().to_ascii_uppercase();
            if code.len() == len && code.bytes().all(|b| b.is_ascii_uppercase()) {
                Ok(code)
            } else {
                Err(invalid(key, format!("{c:?} is not {what}")))
            }
        })
        .collect()
}

pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;

    fn usd(v: i64) -> Money {
        Money::PerCurrency([("USD".to_owned(), Decimal::from(v))].into())
    }

    #[test]
    fn amounts_must_not_be_negative_nor_keyed_by_non_codes() {
        assert!(non_negative("k", &Money::from(0)).is_ok());
        assert_eq!(non_negative("k", &Money::from(-1)).unwrap_err().key(), "k");
        let dollars = Money::PerCurrency([("DOLLARS".to_owned(), Decimal::ONE)].into());
        assert!(non_negative("k", &dollars).is_err());
    }

    #[test]
    fn bounds_compare_where_both_apply() {
        let low = ("low".to_owned(), usd(50));
        let eur = (
            "high".to_owned(),
            Money::PerCurrency([("EUR".to_owned(), Decimal::ONE)].into()),
        );
        assert!(
            ordered(Some(&low), Some(&eur)).is_ok(),
            "different currencies"
        );
        let any = ("high".to_owned(), Money::from(10));
        assert_eq!(ordered(Some(&low), Some(&any)).unwrap_err().key(), "low");
        assert!(ordered(Some(&low), None).is_ok());
    }

    #[test]
    fn codes_are_trimmed_and_upper_cased() {
        let list = vec![" us".to_owned(), "De".to_owned()];
        assert_eq!(codes("k", &list, 2, "a country").unwrap(), ["US", "DE"]);
        assert!(codes("k", &["USA".to_owned()], 2, "a country").is_err());
    }
}
