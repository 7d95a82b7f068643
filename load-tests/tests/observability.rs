//! Watching a load test as a user would: a real Prometheus (Debian's `prometheus` package)
//! scrapes `--metrics-addr` of a running load test; every metric the Grafana dashboard references
//! is in `/metrics`, and `promtool query instant` answers the conflict rate and every dashboard
//! expression with data.
//!
//! It needs the `prometheus` and `promtool` binaries, so `cargo test --workspace` skips it and
//! `.ci/run` runs it on its own after installing them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Kills the process when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Polls `probe` until it returns `Some`, for at most `limit`: waiting for another process to
/// reach a state, with a bound (never a fixed sleep standing in for synchronisation).
fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_owned())
}

fn promtool_query(prometheus: &str, expr: &str) -> Option<String> {
    let output = Command::new("promtool")
        .args(["query", "instant", prometheus, expr])
        .output()
        .expect("promtool runs (Debian: apt-get install prometheus)");
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}

/// The `dcb_` metric names a PromQL expression reads, histogram suffixes stripped.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|token| token.starts_with("dcb_"))
        .map(|token| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| token.strip_suffix(suffix))
                .unwrap_or(token)
                .to_owned()
        })
        .collect()
}

fn dashboard_expressions() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana/dashboards/dcb-runtime.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).unwrap();
    let mut exprs = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.extend(target["expr"].as_str().map(|e| {
                e.replace("$__rate_interval", "15s")
                    .replace("${__rate_interval}", "15s")
                    .replace("${decision}", ".*")
                    .replace("$decision", ".*")
            }));
        }
    }
    assert!(!exprs.is_empty(), "the dashboard has no expressions");
    exprs
}

#[test]
#[ignore = "needs a Prometheus server binary: run by .ci/run with --ignored"]
fn prometheus_scrapes_a_running_load_test_and_answers_the_dashboard() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    // Few accounts and many callers: conflicts happen, so the conflict series exists; killed
    // connections make the store-error series exist.
    let _load_test = Running(
        Command::new(env!("CARGO_BIN_EXE_load-tests"))
            .args([
                "transfer",
                "--duration",
                "120s",
                "--concurrency",
                "32",
                "--actors",
                "8",
            ])
            .args(["--chaos", "kill-connections", "--projection"])
            .args(["--keys", "5", "--metrics-addr", &metrics_addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the load test starts"),
    );
    let exposition = wait_for("a conflict in /metrics", Duration::from_secs(60), || {
        http_get(&metrics_addr, "/metrics").filter(|body| {
            body.contains("dcb_store_errors_total{")
                && body.contains("dcb_append_attempts_total{")
                && body.contains("result=\"conflict\"")
        })
    });
    for expr in dashboard_expressions() {
        for name in metric_names(&expr) {
            assert!(
                exposition.lines().any(|l| l.starts_with(&name)),
                "the dashboard reads {name}, which /metrics of a load test does not have"
            );
        }
    }

    let dir = std::env::temp_dir().join(format!("dcb-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana/prometheus.yml"),
    )
    .expect("grafana/prometheus.yml");
    // The shipped configuration, pointed at this run's address.
    std::fs::write(&config, shipped.replace("127.0.0.1:9464", &metrics_addr)).unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let _prometheus = Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (Debian: apt-get install prometheus)"),
    );
    let server = format!("http://{web}");
    let conflict_rate = "sum(rate(dcb_append_attempts_total{result=\"conflict\"}[15s])) \
                         / sum(rate(dcb_append_attempts_total[15s]))";
    // The rate is over the last 15 s: wait for a window with conflicts in it (a rate of exactly 0
    // is a valid answer while the callers happen not to collide).
    let rate = wait_for(
        "Prometheus to answer a non-zero conflict rate",
        Duration::from_secs(90),
        || {
            let answer = promtool_query(&server, conflict_rate)?;
            let rate: f64 = answer
                .rsplit("=>")
                .next()
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("not a value: {answer}"));
            // NaN: no append at all in the window (0 / 0).
            assert!(
                rate.is_nan() || (0.0..=1.0).contains(&rate),
                "conflict rate {rate}: {answer}"
            );
            (rate > 0.0).then_some(rate)
        },
    );
    eprintln!("conflict rate answered by Prometheus: {rate:.3}");
    for expr in dashboard_expressions() {
        wait_for(&format!("data for {expr}"), Duration::from_secs(30), || {
            promtool_query(&server, &expr)
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}
