//! `bidorch policy check [FILE|-] [--json] [--now TIME]`: what the effective policy would decide
//! on each posting event of a JSON-lines file, without any broker, lock store or ledger.
//!
//! Exit code: 0 when every line was a posting event; 1 when the configuration is bad or the
//! input unreadable (nothing is reported), or when some lines were malformed (they are reported
//! and counted first, so a script can tell "the policy skips this" from "this is not an event").

use std::io::{BufRead, Write};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use bidorch::config::Settings;
use bidorch::policy::{Policy, check};

/// `bidorch policy` flags.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    action: PolicyAction,
}

/// `bidorch policy` actions.
#[derive(Subcommand, Debug)]
enum PolicyAction {
    /// Decide on each posting event of a JSON-lines file with the effective configuration.
    Check {
        /// File of JSON lines, or `-` for standard input.
        #[arg(default_value = "-")]
        input: String,
        /// One JSON object per line, then a summary object, instead of text.
        #[arg(long)]
        json: bool,
        /// Decide as of this time (RFC 3339) instead of now; it matters to max_posting_age.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        now: Option<DateTime<Utc>>,
    },
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?} is not an RFC 3339 time like 2026-11-26T12:00:00Z: {e}"))
}

/// Runs a `bidorch policy` action.
pub fn policy(settings: &Settings, args: PolicyArgs) -> anyhow::Result<()> {
    let PolicyAction::Check { input, json, now } = args.action;
    // Loading validated it already; this cannot fail for a loaded configuration.
    let policy = Policy::new(&settings.bidding).context("building the policy")?;
    let lines = read_lines(&input).with_context(|| format!("reading {input}"))?;
    let report = check::check(&policy, now.unwrap_or_else(Utc::now), &lines);
    let mut out = std::io::stdout().lock();
    if json {
        check::write_json(&report, &mut out)?;
    } else {
        check::write_text(&report, &mut out)?;
    }
    out.flush()?;
    if report.summary.malformed > 0 {
        bail!(
            "{} malformed lines in {input} (reported above)",
            report.summary.malformed
        );
    }
    Ok(())
}

fn read_lines(input: &str) -> std::io::Result<Vec<String>> {
    if input == "-" {
        std::io::stdin().lock().lines().collect()
    } else {
        std::io::BufReader::new(std::fs::File::open(input)?)
            .lines()
            .collect()
    }
}
