//! `sweep`: a scenario at several concurrencies, each on a fresh database, as a table, a chart
//! and (with `--json`) one report per level; with `--open-loop-at`, then one open-loop run at a
//! fraction of the peak (its report last).

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::chart;
use crate::cli::SweepArgs;
use crate::json_report;
use crate::measure::measure;
use crate::report::Report;
use crate::telemetry;

/// The scenario at each concurrency level, on a fresh database each time.
pub(crate) async fn sweep(args: SweepArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.run.rate.is_none(),
        "sweep varies the closed-loop concurrency: --rate (a fixed arrival rate) is refused with \
         it; run the scenario with --rate at each rate instead"
    );
    let metrics = telemetry::install(args.run.metrics_addr)?;
    let mut run = args.run.clone();
    run.seed.get_or_insert_with(|| fastrand::u64(..));
    let mut reports = Vec::new();
    for &level in &args.levels {
        anyhow::ensure!(level >= 1, "--levels must be at least 1");
        run.concurrency = level;
        let mut report = measure(args.scenario, &run, &metrics).await?;
        report.timeline.clear();
        eprintln!(
            "concurrency {level:>4}: {:>8.0} committed/s, p99 {:.2} ms, {} violations, {} errors",
            report.throughput_per_s,
            report.latency_ms.p99,
            report.invariant_violations,
            report.errors
        );
        reports.push(report);
    }
    let mut figures = table(args.scenario.name(), &reports)?;
    let levels = reports.len();
    if let Some(fraction) = args.open_loop_at {
        let open = open_loop(&args, &run, &reports, fraction, &metrics).await?;
        writeln!(figures, "\n{}", open_loop_line(&open, fraction))?;
        reports.push(open);
    }
    json_report::print_figures(run.json.as_ref(), figures);
    let chart = run
        .chart
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("sweep-{}.svg", args.scenario.name())));
    chart::sweep(
        &chart,
        &format!("{} sweep", args.scenario.name()),
        &reports[..levels],
    )?;
    json_report::write(run.json.as_ref(), &reports)?;
    let failures: Vec<String> = reports.iter().filter_map(Report::failure).collect();
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}

/// Commands in flight in the open-loop run, per command in flight at the peak. An open loop
/// models arrivals that do not wait for each other; its bound is the load generator's, not the
/// system's. At the peak's own concurrency it sits near what 80 % of the peak keeps in flight
/// (Little's law: 0.8 x the peak's callers), so a burst found no free caller and was sent late
/// by the generator itself (measured: 8,900/s against an 11,166/s peak at 64 callers,
/// 10,695-36,621 of 44,500 commands late, p99 from due time 26-150 ms; with 256 in flight,
/// 160-1,459 late, 19-38 ms).
const OPEN_LOOP_HEADROOM: usize = 4;

/// The open-loop run at `fraction` of the levels' peak, with [`OPEN_LOOP_HEADROOM`] times the
/// peak's concurrency bounding the commands in flight (its report is the last of the sweep's,
/// the one with `rate_per_s`).
async fn open_loop(
    args: &SweepArgs,
    run: &crate::cli::RunArgs,
    levels: &[Report],
    fraction: f64,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<Report> {
    let peak = levels
        .iter()
        .max_by(|a, b| a.throughput_per_s.total_cmp(&b.throughput_per_s))
        .filter(|p| p.throughput_per_s > 0.0)
        .ok_or_else(|| anyhow::anyhow!("no level committed anything: no peak to run at"))?;
    let mut open = run.clone();
    open.concurrency = peak.concurrency * OPEN_LOOP_HEADROOM;
    open.rate = Some(peak.throughput_per_s * fraction);
    eprintln!(
        "open loop at {:.0} % of the peak ({:.0} committed/s at concurrency {}): {:.0}/s, at most \
         {} in flight",
        fraction * 100.0,
        peak.throughput_per_s,
        peak.concurrency,
        peak.throughput_per_s * fraction,
        open.concurrency
    );
    let mut report = measure(args.scenario, &open, metrics).await?;
    report.timeline.clear();
    Ok(report)
}

/// The open-loop run's figures: latency from due time, and what fell behind.
fn open_loop_line(r: &Report, fraction: f64) -> String {
    let scheduled = r.scheduled_latency_ms.as_ref();
    format!(
        "open loop at {:.0} % of peak: {:.0}/s asked, {:.0} committed/s, from due time p50 {} ms \
         p99 {} ms ({} late, {} unsent)",
        fraction * 100.0,
        r.rate_per_s.unwrap_or_default(),
        r.throughput_per_s,
        scheduled.map_or("-".into(), |l| format!("{:.2}", l.p50)),
        scheduled.map_or("-".into(), |l| format!("{:.2}", l.p99)),
        r.late.unwrap_or_default(),
        r.unsent.unwrap_or_default()
    )
}

/// One line per level: throughput, conflicts, latency and the baseline ratio.
fn table(scenario: &str, reports: &[Report]) -> Result<String, std::fmt::Error> {
    let mut t = String::new();
    writeln!(t, "scenario {scenario}")?;
    write!(
        t,
        "concurrency  committed/s  decided/s  conflict %   p50 ms   p99 ms  ratio"
    )?;
    for r in reports {
        write!(
            t,
            "\n{:>11}  {:>11.0}  {:>9.0}  {:>10.1}  {:>7.2}  {:>7.2}  {}",
            r.concurrency,
            r.throughput_per_s,
            r.decisions_per_s,
            r.conflict_rate * 100.0,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.ratio.map_or("-".into(), |x| format!("{x:.2}x"))
        )?;
    }
    Ok(t)
}
