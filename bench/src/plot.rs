//! PNG plots of a suite run (plotters, bitmap backend, DejaVu Sans from the system).

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::suite::Measured;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// `TESSERA_BENCH_FONT` names a TTF to use instead (for machines without fonts,
/// e.g. one with no package registry: carry `DejaVuSans.ttf`).
fn register_font() -> anyhow::Result<()> {
    let own = std::env::var("TESSERA_BENCH_FONT").ok();
    let path = own
        .as_deref()
        .into_iter()
        .chain(FONT_PATHS.iter().copied())
        .find(|p| Path::new(p).exists())
        .context("no DejaVu Sans font for plot labels: apt-get install fonts-dejavu-core, or set TESSERA_BENCH_FONT to a .ttf")?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("cannot load font {path}"))?;
    Ok(())
}

const COLORS: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];

/// Latency percentiles and server CPU per request against offered load for each
/// workload with a curve, and throughput against cores when several core counts
/// were run.
pub fn render(results: &[Measured], out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let mut written = Vec::new();
    let mut workloads: Vec<&str> = results
        .iter()
        .filter(|m| !m.latency_curve.is_empty())
        .map(|m| m.workload.as_str())
        .collect();
    workloads.dedup();
    for w in workloads {
        let path = out.join(format!("latency-{w}.png"));
        latency_plot(results, w, &path)?;
        written.push(path);
        let path = out.join(format!("cpu-{w}.png"));
        cpu_plot(results, w, &path)?;
        written.push(path);
    }
    let mut cores: Vec<usize> = results.iter().map(|m| m.cores).collect();
    cores.sort_unstable();
    cores.dedup();
    if cores.len() > 1 {
        for w in ["4k", "1m"] {
            let path = out.join(format!("scaling-{w}.png"));
            scaling_plot(results, w, &path)?;
            written.push(path);
        }
    }
    Ok(written)
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e:?}")
}

/// One line of a curves plot.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    width: u32,
}

/// Lines against offered load on a log y axis (from `y_min`), with a legend.
fn curves_plot(
    path: &Path,
    title: &str,
    y_desc: &str,
    y_min: f64,
    lines: &[Line],
) -> anyhow::Result<()> {
    let all = || lines.iter().flat_map(|l| l.points.iter());
    let max_x = all().map(|p| p.0).fold(1.0, f64::max);
    let max_y = all().map(|p| p.1).fold(y_min * 10.0, f64::max);
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..max_x * 1.05, (y_min..max_y * 1.5).log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("offered load, requests/s")
        .y_desc(y_desc)
        .draw()
        .map_err(draw_err)?;
    for line in lines {
        let color = line.color;
        // Points below the axis are drawn on it.
        let pts: Vec<(f64, f64)> = line
            .points
            .iter()
            .map(|&(x, y)| (x, y.max(y_min * 1.1)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(line.width)))
            .map_err(draw_err)?
            .label(line.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    Ok(())
}

/// Each server's line of one figure of its open-loop runs.
fn curve_lines<'a>(
    results: &'a [Measured],
    workload: &'a str,
) -> impl Iterator<Item = (RGBColor, &'a Measured)> + 'a {
    results
        .iter()
        .filter(move |m| m.workload == workload && !m.latency_curve.is_empty())
        .enumerate()
        .map(|(i, m)| (COLORS[i % COLORS.len()], m))
}

fn latency_plot(results: &[Measured], workload: &str, path: &Path) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    for (color, m) in curve_lines(results, workload) {
        for (label, p99, width) in [("p50", false, 3), ("p99", true, 1)] {
            lines.push(Line {
                label: format!("{} {label}", m.server),
                points: m
                    .latency_curve
                    .iter()
                    .filter_map(|s| Some((s.offered_rps?, if p99 { s.p99_ms } else { s.p50_ms })))
                    .collect(),
                color,
                width,
            });
        }
    }
    curves_plot(
        path,
        &format!("{workload}: latency vs offered load (open loop)"),
        "latency, ms",
        0.01,
        &lines,
    )
}

/// Server CPU per request against offered load: below its peak a server wakes
/// up for every request or two, so a request costs more the lighter the load.
fn cpu_plot(results: &[Measured], workload: &str, path: &Path) -> anyhow::Result<()> {
    let lines: Vec<Line> = curve_lines(results, workload)
        .map(|(color, m)| Line {
            label: m.server.clone(),
            points: m
                .latency_curve
                .iter()
                .filter_map(|s| Some((s.offered_rps?, s.server_cpu_us_per_request?)))
                .collect(),
            color,
            width: 3,
        })
        .collect();
    curves_plot(
        path,
        &format!("{workload}: server CPU per request vs offered load (open loop)"),
        "server CPU per request, µs",
        1.0,
        &lines,
    )
}

fn scaling_plot(results: &[Measured], workload: &str, path: &Path) -> anyhow::Result<()> {
    let rows: Vec<&Measured> = results.iter().filter(|m| m.workload == workload).collect();
    let max_cores = rows.iter().map(|m| m.cores).max().unwrap_or(1) as f64;
    let max_rps = rows.iter().map(|m| m.peak.rps).fold(1.0, f64::max);
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{workload}: peak throughput vs cores"),
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..max_cores + 0.5, 0.0..max_rps * 1.1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("server cores")
        .y_desc("requests/s")
        .draw()
        .map_err(draw_err)?;
    for (i, server) in ["tessera", "nginx"].iter().enumerate() {
        let color = COLORS[i];
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|m| m.server == *server)
            .map(|m| (m.cores as f64, m.peak.rps))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))
            .map_err(draw_err)?
            .label(*server)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    Ok(())
}
