//! A timed scenario from the command line: measured in this process (the parent) or, with the
//! hidden `--child-of`, one share of it run for a parent; then the summary, the JSON report and
//! the chart.

use metrics_exporter_prometheus::PrometheusHandle;

use crate::chart;
use crate::cli::RunArgs;
use crate::json_report;
use crate::measure::measure;
use crate::progress::Display;
use crate::report::Report;
use crate::run::run_share;
use crate::share::Share;
use crate::telemetry;
use crate::workload::Kind;

/// One scenario: the summary, the JSON report, the chart; an error on violations or errors.
pub(crate) async fn run(kind: Kind, mut args: RunArgs) -> anyhow::Result<()> {
    let metrics = telemetry::install(args.metrics_addr)?;
    args.seed.get_or_insert_with(|| fastrand::u64(..));
    if let Some(url) = args.child_of.clone() {
        return child(kind, &args, &url, &metrics).await;
    }
    let report = measure(kind, &args, &metrics).await?;
    conclude(&report, &args)
}

/// The summary, the JSON report and the chart; an error on violations or errors.
pub(crate) fn conclude(report: &Report, args: &RunArgs) -> anyhow::Result<()> {
    json_report::print_figures(args.json.as_ref(), report);
    json_report::write(args.json.as_ref(), report)?;
    if let Some(path) = &args.chart {
        let title = format!(
            "{}: {} callers, {} actors, {} keys",
            report.scenario, report.concurrency, report.actors, report.keys
        );
        chart::timeline(path, &title, &report.timeline)?;
    }
    match report.failure() {
        Some(failure) => anyhow::bail!(failure),
        None => Ok(()),
    }
}

/// One of `--processes`: its share of the run, as JSON on stdout for the parent.
async fn child(
    kind: Kind,
    args: &RunArgs,
    url: &str,
    metrics: &PrometheusHandle,
) -> anyhow::Result<()> {
    let share = Share {
        process: args.process_index,
        callers: args.concurrency,
        commands: args.commands,
        rate: args.rate,
    };
    let result = run_share(kind, args, url, share, metrics, Display::Quiet).await?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
