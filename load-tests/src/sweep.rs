//! `sweep`: a scenario at several concurrencies, each on a fresh database, as a table, a chart
//! and (with `--json`) one report per level.

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
    json_report::print_figures(run.json.as_ref(), table(args.scenario.name(), &reports)?);
    let chart = run
        .chart
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("sweep-{}.svg", args.scenario.name())));
    chart::sweep(&chart, &format!("{} sweep", args.scenario.name()), &reports)?;
    json_report::write(run.json.as_ref(), &reports)?;
    let failures: Vec<String> = reports.iter().filter_map(Report::failure).collect();
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
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
