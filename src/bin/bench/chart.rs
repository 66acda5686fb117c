//! SVG charts of what a benchmark measured (plotters, SVG backend: no system libraries).
//!
//! Every chart carries a footer naming the date, the machine and the command, so a figure
//! copied out of its report can still be reproduced.

use std::path::Path;
use std::time::Duration;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::load::Sample;

const SIZE: (u32, u32) = (1100, 650);
const FOOTER: u32 = 46;

/// A shaded span of the time axis (a measured window) with its label.
pub struct Span<'a> {
    pub label: &'a str,
    pub from: f64,
    pub to: f64,
}

/// A moment on the time axis (a migration step starting).
pub struct Mark {
    pub label: String,
    pub at: f64,
}

/// The palette the charts share (writers are red and readers blue wherever both appear).
pub const INK_RED: RGBColor = RGBColor(200, 30, 30);
pub const INK_BLUE: RGBColor = RGBColor(30, 60, 200);
pub const INK_GREEN: RGBColor = RGBColor(0, 140, 0);
pub const INK_GREY: RGBColor = RGBColor(120, 120, 120);

/// A latency series: the p99 and maximum of each bucket are drawn.
pub struct Series<'a> {
    pub name: &'a str,
    pub samples: &'a [Sample],
    pub color: RGBColor,
}

/// Per-bucket statistics of `samples`: (bucket start, operations, p99 ms, max ms).
pub fn buckets(samples: &[Sample], width: f64) -> Vec<(f64, usize, f64, f64)> {
    let mut by_bucket: std::collections::BTreeMap<i64, Vec<Duration>> = Default::default();
    for s in samples {
        by_bucket
            .entry((s.at / width).floor() as i64)
            .or_default()
            .push(s.latency);
    }
    by_bucket
        .into_iter()
        .map(|(k, mut v)| {
            v.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let p99 = v[((v.len() - 1) as f64 * 0.99) as usize];
            let max = v[v.len() - 1];
            (k as f64 * width, v.len(), ms(p99), ms(max))
        })
        .collect()
}

/// `buckets` split wherever consecutive buckets are more than `gap` seconds apart.
fn split_at_gaps(buckets: &[(f64, usize, f64, f64)], gap: f64) -> Vec<Vec<(f64, usize, f64, f64)>> {
    let mut runs: Vec<Vec<(f64, usize, f64, f64)>> = Vec::new();
    for b in buckets {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|last| b.0 - last.0 <= gap) => run.push(*b),
            _ => runs.push(vec![*b]),
        }
    }
    runs
}

fn failed(e: impl std::fmt::Debug) -> String {
    format!("cannot draw the chart: {e:?}")
}

/// The drawing area above the footer, after writing the footer lines into it.
fn page<'a>(
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    footer: &[String],
) -> Result<DrawingArea<SVGBackend<'a>, Shift>, String> {
    root.fill(&WHITE).map_err(failed)?;
    let (body, foot) = root.split_vertically(SIZE.1 - FOOTER);
    for (i, line) in footer.iter().enumerate() {
        foot.draw(&Text::new(
            line.clone(),
            (10, 4 + 18 * i as i32),
            ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(failed)?;
    }
    Ok(body)
}

/// Latency over time on a log scale, p99 (solid) and max (thin) per `bucket` seconds, with
/// the windows shaded and the marks drawn as vertical lines.
pub fn latency_timeline(
    path: &Path,
    title: &str,
    footer: &[String],
    series: &[Series<'_>],
    spans: &[Span<'_>],
    marks: &[Mark],
    bucket: f64,
) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let body = page(&root, footer)?;
    let all: Vec<&Sample> = series.iter().flat_map(|s| s.samples.iter()).collect();
    let x0 = all.iter().map(|s| s.at).fold(f64::INFINITY, f64::min);
    let x1 = all.iter().map(|s| s.at).fold(f64::NEG_INFINITY, f64::max);
    if !x0.is_finite() || !x1.is_finite() {
        return Err("nothing to draw: no samples".to_owned());
    }
    let ymax = all
        .iter()
        .map(|s| s.latency.as_secs_f64() * 1e3)
        .fold(1.0, f64::max)
        * 2.0;
    let mut chart = ChartBuilder::on(&body)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..(x1 - x0), (0.1..ymax).log_scale())
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first window")
        .y_desc("latency, ms (log)")
        .draw()
        .map_err(failed)?;
    let shades = [INK_GREY, BLUE, INK_GREEN, RED];
    for (i, span) in spans.iter().enumerate() {
        let color = shades[i % shades.len()];
        let (a, b) = (span.from - x0, (span.to - x0).max(span.from - x0 + 0.02));
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(a, 0.1), (b, ymax)],
                color.mix(0.12).filled(),
            )))
            .map_err(failed)?;
        chart
            .draw_series(std::iter::once(Text::new(
                span.label.to_owned(),
                (a, ymax / 1.6 / 1.8f64.powi((i % 3) as i32)),
                ("sans-serif", 13).into_font().color(&color),
            )))
            .map_err(failed)?;
    }
    for (i, mark) in marks.iter().enumerate() {
        let at = mark.at - x0;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(at, 0.1), (at, ymax)],
                BLACK.mix(0.35),
            )))
            .map_err(failed)?;
        chart
            .draw_series(std::iter::once(Text::new(
                mark.label.clone(),
                (at, 0.14 * 1.7f64.powi((i % 4) as i32)),
                ("sans-serif", 11),
            )))
            .map_err(failed)?;
    }
    for s in series {
        let points = buckets(s.samples, bucket);
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0 - x0, p.2.max(0.1))),
                color.stroke_width(2),
            ))
            .map_err(failed)?
            .label(format!("{} p99 per {:.0} ms", s.name, bucket * 1e3))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0 - x0, p.3.max(0.1))),
                color.mix(0.45),
            ))
            .map_err(failed)?
            .label(format!("{} max", s.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.mix(0.45)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(failed)?;
    root.present().map_err(failed)
}

/// Operations per second (top) and latency p99/max (bottom) over time, one line per series.
pub fn throughput_timeline(
    path: &Path,
    title: &str,
    footer: &[String],
    series: &[Series<'_>],
    spans: &[Span<'_>],
) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let body = page(&root, footer)?;
    let body = body.titled(title, ("sans-serif", 20)).map_err(failed)?;
    let (top, bottom) = body.split_vertically((SIZE.1 - FOOTER - 30) / 2);
    let all: Vec<&Sample> = series.iter().flat_map(|s| s.samples.iter()).collect();
    let x0 = all.iter().map(|s| s.at).fold(f64::INFINITY, f64::min);
    let x1 = all.iter().map(|s| s.at).fold(f64::NEG_INFINITY, f64::max);
    if !x0.is_finite() || !x1.is_finite() {
        return Err("nothing to draw: no samples".to_owned());
    }
    let per_second: Vec<Vec<(f64, usize, f64, f64)>> =
        series.iter().map(|s| buckets(s.samples, 1.0)).collect();
    let rate_max = per_second
        .iter()
        .flatten()
        .map(|b| b.1 as f64)
        .fold(1.0, f64::max)
        * 1.15;
    let ms_max = all
        .iter()
        .map(|s| s.latency.as_secs_f64() * 1e3)
        .fold(1.0, f64::max)
        * 2.0;
    let mut rate = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..(x1 - x0 + 1.0), 0.0..rate_max)
        .map_err(failed)?;
    rate.configure_mesh()
        .y_desc("operations per second")
        .draw()
        .map_err(failed)?;
    let mut latency = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..(x1 - x0 + 1.0), (0.1..ms_max).log_scale())
        .map_err(failed)?;
    latency
        .configure_mesh()
        .x_desc("seconds since the first phase")
        .y_desc("latency per 1 s, ms (log)")
        .draw()
        .map_err(failed)?;
    for (i, span) in spans.iter().enumerate() {
        let (a, b) = (span.from - x0, span.to - x0);
        let shade = [INK_GREY, BLUE, INK_GREEN, RED][i % 4];
        rate.draw_series(std::iter::once(Rectangle::new(
            [(a, 0.0), (b, rate_max)],
            shade.mix(0.10).filled(),
        )))
        .map_err(failed)?;
        rate.draw_series(std::iter::once(Text::new(
            span.label.to_owned(),
            (a + 0.2, rate_max * 0.98),
            ("sans-serif", 13).into_font().color(&shade),
        )))
        .map_err(failed)?;
    }
    for (s, points) in series.iter().zip(&per_second) {
        let color = s.color;
        let thick = color.stroke_width(2);
        let thin: ShapeStyle = color.mix(0.45).into();
        // One line per phase: a series' phases are apart when the benchmark interleaves them.
        let phases = split_at_gaps(points, 1.5);
        for (k, phase) in phases.iter().enumerate() {
            // The first and last buckets of a phase are partial: leave them out of the rate.
            let whole = phase.iter().skip(1).take(phase.len().saturating_sub(2));
            let drawn = rate
                .draw_series(LineSeries::new(
                    whole.map(|p| (p.0 - x0 + 0.5, p.1 as f64)),
                    thick,
                ))
                .map_err(failed)?;
            if k == 0 {
                drawn
                    .label(s.name.to_owned())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], thick));
            }
            let drawn = latency
                .draw_series(LineSeries::new(
                    phase.iter().map(|p| (p.0 - x0 + 0.5, p.2.max(0.1))),
                    thick,
                ))
                .map_err(failed)?;
            if k == 0 {
                drawn
                    .label(format!("{} p99", s.name))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], thick));
            }
            let drawn = latency
                .draw_series(LineSeries::new(
                    phase.iter().map(|p| (p.0 - x0 + 0.5, p.3.max(0.1))),
                    thin,
                ))
                .map_err(failed)?;
            if k == 0 {
                drawn
                    .label(format!("{} max", s.name))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], thin));
            }
        }
    }
    rate.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(failed)?;
    latency
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(failed)?;
    root.present().map_err(failed)
}

/// One line per measured quantity against table size (rows of the larger table).
pub struct Curve<'a> {
    pub name: &'a str,
    /// (rows, seconds)
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
}

/// Seconds against table size: wall times and worst waits of `--scale`.
pub fn against_size(
    path: &Path,
    title: &str,
    footer: &[String],
    curves: &[Curve<'_>],
) -> Result<(), String> {
    against(
        path,
        title,
        footer,
        curves,
        "synced_sessions rows, millions (users = 1/5 of them)",
    )
}

/// Seconds against a count of anything, in millions (`x_desc` names it).
pub fn against(
    path: &Path,
    title: &str,
    footer: &[String],
    curves: &[Curve<'_>],
    x_desc: &str,
) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let body = page(&root, footer)?;
    let xmax = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        * 1.05;
    let ymax = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .fold(0.1, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&body)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax / 1e6, 0.0..ymax)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("seconds")
        .draw()
        .map_err(failed)?;
    for c in curves {
        let color = c.color;
        chart
            .draw_series(LineSeries::new(
                c.points.iter().map(|p| (p.0 / 1e6, p.1)),
                color.stroke_width(2),
            ))
            .map_err(failed)?
            .label(c.name.to_owned())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                c.points
                    .iter()
                    .map(|p| Circle::new((p.0 / 1e6, p.1), 4, color.filled())),
            )
            .map_err(failed)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(failed)?;
    root.present().map_err(failed)
}
