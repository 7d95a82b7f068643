//! The run's own Prometheus recorder: what the library records, read back for the report.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

pub(crate) fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(dcb_runtime::metrics::APPEND_BATCH_SIZE.into()),
            BATCH_BUCKETS,
        )?
        .install_recorder()?;
    dcb_runtime::metrics::describe();
    Ok(handle)
}

/// `sum / count` of a histogram in the rendered exposition, if it was recorded.
pub(crate) fn histogram_mean(handle: &PrometheusHandle, name: &str) -> Option<f64> {
    let text = handle.render();
    let value = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{suffix} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let (sum, count) = (value("_sum")?, value("_count")?);
    (count > 0.0).then(|| sum / count)
}
