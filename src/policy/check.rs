//! The `bidorch policy check` report: what the policy would decide on each line of a JSON-lines
//! file of posting events, at a given time, and how many postings each reason skipped. Pure like
//! the policy: lines in, a [`Report`] out; the writers only format it.
//!
//! A line that is not a valid posting event is reported as malformed, with its line number and
//! the reason the worker would dead-letter it with — never a panic. Blank lines are ignored.
//! Any marketplace name is accepted here; the worker also requires it to be configured.

use crate::text::escape_controls;
use std::collections::BTreeMap;
use std::io::{self, Write};

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{Decision, Policy, format_amount};
use crate::posting::Posting;

/// What came of one input line.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// A posting and the policy's decision on it.
    Decided { posting: String, decision: Decision },
    /// Not a posting event: `reason` is the dead-letter reason, `error` says what is wrong.
    Malformed { reason: &'static str, error: String },
}

/// One non-blank input line.
#[derive(Clone, Debug, PartialEq)]
pub struct LineReport {
    /// 1-based line number in the input.
    pub line: usize,
    pub verdict: Verdict,
}

/// Counts over the whole input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub bids: usize,
    pub skipped: usize,
    pub malformed: usize,
    /// Skipped postings per reason code; a posting skipped for several reasons counts once
    /// under each (and once per code, however many keywords it hit).
    pub by_reason: BTreeMap<&'static str, usize>,
}

/// The decisions on every line, and their summary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub lines: Vec<LineReport>,
    pub summary: Summary,
}

/// Decides on each line of `lines` at `now`.
pub fn check<I, S>(policy: &Policy, now: DateTime<Utc>, lines: I) -> Report
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut report = Report::default();
    for (index, text) in lines.into_iter().enumerate() {
        let text = text.as_ref().trim();
        if text.is_empty() {
            continue;
        }
        let verdict = match Posting::parse(text.as_bytes(), |_| true) {
            Err(e) => {
                report.summary.malformed += 1;
                Verdict::Malformed {
                    reason: e.reason(),
                    error: e.to_string(),
                }
            }
            Ok(posting) => {
                let decision = policy.decide(&posting, now);
                count(&mut report.summary, &decision);
                Verdict::Decided {
                    posting: posting.key.to_string(),
                    decision,
                }
            }
        };
        report.lines.push(LineReport {
            line: index + 1,
            verdict,
        });
    }
    report
}

fn count(summary: &mut Summary, decision: &Decision) {
    match decision {
        Decision::Bid { .. } => summary.bids += 1,
        Decision::Skip(reasons) => {
            summary.skipped += 1;
            let mut codes: Vec<&'static str> = reasons.iter().map(|r| r.code()).collect();
            codes.sort_unstable();
            codes.dedup();
            for code in codes {
                *summary.by_reason.entry(code).or_default() += 1;
            }
        }
    }
}

/// The report for people: a line per input line, then the summary.
pub fn write_text(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    for l in &report.lines {
        match &l.verdict {
            Verdict::Decided {
                posting,
                decision: Decision::Bid {
                    amount, currency, ..
                },
            } => writeln!(
                out,
                "line {}: {}: bid {} {}",
                l.line,
                escape_controls(&posting.to_string()),
                format_amount(*amount, currency),
                escape_controls(currency)
            )?,
            Verdict::Decided {
                posting,
                decision: Decision::Skip(reasons),
            } => {
                let texts: Vec<String> = reasons.iter().map(|r| r.describe()).collect();
                writeln!(
                    out,
                    "line {}: {}: skip {}",
                    l.line,
                    escape_controls(&posting.to_string()),
                    escape_controls(&texts.join(", "))
                )?;
            }
            Verdict::Malformed { reason, error } => {
                writeln!(
                    out,
                    "line {}: malformed ({reason}): {}",
                    l.line,
                    escape_controls(&error.to_string())
                )?;
            }
        }
    }
    let s = &report.summary;
    writeln!(
        out,
        "postings: {} (bid: {}, skipped: {}); malformed lines: {}",
        s.bids + s.skipped,
        s.bids,
        s.skipped,
        s.malformed
    )?;
    for (code, n) in &s.by_reason {
        writeln!(out, "  skipped for {code}: {n}")?;
    }
    Ok(())
}

/// The report for programs: one JSON object per input line, then `{"summary": …}`.
pub fn write_json(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    for l in &report.lines {
        let value = match &l.verdict {
            Verdict::Decided {
                posting,
                decision:
                    Decision::Bid {
                        amount,
                        currency,
                        cover_letter,
                    },
            } => json!({
                "line": l.line,
                "posting": posting,
                "decision": "bid",
                "amount": format_amount(*amount, currency),
                "currency": currency,
                "cover_letter": cover_letter,
            }),
            Verdict::Decided {
                posting,
                decision: Decision::Skip(reasons),
            } => json!({
                "line": l.line,
                "posting": posting,
                "decision": "skip",
                "reasons": reasons
                    .iter()
                    .map(|r| json!({ "code": r.code(), "text": r.describe() }))
                    .collect::<Vec<_>>(),
            }),
            Verdict::Malformed { reason, error } => json!({
                "line": l.line,
                "decision": "malformed",
                "reason": reason,
                "error": error,
            }),
        };
        writeln!(out, "{value}")?;
    }
    let s = &report.summary;
    let summary = json!({ "summary": {
        "bid": s.bids,
        "skipped": s.skipped,
        "malformed": s.malformed,
        "by_reason": s.by_reason,
    }});
    writeln!(out, "{summary}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BiddingSettings, Money};
    use crate::policy::test_support::at;

    const INPUT: &str = r#"{"event_id":"e1","marketplace":"upwork","posting_id":"a","title":"Rust job","budget":{"min":500,"max":"1500","currency":"USD"}}

{"event_id":"e2","marketplace":"upwork","posting_id":"b","title":"Crypto bot","budget":{"max":50}}
not json
{"event_id":"e3","marketplace":"guru","posting_id":"c","title":"No budget crypto"}
{"event_id":"e4","marketplace":"guru","posting_id":"d"}"#;

    fn report() -> Report {
        let policy = Policy::new(&BiddingSettings {
            min_budget: Money::from(100),
            blocked_keywords: vec!["crypto".into()],
            ..BiddingSettings::default()
        })
        .unwrap();
        check(&policy, at("2026-11-26T12:00:00Z"), INPUT.lines())
    }

    #[test]
    fn each_line_gets_a_decision_or_its_parse_error() {
        let r = report();
        let numbers: Vec<usize> = r.lines.iter().map(|l| l.line).collect();
        assert_eq!(
            numbers,
            [1, 3, 4, 5, 6],
            "blank line 2 is skipped, numbers kept"
        );
        assert!(matches!(
            &r.lines[0].verdict,
            Verdict::Decided { posting, decision: Decision::Bid { .. } } if posting == "upwork:a"
        ));
        assert!(matches!(
            &r.lines[2].verdict,
            Verdict::Malformed {
                reason: "invalid_json",
                ..
            }
        ));
        assert!(matches!(
            &r.lines[4].verdict,
            Verdict::Malformed { reason: "missing_field", error } if error.contains("title")
        ));
    }

    #[test]
    fn the_summary_counts_postings_per_reason() {
        let s = report().summary;
        assert_eq!((s.bids, s.skipped, s.malformed), (1, 2, 2));
        assert_eq!(
            s.by_reason,
            BTreeMap::from([
                ("below_min_budget", 1),
                ("blocked_keyword", 2),
                ("no_budget", 1)
            ])
        );
    }

    #[test]
    fn the_text_report_shows_amounts_reasons_and_errors() {
        let mut out = Vec::new();
        write_text(&report(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("line 1: upwork:a: bid 1500.00 USD\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "line 3: upwork:b: skip below_min_budget:50 USD < 100, blocked_keyword:crypto\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("line 4: malformed (invalid_json): "),
            "{text}"
        );
        assert!(
            text.contains("postings: 3 (bid: 1, skipped: 2); malformed lines: 2"),
            "{text}"
        );
        assert!(
            text.contains("  skipped for blocked_keyword: 2\n"),
            "{text}"
        );
    }

    #[test]
    fn the_json_report_is_one_object_per_line_then_the_summary() {
        let mut out = Vec::new();
        write_json(&report(), &mut out).unwrap();
        let values: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(values.len(), 6);
        assert_eq!(values[0]["amount"], "1500.00");
        assert_eq!(values[1]["reasons"][1]["code"], "blocked_keyword");
        assert_eq!(values[2]["line"], 4);
        assert_eq!(values[2]["decision"], "malformed");
        assert_eq!(values[5]["summary"]["by_reason"]["no_budget"], 1);
        assert_eq!(values[5]["summary"]["malformed"], 2);
    }
}
