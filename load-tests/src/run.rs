//! Running one process's share of a run: its callers, its runtime, its counts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dcb_runtime::{PostgresStore, Runtime, RuntimeBuilder};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::chaos::{self, Chaos};
use crate::cli::RunArgs;
use crate::cpu::{self, ServerCpu};
use crate::keys::KeyPicker;
use crate::latency;
use crate::progress::{Display, Goal, Live, Sampler};
use crate::schedule::Schedule;
use crate::share::{Share, ShareResult};
use crate::telemetry::Snapshot;
use crate::workload::{Kind, Outcome, Workload};

const ERRORS_KEPT: usize = 5;

/// Runs `share` of `kind` against the prepared database at `url`.
pub(crate) async fn run_share(
    kind: Kind,
    args: &RunArgs,
    url: &str,
    share: Share,
    metrics: &PrometheusHandle,
    display: Display,
) -> anyhow::Result<ShareResult> {
    // The process's backends carry its name, for their CPU to be told apart.
    let application_name = format!("dcb-load-p{}", share.process);
    let store_url = cpu::with_application_name(url, &application_name);
    let store = match args.chaos {
        Some(Chaos::PoolStarvation) => PostgresStore::builder(&store_url)
            .pool_size(chaos::STARVED_POOL)
            .wait_timeout(chaos::STARVED_WAIT),
        _ => PostgresStore::builder(&store_url).pool_size(args.actors + 4),
    };
    let store = if args.own_appends || args.uncoordinated {
        store
    } else {
        // One transaction for the appends of every process (with one process: itself).
        store.shared_appender(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
    .connect()
    .await?;
    let mut builder = if args.uncoordinated {
        RuntimeBuilder::new(store)
    } else {
        Runtime::builder(store)
    }
    .actors(args.actors)
    .queue_capacity(share.callers.max(1024));
    if !args.turns_only && !args.uncoordinated {
        // The one scenario whose decisions hold one key that several processes contend for.
        builder = builder.forward::<dcb_scenarios::invoice::NextInvoice>();
    }
    let runtime = builder.start().await?;
    let keys = KeyPicker::new(args.keys, args.skew)?;
    let keyed = args.chaos.is_some();
    let workload = Arc::new(Workload::new(kind, keys, args.keys, share.process, keyed));
    let live = Arc::new(Live::new());
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new((BTreeMap::new(), Vec::new())));
    let before = Snapshot::take(metrics);
    let goal = match share.commands {
        Some(n) => Goal::Commands(n),
        None => Goal::Duration(args.duration),
    };
    let server_cpu = ServerCpu::start(url, &application_name).await;
    let client_cpu = cpu::process_s();
    // The process's latencies and latencies from due time, one pair of histograms for all its
    // callers (each records under the lock, as into `live.interval`). A pair per caller (about
    // 280 kB each) cost 1,024 callers 573 MB and, in an open loop at 12,000/s, 0.055-0.059 ms of
    // client CPU per decision against 0.039 with this pair.
    let recorded = Arc::new(std::sync::Mutex::new((
        latency::histogram(),
        latency::histogram(),
    )));
    let sampler = Sampler::start(live.clone(), metrics.clone(), display, goal);
    let start = Instant::now();
    let deadline = start + args.duration;
    let schedule = share
        .rate
        .map(|rate| Arc::new(Schedule::new(start, rate, args.duration)));
    let mut callers = Vec::with_capacity(share.callers);
    for caller in 0..share.callers {
        let (runtime, workload, live, issued, errors, schedule) = (
            runtime.clone(),
            workload.clone(),
            live.clone(),
            issued.clone(),
            errors.clone(),
            schedule.clone(),
        );
        let mut rng = fastrand::Rng::with_seed(caller_seed(args.seed(), share.process, caller));
        let commands = share.commands;
        let recorded = recorded.clone();
        callers.push(tokio::spawn(async move {
            let (mut sent, mut acked) = (Vec::new(), Vec::new());
            for n in 0.. {
                // Open loop: the next due command, waited for unless already overdue.
                let due_at = match &schedule {
                    Some(schedule) => match schedule.take(Instant::now()) {
                        Some(slot) => {
                            if !slot.late {
                                tokio::time::sleep_until(slot.due_at.into()).await;
                            }
                            Some(slot.due_at)
                        }
                        None => break,
                    },
                    None => {
                        let more = match commands {
                            Some(limit) => issued.fetch_add(1, Ordering::Relaxed) < limit,
                            None => Instant::now() < deadline,
                        };
                        if !more {
                            break;
                        }
                        None
                    }
                };
                let began = Instant::now();
                let (outcome, id) = workload.step(&runtime, &mut rng, caller, n).await;
                sent.extend(id);
                let answered = Instant::now();
                let took = answered - began;
                {
                    let mut recorded = recorded.lock().expect("latencies lock");
                    latency::record(&mut recorded.0, took);
                    if let Some(due_at) = due_at {
                        latency::record(&mut recorded.1, answered - due_at);
                    }
                }
                latency::record(&mut live.interval.lock().expect("interval lock"), took);
                match outcome {
                    Outcome::Committed(ids) => {
                        if keyed {
                            acked.extend(ids);
                        }
                        live.committed.fetch_add(1, Ordering::Relaxed)
                    }
                    Outcome::Rejected => live.rejected.fetch_add(1, Ordering::Relaxed),
                    Outcome::Error(label, message) => {
                        let mut errors = errors.lock().expect("errors lock");
                        *errors.0.entry(label.to_owned()).or_insert(0u64) += 1;
                        if errors.1.len() < ERRORS_KEPT {
                            errors.1.push(message);
                        }
                        live.errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            (sent, acked)
        }));
    }
    let (mut sent_ids, mut acked_ids) = (Vec::new(), Vec::new());
    for caller in callers {
        let (sent, acked) = caller.await?;
        sent_ids.extend(sent);
        acked_ids.extend(acked);
    }
    let (latencies, scheduled) = std::mem::replace(
        &mut *recorded.lock().expect("latencies lock"),
        (latency::histogram(), latency::histogram()),
    );
    let duration_s = start.elapsed().as_secs_f64();
    let timeline = sampler.finish().await;
    // Before the shutdown closes the pool's connections (an exited backend's CPU is lost).
    let cpu_client_s = cpu::process_since(client_cpu);
    let cpu_server_s = server_cpu.finish().await;
    runtime.shutdown().await;
    let (errors_by_outcome, first_errors) = std::mem::take(&mut *errors.lock().expect("errors"));
    Ok(ShareResult {
        process: share.process,
        committed: live.committed.load(Ordering::Relaxed),
        rejected: live.rejected.load(Ordering::Relaxed),
        errors: live.errors.load(Ordering::Relaxed),
        errors_by_outcome,
        first_errors,
        duration_s,
        latency_us: latency::pairs(&latencies),
        scheduled_latency_us: latency::pairs(&scheduled),
        due: schedule.as_ref().map_or(0, |s| s.due()),
        late: schedule.as_ref().map_or(0, |s| s.late()),
        cpu_client_s,
        cpu_server_s,
        metrics: Snapshot::take(metrics).since(before),
        timeline,
        sent_ids,
        acked_ids,
    })
}

/// A distinct, reproducible random stream per caller of each process.
fn caller_seed(seed: u64, process: usize, caller: usize) -> u64 {
    let mut x = seed ^ ((process as u64) << 40) ^ (caller as u64);
    // splitmix64's finaliser: neighbouring inputs give unrelated seeds.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
