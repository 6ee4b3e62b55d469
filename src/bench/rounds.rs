//! The rounds of a bench: in each, the bare consume+ack rates and then every throughput run,
//! interleaved so that a slow minute on a shared machine moves one round of each figure, not one
//! figure; each figure reported is its median round.

use super::bare::{self, Acks};
use super::cpu::CpuSplit;
use super::{Bare, BenchError, BenchOptions, CAP, Run, throughput};
use crate::config::Settings;

/// Measures `rounds` rounds and returns the bare rates and the throughput runs, each the median
/// of its rounds (with every round's figure kept).
pub(super) async fn measure(
    settings: &Settings,
    options: &BenchOptions,
    rounds: usize,
    cores: usize,
    progress: &mut impl FnMut(&str),
) -> Result<(Bare, Vec<Run>), BenchError> {
    let prefetch = settings.amqp.prefetch;
    let bare_queue = |mode: &str| {
        format!(
            "bidorch.bench.bare.{mode}.{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    };
    let plan: Vec<(usize, bool)> = options
        .workers
        .iter()
        .map(|w| (*w, false))
        .chain(std::iter::once((1, true)))
        .collect();
    let (mut one_rounds, mut pipelined_rounds) = (Vec::new(), Vec::new());
    let mut measured: Vec<Vec<(f64, f64, CpuSplit)>> = vec![Vec::new(); plan.len()];
    for round in 1..=rounds {
        let of = if rounds > 1 {
            format!(" (round {round} of {rounds})")
        } else {
            String::new()
        };
        for (acks, mode, label, into) in [
            (
                Acks::OneAtATime,
                "one",
                "acks one at a time",
                &mut one_rounds,
            ),
            (
                Acks::Pipelined,
                "pipelined",
                "acks pipelined",
                &mut pipelined_rounds,
            ),
        ] {
            progress(&format!(
                "bare consume+ack on a fresh quorum queue, {label}{of}"
            ));
            let rate = bare::consume_ack_rate(
                &settings.amqp,
                &bare_queue(mode),
                options.bare_messages,
                prefetch,
                acks,
            )
            .await?;
            progress(&format!("  {rate:.0} msg/s"));
            into.push(rate);
        }
        for (k, &(workers, cap)) in plan.iter().enumerate() {
            let label = format!("t{workers}{}r{round}", if cap { "c" } else { "" });
            progress(&format!(
                "throughput, {workers} worker(s){}, {} postings{of}",
                if cap { ", daily cap set" } else { "" },
                options.postings
            ));
            let (rate, seconds, cpu) = throughput::throughput(
                settings,
                options,
                &label,
                workers,
                options.postings,
                cap.then_some(CAP),
            )
            .await?;
            progress(&format!(
                "  {rate:.0} postings/s; machine {:.0}% busy",
                cpu.machine_busy * 100.0
            ));
            measured[k].push((rate, seconds, cpu));
        }
    }
    let (one, pipelined) = (
        *middle(&one_rounds, |r| *r),
        *middle(&pipelined_rounds, |r| *r),
    );
    let bare = Bare {
        prefetch,
        messages: options.bare_messages,
        one_at_a_time_per_s: one,
        pipelined_per_s: pipelined,
        one_at_a_time_rounds: one_rounds,
        pipelined_rounds,
    };
    let runs = plan
        .iter()
        .zip(measured)
        .map(|(&(workers, cap), samples)| {
            let (rate, seconds, cpu) = middle(&samples, |s| s.0).clone();
            Run {
                workers,
                daily_cap: cap,
                postings: options.postings,
                postings_per_s: rate,
                rounds: samples.iter().map(|s| s.0).collect(),
                ratio_one_at_a_time: rate / one.max(f64::EPSILON),
                ratio_pipelined: rate / pipelined.max(f64::EPSILON),
                seconds,
                ceiling_free_worker_per_s: cpu.ceiling_without_workers(cores),
                cpu,
            }
        })
        .collect();
    Ok((bare, runs))
}

/// The middle item of `items` by `key` (of an even number, the upper middle one).
///
/// # Panics
/// When `items` is empty: every figure has at least one round.
fn middle<T>(items: &[T], key: impl Fn(&T) -> f64) -> &T {
    let mut order: Vec<&T> = items.iter().collect();
    order.sort_by(|a, b| key(a).total_cmp(&key(b)));
    order[order.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_round() {
        assert_eq!(*middle(&[9.0, 1.0, 5.0], |r| *r), 5.0);
        assert_eq!(*middle(&[2.0, 1.0], |r| *r), 2.0);
        assert_eq!(*middle(&[7.0], |r| *r), 7.0);
        let runs = [(3.0, "a"), (1.0, "b"), (2.0, "c")];
        assert_eq!(middle(&runs, |r| r.0).1, "c");
    }
}
