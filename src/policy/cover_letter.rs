//! The cover letter: a minijinja template over the posting's fields, checked when the policy is
//! built (it must parse and render a sample posting with every variable, so a typo in a
//! variable name stops start-up instead of sending letters with a blank where it was), and cut
//! to a maximum length on a character boundary.
//!
//! A letter is rendered with only the variables its template names (found once, when it is
//! added): building all of them copied the description and the skills and wrote three amounts
//! for every posting, most of what a letter cost. A template that needs more than it names (an
//! `{% include %}`) fails that render strictly and is rendered again with every variable.
//!
//! Variables: `title`, `description`, `skills` (a list), `marketplace`, `posting_id`, `url`,
//! `budget` (the budget's max, else min), `budget_min`, `budget_max`, `currency`, `kind`
//! (`fixed` / `hourly`) and `amount` (the bid, written in the currency's minor unit). Amounts
//! are strings, so they print exactly. Missing optional fields are `none`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use rust_decimal::Decimal;

use super::{PolicyError, SkipReason, amount::format_amount};
use crate::posting::{Budget, BudgetKind, ClientInfo, Posting, PostingKey};

/// Ends a letter that was cut to its maximum length.
const ELLIPSIS: char = '…';

/// Every configured cover letter template, each named by its configuration key. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CoverLetters {
    env: Arc<Environment<'static>>,
    /// The variables each template names, by key.
    uses: Arc<HashMap<String, Uses>>,
}

impl CoverLetters {
    /// Parses and checks each `(key, source)` template.
    pub fn new<'a>(
        templates: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, PolicyError> {
        let mut env = Environment::new();
        // Strict: an unknown variable is an error (found at start by the sample render) rather
        // than an empty string in a letter sent with real money on it.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Letters are plain text, whatever the key's name looks like.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        let sample = sample_posting();
        let mut uses = HashMap::new();
        for (key, source) in templates {
            if let Some(old) = legacy_placeholder(source) {
                // Before minijinja `{title}` was replaced; now it would go out literally.
                return Err(PolicyError::Invalid {
                    key: key.to_owned(),
                    problem: format!("`{{{old}}}` is the old placeholder; write `{{{{ {old} }}}}`"),
                });
            }
            let invalid = |source| PolicyError::Template {
                key: key.to_owned(),
                source,
            };
            env.add_template_owned(key.to_owned(), source.to_owned())
                .map_err(invalid)?;
            let template = env.get_template(key).map_err(invalid)?;
            template
                .render(variables(&sample, Decimal::new(45000, 2), Uses::ALL))
                .map_err(invalid)?;
            uses.insert(
                key.to_owned(),
                Uses::of(&template.undeclared_variables(false)),
            );
        }
        Ok(Self {
            env: Arc::new(env),
            uses: Arc::new(uses),
        })
    }

    /// The letter of template `key` for bidding `amount` on `posting`, at most `max_chars` long.
    pub fn render(
        &self,
        key: &str,
        posting: &Posting,
        amount: Decimal,
        max_chars: usize,
    ) -> Result<String, SkipReason> {
        let uses = self.uses.get(key).copied().unwrap_or(Uses::ALL);
        self.env
            .get_template(key)
            .and_then(|t| {
                t.render(variables(posting, amount, uses)).or_else(|e| {
                    if uses == Uses::ALL {
                        Err(e)
                    } else {
                        t.render(variables(posting, amount, Uses::ALL))
                    }
                })
            })
            .map(|letter| truncate(letter, max_chars))
            .map_err(|e| SkipReason::CoverLetterFailed {
                error: e.to_string(),
            })
    }
}

/// The variables a template may use.
const VARIABLES: &[&str] = &[
    "title",
    "description",
    "skills",
    "marketplace",
    "posting_id",
    "url",
    "budget",
    "budget_min",
    "budget_max",
    "currency",
    "kind",
    "amount",
];

/// A variable written the pre-minijinja way, `{title}` rather than `{{ title }}`.
fn legacy_placeholder(source: &str) -> Option<&'static str> {
    VARIABLES.iter().copied().find(|var| {
        let old = format!("{{{var}}}");
        source.match_indices(&old).any(|(at, _)| {
            !source[..at].ends_with('{') && !source[at + old.len()..].starts_with('}')
        })
    })
}

/// `text` if it has at most `max_chars` characters, else its first `max_chars - 1` and "…".
pub fn truncate(text: String, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text,
        Some(_) => {
            let keep = max_chars.saturating_sub(1);
            let cut = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
            let mut cut_text = text[..cut].to_owned();
            cut_text.push(ELLIPSIS);
            cut_text
        }
    }
}

/// Which of [`VARIABLES`] a template names: bit `i` is `VARIABLES[i]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Uses(u16);

impl Uses {
    const ALL: Self = Self(u16::MAX);

    /// The documented variables among `names` (the rest are functions, filters' globals, or a
    /// typo the sample render has already refused).
    fn of(names: &std::collections::HashSet<String>) -> Self {
        Self(
            VARIABLES
                .iter()
                .enumerate()
                .filter(|(_, var)| names.contains(**var))
                .fold(0, |bits, (i, _)| bits | 1 << i),
        )
    }

    #[cfg(test)]
    fn has(self, var: &str) -> bool {
        VARIABLES
            .iter()
            .position(|v| *v == var)
            .is_some_and(|i| self.0 & 1 << i != 0)
    }
}

/// The variables a template may use, those in `uses` only.
fn variables(posting: &Posting, amount: Decimal, uses: Uses) -> Value {
    let vars: BTreeMap<&str, Value> = VARIABLES
        .iter()
        .enumerate()
        .filter(|&(i, _)| uses.0 & 1 << i != 0)
        .map(|(_, &name)| (name, variable(name, posting, amount)))
        .collect();
    Value::from(vars)
}

/// The value of variable `name` (one of [`VARIABLES`]).
fn variable(name: &str, posting: &Posting, amount: Decimal) -> Value {
    let budget = posting.budget.as_ref();
    let text = |v: Option<Decimal>| Value::from(v.map(|v| v.to_string()));
    let currency = budget.map(|b| b.currency.as_str());
    match name {
        "title" => Value::from(posting.title.as_str()),
        "description" => Value::from(posting.description.as_str()),
        "skills" => Value::from(posting.skills.clone()),
        "marketplace" => Value::from(posting.key.marketplace()),
        "posting_id" => Value::from(posting.key.posting_id()),
        "url" => Value::from(posting.url.as_deref()),
        "budget" => text(budget.and_then(|b| b.max.or(b.min))),
        "budget_min" => text(budget.and_then(|b| b.min)),
        "budget_max" => text(budget.and_then(|b| b.max)),
        "kind" => Value::from(budget.map(|b| match b.kind {
            BudgetKind::Fixed => "fixed",
            BudgetKind::Hourly => "hourly",
        })),
        "amount" => Value::from(format_amount(amount, currency.unwrap_or("USD"))),
        "currency" => Value::from(currency),
        // Not a documented variable: left undefined, which strict rendering refuses.
        _ => Value::UNDEFINED,
    }
}

/// A posting with every field set, to render each template once at start.
fn sample_posting() -> Posting {
    Posting {
        event_id: "sample".to_owned(),
        key: PostingKey::new("sample", "sample_1").expect("a valid sample key"),
        title: "Sample posting".to_owned(),
        description: "A sample description.".to_owned(),
        budget: Some(Budget {
            min: Some(Decimal::new(100, 0)),
            max: Some(Decimal::new(500, 0)),
            currency: "USD".to_owned(),
            kind: BudgetKind::Fixed,
        }),
        skills: vec!["rust".to_owned()],
        client: ClientInfo::default(),
        posted_at: None,
        url: Some("https://example.invalid/sample".to_owned()),
        bid_cost: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters(source: &str) -> Result<CoverLetters, PolicyError> {
        CoverLetters::new([("bidding.cover_letter", source)])
    }

    fn posting(title: &str) -> Posting {
        Posting {
            title: title.to_owned(),
            ..sample_posting()
        }
    }

    #[test]
    fn every_documented_variable_renders() {
        let l = letters(
            "{{ title }}|{{ description }}|{{ skills | join(',') }}|{{ marketplace }}|\
             {{ posting_id }}|{{ url }}|{{ budget }}|{{ budget_min }}|{{ budget_max }}|\
             {{ currency }}|{{ kind }}|{{ amount }}",
        )
        .unwrap();
        let text = l
            .render(
                "bidding.cover_letter",
                &posting("T"),
                Decimal::new(4, 0),
                5000,
            )
            .unwrap();
        assert_eq!(
            text,
            "T|A sample description.|rust|sample|sample_1|https://example.invalid/sample|\
             500|100|500|USD|fixed|4.00"
        );
    }

    #[test]
    fn a_template_gets_the_variables_it_names_and_an_include_those_it_needs() {
        let l = CoverLetters::new([
            ("inner", "{{ amount }} {{ currency }}"),
            ("outer", "{{ title }} for {% include 'inner' %}"),
        ])
        .unwrap();
        assert!(l.uses["outer"].has("title") && !l.uses["outer"].has("description"));
        let text = l
            .render("outer", &posting("T"), Decimal::new(4, 0), 5000)
            .unwrap();
        assert_eq!(text, "T for 4.00 USD");
    }

    #[test]
    fn a_syntax_error_names_the_key() {
        let err = letters("Hello {{ title").unwrap_err();
        assert_eq!(err.key(), "bidding.cover_letter");
        let shown = crate::error::chain(&err);
        assert!(shown.contains("bidding.cover_letter"), "{shown}");
    }

    #[test]
    fn an_unknown_variable_fails_at_start_not_in_a_letter() {
        let err = letters("Hello {{ titel }}").unwrap_err();
        assert_eq!(err.key(), "bidding.cover_letter");
    }

    #[test]
    fn the_old_brace_placeholder_is_refused_with_the_new_form() {
        // `{title}` was the pre-minijinja placeholder: sent as is, it would reach clients.
        let err = letters("About {title}").unwrap_err();
        assert_eq!(err.key(), "bidding.cover_letter");
        assert!(err.to_string().contains("{{ title }}"), "{err}");
        assert!(letters("About {{title}} and {{ title }}").is_ok());
    }

    #[test]
    fn html_in_a_posting_is_not_escaped() {
        let l = letters("{{ title }}").unwrap();
        let text = l
            .render(
                "bidding.cover_letter",
                &posting("A & <B>"),
                Decimal::ONE,
                100,
            )
            .unwrap();
        assert_eq!(text, "A & <B>");
    }

    #[test]
    fn a_ten_thousand_char_title_is_cut_on_a_char_boundary() {
        let l = letters("Re: {{ title }}").unwrap();
        let title = "é".repeat(10_000);
        let text = l
            .render("bidding.cover_letter", &posting(&title), Decimal::ONE, 5000)
            .unwrap();
        assert_eq!(text.chars().count(), 5000);
        assert!(text.starts_with("Re: éé"));
        assert!(text.ends_with("é…"));
    }

    #[test]
    fn truncation_keeps_short_texts_and_counts_chars_not_bytes() {
        assert_eq!(truncate("héllo".to_owned(), 5), "héllo");
        assert_eq!(truncate("héllo!".to_owned(), 5), "héll…");
        assert_eq!(truncate("abc".to_owned(), 1), "…");
    }
}
