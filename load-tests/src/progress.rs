//! Once a second: a sample for the timeline (and the chart), shown as a live progress bar on a
//! terminal, as a plain line otherwise, or not at all in a child process.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::latency;
use crate::telemetry::Snapshot;
use crate::timeline::Sample;

/// What the callers of one process have done so far.
pub(crate) struct Live {
    pub(crate) committed: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Latencies since the last sample (the callers also keep whole-run histograms).
    pub(crate) interval: Mutex<Histogram<u64>>,
}

impl Live {
    pub(crate) fn new() -> Self {
        Self {
            committed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            interval: Mutex::new(latency::histogram()),
        }
    }

    fn decided(&self) -> u64 {
        self.committed.load(Ordering::Relaxed) + self.rejected.load(Ordering::Relaxed)
    }
}

/// How the run is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Display {
    /// A progress bar when stderr is a terminal, plain lines otherwise.
    Auto,
    /// Nothing (a child process: its parent reports).
    Quiet,
}

/// Where the run ends: after a duration or a number of commands.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Goal {
    Duration(Duration),
    Commands(u64),
}

pub(crate) struct Sampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub(crate) fn start(
        live: Arc<Live>,
        metrics: PrometheusHandle,
        display: Display,
        goal: Goal,
    ) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let bar = bar(display, goal);
            let start = Instant::now();
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            let mut last = (start, 0, 0, Snapshot::take(&metrics));
            let mut samples = Vec::new();
            loop {
                // The last sample covers the partial second before the stop.
                let last_one = tokio::select! {
                    _ = ticks.tick() => false,
                    _ = &mut stopped => true,
                };
                let now = Instant::now();
                let (committed, decided) = (live.committed.load(Ordering::Relaxed), live.decided());
                let snapshot = Snapshot::take(&metrics);
                let p99_ms = {
                    let mut h = live.interval.lock().expect("interval histogram lock");
                    let p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
                    h.reset();
                    p99
                };
                let secs = (now - last.0).as_secs_f64();
                let delta = snapshot.since(last.3);
                let sample = Sample {
                    t_s: (now - start).as_secs_f64(),
                    committed_per_s: (committed - last.1) as f64 / secs,
                    decided_per_s: (decided - last.2) as f64 / secs,
                    conflicts: delta.conflicts,
                    append_attempts: delta.append_attempts,
                    p99_ms,
                };
                last = (now, committed, decided, snapshot);
                samples.push(sample);
                if last_one {
                    break;
                }
                if display == Display::Auto {
                    show(bar.as_ref(), &sample, &live, goal);
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            samples
        });
        Self { stop, task }
    }

    /// Stops sampling; the samples taken.
    pub(crate) async fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// `Some(bar)` on a terminal; `None` with plain lines or quiet.
fn bar(display: Display, goal: Goal) -> Option<ProgressBar> {
    if display == Display::Quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let (len, template) = match goal {
        Goal::Duration(d) => (d.as_secs().max(1), "{elapsed:>4} [{bar:25}] {msg}"),
        Goal::Commands(n) => (n, "{elapsed:>4} [{bar:25}] {pos}/{len} {msg}"),
    };
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    Some(bar)
}

fn show(bar: Option<&ProgressBar>, s: &Sample, live: &Live, goal: Goal) {
    let line = format!(
        "{:>7.0} committed/s  {:>7.0} decided/s  conflicts {:>5.1} %  p99 {:>7.2} ms  errors {}",
        s.committed_per_s,
        s.decided_per_s,
        s.conflict_rate() * 100.0,
        s.p99_ms,
        live.errors.load(Ordering::Relaxed)
    );
    match bar {
        Some(bar) => {
            match goal {
                Goal::Duration(_) => bar.set_position(s.t_s as u64),
                Goal::Commands(_) => {
                    bar.set_position(live.decided() + live.errors.load(Ordering::Relaxed))
                }
            }
            bar.set_message(line);
        }
        None => eprintln!("[{:>5.1} s] {line}", s.t_s),
    }
}
