//! The bench's report for people (standard output) and for tools (`report.json`), and the plot
//! (`report.svg`).

use std::fmt;
use std::path::Path;

use super::{BenchError, BenchReport};

/// Writes `report.json` and `report.svg` into `dir` (created if missing).
pub(super) fn write(dir: &Path, report: &BenchReport) -> Result<(), BenchError> {
    let failed = |path: &Path| {
        let path = path.display().to_string();
        move |source| BenchError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(failed(dir))?;
    let json_path = dir.join("report.json");
    let json = serde_json::to_vec_pretty(report)
        .map_err(|e| failed(&json_path)(std::io::Error::other(e)))?;
    std::fs::write(&json_path, json).map_err(failed(&json_path))?;
    let svg_path = dir.join("report.svg");
    super::plot::draw(report, &svg_path).map_err(failed(&svg_path))
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.bare;
        writeln!(
            f,
            "bidorch bench — {} cores, amqp.prefetch {}, medians of {} round(s) (the rounds' range in brackets)",
            self.cores, b.prefetch, self.rounds
        )?;
        writeln!(
            f,
            "  bare consume+ack, quorum queue, acks one at a time {:>8.0} msg/s [{}]",
            b.one_at_a_time_per_s,
            range(&b.one_at_a_time_rounds)
        )?;
        writeln!(
            f,
            "  bare consume+ack, quorum queue, acks pipelined     {:>8.0} msg/s [{}]",
            b.pipelined_per_s,
            range(&b.pipelined_rounds)
        )?;
        writeln!(
            f,
            "  {:<28} {:>10} {:>15} {:>9} {:>9}   CPU µs per posting: workers / bench+sandbox / postgres / redis / rabbitmq (machine busy) [workers ÷ postgres]",
            "run", "postings/s", "rounds", "÷ 1-by-1", "÷ piped"
        )?;
        for r in &self.runs {
            let c = &r.cpu;
            writeln!(
                f,
                "  {:<28} {:>10.0} {:>15} {:>9.3} {:>9.3}   {:.0} / {:.0} / {:.0} / {:.0} / {:.0} ({:.0}%) [{:.2}]",
                format!(
                    "{} worker(s){}",
                    r.workers,
                    if r.daily_cap { ", daily cap set" } else { "" }
                ),
                r.postings_per_s,
                format!("[{}]", range(&r.rounds)),
                r.ratio_one_at_a_time,
                r.ratio_pipelined,
                c.workers_us,
                c.bench_and_sandbox_us,
                c.postgresql_us,
                c.redis_us,
                c.rabbitmq_us,
                c.machine_busy * 100.0,
                // If PostgreSQL grew slower, this flatters the workers: read it with the µs.
                c.workers_us / c.postgresql_us.max(f64::EPSILON)
            )?;
        }
        if let Some(run) = self.runs.first()
            && let Some(ceiling) = run.ceiling_free_worker_per_s
        {
            writeln!(
                f,
                "  ceiling if the workers cost nothing ({} worker(s): the other processes' CPU on {} cores): {:.0} postings/s ({:.3} of one-at-a-time, {:.3} of pipelined)",
                run.workers,
                self.cores,
                ceiling,
                ceiling / b.one_at_a_time_per_s.max(f64::EPSILON),
                ceiling / b.pipelined_per_s.max(f64::EPSILON)
            )?;
        }
        writeln!(
            f,
            "  with a daily cap ÷ without (1 worker): {:.3}",
            self.cap_ratio
        )?;
        for l in &self.latency {
            writeln!(
                f,
                "  publish→bid at a steady {}/s, {} worker(s), cap set ({} postings): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.rate, l.workers, l.postings, l.p50_ms, l.p99_ms, l.max_ms
            )?;
        }
        Ok(())
    }
}

/// "min–max" of a figure's rounds.
fn range(rounds: &[f64]) -> String {
    let min = rounds.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if rounds.is_empty() {
        "none".to_owned()
    } else {
        format!("{min:.0}–{max:.0}")
    }
}
