//! The Prometheus exposition served over HTTP after a workload producing every command outcome:
//! every metric of `dcb_runtime::metrics::ALL` is there with its type, histograms are histograms,
//! and a strict parser of the text exposition format (0.0.4) accepts it, with the same types.

#[path = "support/gate.rs"]
mod gate;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcb_runtime::metrics as names;
use dcb_runtime::subscription::{Handler, HandlerError, Subscription};
use dcb_runtime::testing::TestDatabase;
use dcb_runtime::{
    Decision, Event, EventStore, ExecuteError, P, Projection, Query, QueryItem, Runtime,
    SequencedEvent,
};
use gate::Gate;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HISTOGRAMS: &[&str] = &[
    names::COMMAND_DURATION_SECONDS,
    names::READ_DURATION_SECONDS,
    names::APPEND_DURATION_SECONDS,
    names::BACKOFF_SECONDS,
    names::APPEND_BATCH_SIZE,
];
const GAUGES: &[&str] = &[
    names::INFLIGHT_COMMANDS,
    names::QUEUE_DEPTH,
    names::POOL_CONNECTIONS,
    names::SUBSCRIPTION_POSITION,
    names::SUBSCRIPTION_LAG_EVENTS,
    names::SUBSCRIPTION_LAG_SECONDS,
    names::SUBSCRIPTION_ACTIVE,
    names::LEASED_KEYS,
    names::OWNED_KEYS,
];
const COUNTERS: &[&str] = &[
    names::COMMANDS_TOTAL,
    names::APPEND_ATTEMPTS_TOTAL,
    names::COMMAND_RETRIES_TOTAL,
    names::EVENTS_APPENDED_TOTAL,
    names::ACTOR_RESTARTS_TOTAL,
    names::STORE_ERRORS_TOTAL,
    names::SUBSCRIPTION_EVENTS_TOTAL,
    names::SUBSCRIPTION_ERRORS_TOTAL,
    names::APPEND_CONFLICTS_TOTAL,
    names::LEASES_TOTAL,
    names::FORWARDED_COMMANDS_TOTAL,
    names::FORWARDED_COMMANDS_SERVED_TOTAL,
    names::OWNERSHIPS_TOTAL,
    names::APPEND_LINGERS_TOTAL,
    names::APPENDS_SENT_TOTAL,
    names::APPEND_LEADERSHIPS_TOTAL,
];
/// Every `outcome` of `dcb_commands_total`.
const OUTCOMES: &[&str] = &[
    "committed",
    "rejected",
    "conflict_exhausted",
    "overloaded",
    "timeout",
    "error",
];

/// Fails its first batch, then takes every one.
struct FailsOnce(bool);

impl Handler for FailsOnce {
    async fn handle(&mut self, _events: &[SequencedEvent]) -> Result<(), HandlerError> {
        if std::mem::replace(&mut self.0, true) {
            Ok(())
        } else {
            Err("the first batch fails".into())
        }
    }
}

/// Counts the bumps of one hot counter.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bumps;

impl Projection for Bumps {
    type State = u64;
    fn query(&self) -> Query {
        QueryItem::new(["Bumped"], [P("counter", "hot")]).into()
    }
    fn initial_state(&self) -> u64 {
        0
    }
    fn evolve(&self, bumps: &mut u64, _event: &SequencedEvent) {
        *bumps += 1;
    }
}

fn bumped(n: u64) -> Event {
    Event::new("Bumped", json!({ "n": n })).tagged("counter", "hot")
}

#[derive(Clone, Copy)]
enum Mode {
    Commit,
    Reject,
    Panic,
}

/// A bump of the hot counter. Its consistency key and keys are its own number, so bumps of the
/// same boundary run on different actors at once and conflict in the database (conflicts of
/// this process: keys that miss an overlap).
struct Bump {
    n: u64,
    mode: Mode,
    gate: Option<Arc<Gate>>,
}

impl Bump {
    fn new(n: u64, mode: Mode) -> Self {
        Self {
            n,
            mode,
            gate: None,
        }
    }
}

impl Decision for Bump {
    const NAME: &'static str = "bump";
    type Projection = Bumps;
    type Rejection = &'static str;

    fn projection(&self) -> Bumps {
        Bumps
    }

    fn decide(&self, _bumps: &u64) -> Result<Vec<Event>, &'static str> {
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        match self.mode {
            Mode::Commit => Ok(vec![bumped(self.n)]),
            Mode::Reject => Err("refused"),
            Mode::Panic => panic!("bump {} was told to panic", self.n),
        }
    }

    fn consistency_key(&self, _read_query: &Query) -> u64 {
        self.n
    }

    fn consistency_keys(&self, _condition_query: &Query) -> Vec<u64> {
        vec![self.n]
    }
}

/// A decision registered for forwarding (`RuntimeBuilder::forward`), so that the forwarding
/// metrics are exposed; it never runs.
#[derive(serde::Serialize, serde::Deserialize)]
struct Forwardable;

impl Decision for Forwardable {
    const NAME: &'static str = "forwardable";
    type Projection = Bumps;
    type Rejection = std::convert::Infallible;

    fn projection(&self) -> Bumps {
        Bumps
    }

    fn decide(&self, _bumps: &u64) -> Result<Vec<Event>, Self::Rejection> {
        Ok(Vec::new())
    }
}

/// Installs the exporter on a free loopback port.
fn install() -> (SocketAddr, metrics_exporter_prometheus::PrometheusHandle) {
    let mut last = None;
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // The port was free a moment ago; if another process took it since, try another.
        match names::install_prometheus(addr) {
            Ok(handle) => return (addr, handle),
            Err(e) => last = Some(e),
        }
    }
    panic!("could not install the exporter: {last:?}");
}

/// `GET /metrics` over a plain TCP connection; returns the body after checking status and type.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("response");
    let response = String::from_utf8(response).expect("UTF-8");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers");
    let mut lines = head.lines();
    let status = lines.next().expect("status line");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let content_type = header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "the text exposition format: {content_type}"
    );
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(body)
    } else {
        body.to_owned()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size");
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").expect("chunk end");
    }
}

/// The value of `series` (name and labels exactly as rendered, or a bare name), if present.
fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Names with a sample line in the exposition (labels and histogram suffixes kept apart).
fn sampled_names(exposition: &str) -> BTreeSet<&str> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or(""))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_exposition_is_complete_typed_and_parses() {
    let (addr, handle) = install();
    let db = TestDatabase::create().await.expect("database");
    let store = db.store().await.expect("store");

    // Conflicts: same-boundary bumps spread over four actors by their consistency key, in
    // rounds until at least one was retried (one round practically always suffices).
    let runtime = Runtime::builder(store.clone())
        .actors(4)
        .forward::<Forwardable>()
        .start()
        .await
        .expect("runtime");
    let retries = format!("{}{{decision=\"bump\"}}", names::COMMAND_RETRIES_TOTAL);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = 0;
    let mut rounds = 0;
    while value(&handle.render(), &retries).unwrap_or(0.0) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no conflict after {rounds} rounds"
        );
        let round = (next..next + 64).map(|n| runtime.execute(Bump::new(n, Mode::Commit)));
        next += 64;
        rounds += 1;
        for outcome in futures::future::join_all(round).await {
            match outcome {
                Ok(_) | Err(ExecuteError::ConflictsExhausted { .. }) => {}
                Err(e) => panic!("unexpected outcome: {e:?}"),
            }
        }
    }
    // Those conflicts were this process's own, and counted so, command by command.
    let exposition = handle.render();
    let by_source = |source: &str| {
        let series = format!("{}{{source=\"{source}\"}}", names::APPEND_CONFLICTS_TOTAL);
        value(&exposition, &series).unwrap_or(-1.0)
    };
    let conflicts = format!(
        "{}{{decision=\"bump\",result=\"conflict\"}}",
        names::APPEND_ATTEMPTS_TOTAL
    );
    assert!(by_source("same_process") >= 1.0, "{exposition}");
    assert_eq!(by_source("other_process"), 0.0, "{exposition}");
    assert_eq!(
        Some(by_source("same_process")),
        value(&exposition, &conflicts),
        "{exposition}"
    );
    // A rejection and a panic ("error").
    assert!(matches!(
        runtime.execute(Bump::new(next, Mode::Reject)).await,
        Err(ExecuteError::Rejected("refused"))
    ));
    assert!(matches!(
        runtime.execute(Bump::new(next + 1, Mode::Panic)).await,
        Err(ExecuteError::Panicked(_))
    ));

    // Overload: one slot, held by a bump waiting at a gate.
    let small = Runtime::builder(store.clone())
        .actors(1)
        .queue_capacity(1)
        .start()
        .await
        .expect("runtime");
    let gate = Gate::closed();
    let holder = tokio::spawn({
        let small = small.clone();
        let bump = Bump {
            gate: Some(gate.clone()),
            ..Bump::new(next + 2, Mode::Commit)
        };
        async move { small.execute(bump).await }
    });
    gate.arrived(1).await;
    assert!(matches!(
        small.execute(Bump::new(next + 3, Mode::Commit)).await,
        Err(ExecuteError::Overloaded)
    ));
    gate.open();
    holder.await.expect("task").expect("the holder commits");

    // Conflicts exhausted: one attempt allowed, and a bump appended between its read and append.
    let once = Runtime::builder(store.clone())
        .max_attempts(1)
        .start()
        .await
        .expect("runtime");
    let gate = Gate::closed();
    let doomed = tokio::spawn({
        let once = once.clone();
        let bump = Bump {
            gate: Some(gate.clone()),
            ..Bump::new(next + 4, Mode::Commit)
        };
        async move { once.execute(bump).await }
    });
    gate.arrived(1).await;
    store
        .append(vec![bumped(next + 5)])
        .await
        .expect("concurrent bump");
    gate.open();
    assert!(matches!(
        doomed.await.expect("task"),
        Err(ExecuteError::ConflictsExhausted { attempts: 1 })
    ));
    // A conflict from an append without a runtime's append id: another writer than this process.
    let outside = format!(
        "{}{{source=\"other_process\"}}",
        names::APPEND_CONFLICTS_TOTAL
    );
    assert_eq!(value(&handle.render(), &outside), Some(1.0));

    // Timeout: a deadline already passed at submission.
    let late = Runtime::builder(store.clone())
        .deadline(Duration::ZERO)
        .start()
        .await
        .expect("runtime");
    assert!(matches!(
        late.execute(Bump::new(next + 6, Mode::Commit)).await,
        Err(ExecuteError::Timeout)
    ));

    // A store error: the database disappears under a runtime. Its reads fail (retried as
    // transient until the deadline) and are counted by reason; the command answers the error.
    let doomed = TestDatabase::create().await.expect("database");
    let lost = Runtime::builder(doomed.store().await.expect("store"))
        .deadline(Duration::from_millis(300))
        .start()
        .await
        .expect("runtime");
    db.client()
        .await
        .expect("client")
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", doomed.name()))
        .await
        .expect("drop the database");
    let failed = lost.execute(Bump::new(next + 7, Mode::Commit)).await;
    assert!(
        matches!(&failed, Err(ExecuteError::Store(e)) if e.is_transient()),
        "{failed:?}"
    );
    lost.shutdown().await;

    // A subscription whose handler fails once, then follows every event.
    let head = store
        .read(
            &Query::all(),
            dcb_runtime::ReadOptions::default().limit(1).backwards(),
        )
        .await
        .expect("head")
        .head
        .expect("events were stored");
    let subscription = Subscription::new("watched", Query::all())
        .retry(3, Duration::from_millis(1), Duration::from_millis(2))
        .run_at_least_once(&store, FailsOnce(false))
        .await
        .expect("subscription");
    subscription.caught_up_to(head).await.expect("caught up");

    // The sampled gauges appear within a sampling period or two: scrape until every name is
    // there (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let exposition = loop {
        let exposition = scrape(addr).await;
        let sampled = sampled_names(&exposition);
        let complete = names::ALL.iter().all(|name| {
            if HISTOGRAMS.contains(name) {
                sampled.contains(format!("{name}_bucket").as_str())
            } else {
                sampled.contains(name)
            }
        });
        if complete || Instant::now() >= deadline {
            break exposition;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{rounds} contention round(s) of 64 bumps on 4 actors");
    for r in [&runtime, &small, &once, &late] {
        r.shutdown().await;
    }

    // The table above covers the crate's list exactly.
    let listed: BTreeSet<&str> = names::ALL.iter().copied().collect();
    let typed: BTreeSet<&str> = HISTOGRAMS
        .iter()
        .chain(GAUGES)
        .chain(COUNTERS)
        .copied()
        .collect();
    assert_eq!(listed, typed, "every metric has a known type");
    assert_eq!(
        typed.len(),
        HISTOGRAMS.len() + GAUGES.len() + COUNTERS.len()
    );

    let sampled = sampled_names(&exposition);
    let mut missing = Vec::new();
    for name in names::ALL {
        let (kind, sample) = if HISTOGRAMS.contains(name) {
            ("histogram", format!("{name}_bucket"))
        } else if GAUGES.contains(name) {
            ("gauge", (*name).to_owned())
        } else {
            ("counter", (*name).to_owned())
        };
        if !sampled.contains(sample.as_str()) {
            missing.push(sample);
            continue;
        }
        assert!(
            exposition
                .lines()
                .any(|l| l == format!("# TYPE {name} {kind}")),
            "{name} is exposed as a {kind}"
        );
        if kind == "histogram" {
            let buckets: Vec<&str> = exposition
                .lines()
                .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
                .collect();
            assert!(
                buckets.iter().all(|l| l.contains("le=\"")),
                "{name}: buckets carry le"
            );
            assert!(
                buckets.iter().any(|l| l.contains("le=\"+Inf\"")),
                "{name}: a +Inf bucket"
            );
            assert!(
                sampled.contains(format!("{name}_sum").as_str()),
                "{name}_sum"
            );
            assert!(
                sampled.contains(format!("{name}_count").as_str()),
                "{name}_count"
            );
        }
    }
    assert!(
        missing.is_empty(),
        "missing from the exposition: {missing:?}\n{exposition}"
    );
    assert!(
        !exposition.contains("quantile="),
        "summaries instead of histograms:\n{exposition}"
    );
    assert!(!exposition.contains(" summary\n"), "no summaries");
    for outcome in OUTCOMES {
        let series = format!(
            "{}{{decision=\"bump\",outcome=\"{outcome}\"}}",
            names::COMMANDS_TOTAL
        );
        assert!(
            value(&exposition, &series).is_some_and(|v| v >= 1.0),
            "{series} counted\n{exposition}"
        );
    }
    assert!(value(&exposition, names::ACTOR_RESTARTS_TOTAL).is_some_and(|v| v >= 1.0));
    let of = |name: &str, labels: &str| format!("{name}{{subscription=\"watched\"{labels}}}");
    #[allow(clippy::cast_precision_loss)]
    let head = head.get() as f64;
    for (series, expected) in [
        (of(names::SUBSCRIPTION_ACTIVE, ""), 1.0),
        (of(names::SUBSCRIPTION_POSITION, ""), head),
        (of(names::SUBSCRIPTION_LAG_EVENTS, ""), 0.0),
        (of(names::SUBSCRIPTION_EVENTS_TOTAL, ""), head),
        (
            of(names::SUBSCRIPTION_ERRORS_TOTAL, ",kind=\"handler\""),
            1.0,
        ),
        (of(names::SUBSCRIPTION_ERRORS_TOTAL, ",kind=\"store\""), 0.0),
    ] {
        assert_eq!(
            value(&exposition, &series),
            Some(expected),
            "{series}\n{exposition}"
        );
    }
    subscription.shutdown().await;

    let parsed = parse_exposition(&exposition)
        .unwrap_or_else(|e| panic!("the exposition does not parse: {e}\n{exposition}"));
    for name in names::ALL {
        let expected = if HISTOGRAMS.contains(name) {
            PrometheusType::Histogram
        } else if GAUGES.contains(name) {
            PrometheusType::Gauge
        } else {
            PrometheusType::Counter
        };
        let family = parsed
            .families
            .get(*name)
            .unwrap_or_else(|| panic!("the parser found no family {name}"));
        assert_eq!(family.family_type, expected, "the parsed type of {name}");
    }
}

/// Parses the exposition as the text format 0.0.4 strictly: the grammar (names, label syntax and
/// escapes, numbers, one sample a line) and the rules of its metric types (a family split in two,
/// a series twice, a histogram without a `+Inf` bucket or not cumulative, a negative counter are
/// errors). It stands in for `promtool check metrics`, so the test needs no Prometheus binary.
fn parse_exposition(
    exposition: &str,
) -> Result<MetricsExposition<PrometheusType, PrometheusValue>, String> {
    openmetrics_parser::prometheus::parse_prometheus(exposition).map_err(|e| e.to_string())
}

#[test]
fn the_exposition_check_rejects_malformed_text() {
    let valid = "# HELP dcb_queue_depth Commands waiting.\n\
                 # TYPE dcb_queue_depth gauge\n\
                 dcb_queue_depth{actor=\"0\"} 3\n\
                 \n\
                 # TYPE dcb_read_duration_seconds histogram\n\
                 dcb_read_duration_seconds_bucket{le=\"0.005\"} 1\n\
                 dcb_read_duration_seconds_bucket{le=\"+Inf\"} 2\n\
                 dcb_read_duration_seconds_sum 0.5\n\
                 dcb_read_duration_seconds_count 2\n";
    parse_exposition(valid).expect("a well-formed exposition parses");

    let malformed = [
        (
            "a line that is no sample",
            "dcb_queue_depth 3\nthis is not a sample\n",
        ),
        (
            "an unterminated label value",
            "dcb_queue_depth{actor=\"0} 3\n",
        ),
        ("a value that is no number", "dcb_queue_depth three\n"),
        (
            "a sample of another name in a typed family",
            "# TYPE dcb_queue_depth gauge\ndcb_queue_dpeth 3\n",
        ),
        (
            "a series twice",
            "# TYPE dcb_queue_depth gauge\ndcb_queue_depth 3\ndcb_queue_depth 4\n",
        ),
        (
            "a histogram without a +Inf bucket",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        ),
        (
            "a histogram whose buckets are not cumulative",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        ),
        ("a negative counter", "# TYPE c_total counter\nc_total -1\n"),
    ];
    for (what, text) in malformed {
        assert!(
            parse_exposition(text).is_err(),
            "{what} was accepted:\n{text}"
        );
    }
}
