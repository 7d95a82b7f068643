//! `--processes N`: the run split over N OS processes against the same database, results merged.
//!
//! The parent creates and prepares the database, then starts N copies of this binary with the
//! hidden `--child-of <url>`; each runs its share of callers (and commands) with its own runtime
//! and pool, and prints its [`ShareResult`] as JSON on stdout.

use std::process::Stdio;

use tokio::process::Command;

use crate::chaos::{self, Chaos, Killed};
use crate::cli::RunArgs;
use crate::share::ShareResult;
use crate::workload::Kind;

/// `total` split into `parts` shares differing by at most one.
pub(crate) fn split(total: u64, parts: usize, index: usize) -> u64 {
    let parts = parts as u64;
    let index = index as u64;
    total / parts + u64::from(index < total % parts)
}

/// Tokio's worker threads for each of `processes` sharing this host: its share of the cores, at
/// least one, as replicas given CPU limits would have (tokio sizes its runtime by the cores it may
/// use). Each taking all the cores made four processes on two run eight workers, parking and
/// waking each other: `disjoint --processes 4`, 3 rounds, 17,821-18,201/s and client CPU
/// 0.035-0.036 ms per decision with two workers each, 19,295-19,945/s and 0.028-0.029 with one.
/// `None` when the user set `TOKIO_WORKER_THREADS`: theirs holds.
fn workers_per_process(processes: usize) -> Option<usize> {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    Some((cores / processes).max(1))
}

/// Runs the scenario in `args.processes` child processes and collects their results (under
/// `--chaos kill-owner`, of those not killed; the killed one is returned).
pub(crate) async fn run_children(
    kind: Kind,
    args: &RunArgs,
    url: &str,
) -> anyhow::Result<(Vec<ShareResult>, Option<Killed>)> {
    let exe = std::env::current_exe()?;
    let workers = workers_per_process(args.processes);
    let mut children = Vec::with_capacity(args.processes);
    for index in 0..args.processes {
        let callers = split(args.concurrency as u64, args.processes, index);
        let mut cmd = Command::new(&exe);
        cmd.arg(kind.name())
            .args(["--child-of", url])
            .args(["--process-index", &index.to_string()])
            .args(["--concurrency", &callers.to_string()])
            .args([
                "--duration",
                &humantime::format_duration(args.duration).to_string(),
            ])
            .args(["--actors", &args.actors.to_string()])
            .args(["--keys", &args.keys.to_string()])
            .args(["--skew", &args.skew.to_string()])
            .args(["--seed", &args.seed().to_string()]);
        if args.turns_only {
            cmd.arg("--turns-only");
        }
        if args.own_appends {
            cmd.arg("--own-appends");
        }
        if args.uncoordinated {
            cmd.arg("--uncoordinated");
        }
        if let Some(chaos) = args.chaos {
            let name =
                clap::ValueEnum::to_possible_value(&chaos).expect("every chaos kind has a name");
            cmd.args(["--chaos", name.get_name()]);
        }
        if let Some(rate) = args.rate {
            // The process's part of the rate, in proportion to its callers.
            let part = rate * callers as f64 / args.concurrency as f64;
            cmd.args(["--rate", &part.to_string()]);
        }
        if let Some(n) = args.commands {
            cmd.args(["--commands", &split(n, args.processes, index).to_string()]);
        }
        // Only the first process can serve /metrics on the address.
        if let (0, Some(addr)) = (index, args.metrics_addr) {
            cmd.args(["--metrics-addr", &addr.to_string()]);
        }
        if let Some(workers) = workers {
            cmd.env("TOKIO_WORKER_THREADS", workers.to_string());
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        children.push(cmd.spawn()?);
    }
    eprintln!("{} process(es) running", children.len());
    let mut killed = None;
    let victim = match args.chaos {
        Some(Chaos::KillOwner) => {
            let holder = chaos::turn_holder(url, args.duration / 3, args.duration).await?;
            Some(holder.ok_or_else(|| {
                anyhow::anyhow!(
                    "--chaos kill-owner: no process held a turn on a contended key during the \
                     run (nothing to kill: is the scenario contended across processes?)"
                )
            })?)
        }
        Some(Chaos::KillAppender) => {
            let holder = chaos::appender(url, args.duration / 3, args.duration).await?;
            Some(holder.ok_or_else(|| {
                anyhow::anyhow!("--chaos kill-appender: no process was elected appender")
            })?)
        }
        _ => None,
    };
    if let Some(index) = victim {
        children[index].start_kill()?;
        let what = if args.chaos == Some(Chaos::KillOwner) {
            "it owned, or held a turn on, a contended key"
        } else {
            "it wrote every process's appends"
        };
        eprintln!("chaos: killed process {index} (SIGKILL) while {what}");
        killed = Some(Killed {
            process: index,
            callers: usize::try_from(split(args.concurrency as u64, args.processes, index))?,
            decisions: kind.decision_names(),
        });
    }
    let mut results = Vec::with_capacity(children.len());
    for (index, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().await?;
        if killed.is_some_and(|k| k.process == index) {
            continue;
        }
        anyhow::ensure!(
            output.status.success(),
            "process {index} failed ({}); its messages are above",
            output.status
        );
        let result: ShareResult = serde_json::from_slice(&output.stdout)
            .map_err(|e| anyhow::anyhow!("process {index} printed no valid result ({e})"))?;
        results.push(result);
    }
    Ok((results, killed))
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for total in [0u64, 1, 7, 32, 33, 1000] {
            for parts in 1..6 {
                let shares: Vec<u64> = (0..parts).map(|i| split(total, parts, i)).collect();
                assert_eq!(shares.iter().sum::<u64>(), total, "{total} / {parts}");
                let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                assert!(max - min <= 1, "{shares:?}");
            }
        }
    }
}
