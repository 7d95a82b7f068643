//! The test binary's Prometheus recorder, installed at first use: a process has one global
//! recorder, shared by the binary's tests.
#![allow(dead_code)] // each test binary uses part of it

use std::sync::OnceLock;

use metrics_exporter_prometheus::PrometheusHandle;

/// The binary's Prometheus recorder (a process has one global recorder).
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        dcb_runtime::metrics::prometheus_builder()
            .expect("builder")
            .install_recorder()
            .expect("recorder")
    })
}
