//! The run's own Prometheus recorder: what the library records, read back for the report.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusHandle;

/// Installs the one global recorder; with `addr`, it also serves `/metrics` there for as long as
/// the process runs (call inside the tokio runtime).
pub(crate) fn install(addr: Option<SocketAddr>) -> anyhow::Result<PrometheusHandle> {
    let Some(addr) = addr else {
        let handle = dcb_runtime::metrics::prometheus_builder()?.install_recorder()?;
        dcb_runtime::metrics::describe();
        return Ok(handle);
    };
    let handle = dcb_runtime::metrics::install_prometheus(addr)
        .map_err(|e| anyhow::anyhow!("cannot serve /metrics on {addr}: {e}"))?;
    eprintln!("serving Prometheus metrics on http://{addr}/metrics");
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

/// The sum of a counter's series in the rendered exposition, optionally those with a label value.
pub(crate) fn counter_sum(
    handle: &PrometheusHandle,
    name: &str,
    label: Option<(&str, &str)>,
) -> u64 {
    let text = handle.render();
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| label.is_none_or(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let total = total as u64;
    total
}
