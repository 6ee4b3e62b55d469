//! `report.svg`: the pipeline's postings/s against the number of workers, with the broker's own
//! consume+ack rates as lines to measure it by, and publish→bid latency (p50 and p99 at the
//! steady rate) against workers.

use std::path::Path;

use plotters::prelude::*;

use super::BenchReport;

fn failed(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Draws the two charts of `report` into `path` (SVG).
pub fn draw(report: &BenchReport, path: &Path) -> std::io::Result<()> {
    let root = SVGBackend::new(path, (1100, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let (left, right) = root.split_horizontally(560);
    throughput(report, &left).map_err(failed)?;
    latency(report, &right).map_err(failed)?;
    root.present().map_err(failed)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Worker counts are whole numbers: the axis labels only those.
fn whole(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

fn max_workers(report: &BenchReport) -> f64 {
    report
        .runs
        .iter()
        .map(|r| r.workers)
        .max()
        .unwrap_or(1)
        .max(1) as f64
}

fn throughput(report: &BenchReport, area: &Area<'_>) -> Result<(), Box<dyn std::error::Error>> {
    let x_max = max_workers(report) + 0.5;
    let pipeline: Vec<(f64, f64)> = report
        .runs
        .iter()
        .filter(|r| !r.daily_cap)
        .map(|r| (r.workers as f64, r.postings_per_s))
        .collect();
    let capped: Vec<(f64, f64)> = report
        .runs
        .iter()
        .filter(|r| r.daily_cap)
        .map(|r| (r.workers as f64, r.postings_per_s))
        .collect();
    let y_max = [
        report.bare.one_at_a_time_per_s,
        report.bare.pipelined_per_s,
        pipeline.iter().map(|p| p.1).fold(0.0, f64::max),
    ]
    .into_iter()
    .fold(0.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption("Throughput", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.5f64..x_max, 0f64..y_max.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("bidorch worker processes")
        .y_desc("postings (messages) per second")
        .x_labels(16)
        .x_label_formatter(&whole)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (rate, label, color) in [
        (
            report.bare.pipelined_per_s,
            "bare consume+ack, acks pipelined",
            RGBColor(120, 120, 120),
        ),
        (
            report.bare.one_at_a_time_per_s,
            "bare consume+ack, one ack at a time",
            RGBColor(180, 180, 180),
        ),
    ] {
        chart
            .draw_series(LineSeries::new(
                [(0.5, rate), (x_max, rate)],
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    let half = report.bare.one_at_a_time_per_s / 2.0;
    let target = RGBColor(200, 120, 0);
    chart
        .draw_series(LineSeries::new(
            [(0.5, half), (x_max, half)],
            target.stroke_width(1),
        ))?
        .label("half of one-at-a-time (the target)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], target.stroke_width(1)));
    chart
        .draw_series(LineSeries::new(pipeline.clone(), BLUE.stroke_width(3)))?
        .label("full pipeline")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(3)));
    chart.draw_series(pipeline.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))?;
    chart
        .draw_series(
            capped
                .iter()
                .map(|p| TriangleMarker::new(*p, 6, RED.filled())),
        )?
        .label("full pipeline, daily cap set")
        .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, RED.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn latency(report: &BenchReport, area: &Area<'_>) -> Result<(), Box<dyn std::error::Error>> {
    let x_max = max_workers(report) + 0.5;
    // The first rate's runs (the report lists the others).
    let rate = report.latency.first().map_or(0, |l| l.rate);
    let runs = || report.latency.iter().filter(move |l| l.rate == rate);
    let p50: Vec<(f64, f64)> = runs().map(|l| (l.workers as f64, l.p50_ms)).collect();
    let p99: Vec<(f64, f64)> = runs().map(|l| (l.workers as f64, l.p99_ms)).collect();
    let y_max = p99.iter().map(|p| p.1).fold(20.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("publish → bid at a steady {rate}/s, daily cap set"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.5f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("bidorch worker processes")
        .y_desc("milliseconds")
        .x_labels(16)
        .x_label_formatter(&whole)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let target = RGBColor(200, 120, 0);
    chart
        .draw_series(LineSeries::new(
            [(0.5, 20.0), (x_max, 20.0)],
            target.stroke_width(1),
        ))?
        .label("p99 target, 20 ms")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], target.stroke_width(1)));
    for (points, label, color) in [(&p50, "p50", BLUE), (&p99, "p99", RED)] {
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
