//! Charts of a run (throughput, conflict rate and p99 over time) and of a sweep (throughput and
//! p99 against concurrency), as SVG or PNG by the file's extension.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::Report;
use crate::timeline::Sample;

type Series<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);

/// Three panels over time: committed/s, conflict rate (%), p99 latency (ms).
pub(crate) fn timeline(path: &Path, title: &str, samples: &[Sample]) -> anyhow::Result<()> {
    anyhow::ensure!(!samples.is_empty(), "no chart: the run recorded no sample");
    let points = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(|s| (s.t_s, f(s))).collect();
    let panels: [Series; 3] = [
        ("committed / s", points(&|s| s.committed_per_s), BLUE),
        (
            "conflict rate (%)",
            points(&|s| s.conflict_rate() * 100.0),
            RED,
        ),
        ("p99 latency (ms)", points(&|s| s.p99_ms), GREEN),
    ];
    draw(path, title, "seconds", &panels, false)
}

/// Two panels against concurrency (log scale): committed/s and p99 latency (ms).
pub(crate) fn sweep(path: &Path, title: &str, reports: &[Report]) -> anyhow::Result<()> {
    anyhow::ensure!(!reports.is_empty(), "no chart: the sweep ran nothing");
    let points = |f: &dyn Fn(&Report) -> f64| {
        reports
            .iter()
            .map(|r| (r.concurrency as f64, f(r)))
            .collect()
    };
    let panels: [Series; 2] = [
        ("committed / s", points(&|r| r.throughput_per_s), BLUE),
        ("p99 latency (ms)", points(&|r| r.latency_ms.p99), GREEN),
    ];
    draw(path, title, "concurrent callers", &panels, true)
}

/// TrueType fonts tried in order for the charts' text; `DCB_CHART_FONT` names another.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a system font as "sans-serif" once (plotters lays text out with it, even in SVG).
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let from_env = std::env::var("DCB_CHART_FONT").ok();
            let candidates = from_env
                .iter()
                .map(String::as_str)
                .chain(FONTS.iter().copied());
            for candidate in candidates {
                if let Ok(bytes) = std::fs::read(candidate) {
                    // plotters keeps fonts for the life of the process.
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                        .is_ok()
                    {
                        return Ok(());
                    }
                }
            }
            Err(format!(
                "no chart: no TrueType font found (tried {}); install DejaVu (Debian: \
                 fonts-dejavu-core) or set DCB_CHART_FONT to a .ttf file",
                FONTS.join(", ")
            ))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn draw(
    path: &Path,
    title: &str,
    x_label: &str,
    panels: &[Series],
    log_x: bool,
) -> anyhow::Result<()> {
    register_font()?;
    let size = (900, 300 * panels.len() as u32);
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            plot(&root, title, x_label, panels, log_x)?;
            root.present()?;
        }
        Some("png") => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            plot(&root, title, x_label, panels, log_x)?;
            root.present()?;
        }
        _ => anyhow::bail!(
            "{}: the chart's file name must end in .svg or .png",
            path.display()
        ),
    }
    eprintln!("chart written to {}", path.display());
    Ok(())
}

fn plot<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    panels: &[Series],
    log_x: bool,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let areas = root.split_evenly((panels.len(), 1));
    for ((name, points, color), area) in panels.iter().zip(&areas) {
        let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max);
        let x_min = points.iter().map(|p| p.0).fold(x_max, f64::min);
        let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1 + 1e-9;
        let mut chart = ChartBuilder::on(area);
        chart
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .caption(*name, ("sans-serif", 16));
        if log_x {
            let mut c = chart
                .build_cartesian_2d((x_min.max(1.0)..x_max * 1.2).log_scale(), 0.0..y_max)
                .map_err(err)?;
            c.configure_mesh()
                .light_line_style(WHITE)
                .x_desc(x_label)
                .draw()
                .map_err(err)?;
            c.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(err)?;
            c.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(err)?;
        } else {
            let mut c = chart
                .build_cartesian_2d(0.0..x_max, 0.0..y_max)
                .map_err(err)?;
            c.configure_mesh()
                .light_line_style(WHITE)
                .x_desc(x_label)
                .draw()
                .map_err(err)?;
            c.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(err)?;
        }
    }
    Ok(())
}

fn err<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the chart: {e}")
}
