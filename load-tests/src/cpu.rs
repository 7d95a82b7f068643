//! CPU time spent by a run, read from `/proc`: the harness process's own (the client side) and
//! that of the run's PostgreSQL backends (the server side), when the server runs on this
//! machine.
//!
//! The server side is the sum over the backends whose `application_name` is the one the run's
//! connections carry, listed in `pg_stat_activity` at the start and at the end of the run: a
//! backend seen at both counts its difference, one that appeared in between counts from its own
//! start (its connection set-up included). Blind spots: a backend that exits during the run
//! (a connection the pool drops, one `--chaos` kills) is missed; the server's shared
//! processes (WAL writer, checkpointer, background writer, autovacuum) are not counted at all,
//! since other databases' work on the same server would be counted with them.

use std::collections::HashMap;

use tokio_postgres::NoTls;

/// Clock ticks per second of `utime` and `stime` in `/proc/<pid>/stat`: USER_HZ, which Linux
/// fixes at 100 on the architectures it is built for here (x86, arm); reading it properly
/// (`sysconf(_SC_CLK_TCK)`) would need libc. So figures have a 10 ms resolution.
const TICKS_PER_S: f64 = 100.0;

/// The command name and the user + system time in ticks of a `/proc/<pid>/stat` line.
fn parse_stat(text: &str) -> Option<(&str, u64)> {
    // The name is between parentheses and may hold spaces and parentheses itself: the other
    // fields follow the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?;
    // After the name: field 3 (state) onwards; utime and stime are fields 14 and 15.
    let mut fields = text.get(close + 1..)?.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((name, utime + stime))
}

/// User + system ticks of process `pid` (`self` for this one) and its command name.
fn stat(pid: &str) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).map(|(name, ticks)| (name.to_owned(), ticks))
}

/// CPU seconds (user + system, all threads) this process has used so far; `None` without
/// `/proc` (not Linux).
pub(crate) fn process_s() -> Option<f64> {
    stat("self").map(|(_, ticks)| ticks as f64 / TICKS_PER_S)
}

/// CPU seconds this process used since `start` (a [`process_s`] reading).
pub(crate) fn process_since(start: Option<f64>) -> Option<f64> {
    Some((process_s()? - start?).max(0.0))
}

/// `url` (a libpq URL or `key=value` string) whose connections carry `application_name`, which
/// tells their backends apart in `pg_stat_activity`.
pub(crate) fn with_application_name(url: &str, application_name: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}application_name={application_name}")
    } else {
        format!("{url} application_name={application_name}")
    }
}

/// The CPU of the backends of one application name on the run's database, from a start sample
/// to [`ServerCpu::finish`].
pub(crate) struct ServerCpu {
    url: String,
    application_name: String,
    /// Ticks by backend pid at the start; `None` when the server is not local or could not be
    /// sampled.
    start: Option<HashMap<i32, u64>>,
}

impl ServerCpu {
    /// Samples the backends of the database at `url` that carry `application_name`.
    pub(crate) async fn start(url: &str, application_name: &str) -> Self {
        let start = sample_or_warn(url, application_name).await;
        Self {
            url: url.to_owned(),
            application_name: application_name.to_owned(),
            start,
        }
    }

    /// CPU seconds of those backends since the start sample; `None` when the server is not on
    /// this machine (its backends' `/proc` entries are not readable here) or a sample failed.
    pub(crate) async fn finish(self) -> Option<f64> {
        let start = self.start?;
        let end = sample_or_warn(&self.url, &self.application_name).await?;
        let ticks: u64 = end
            .iter()
            .map(|(pid, &t)| t.saturating_sub(start.get(pid).copied().unwrap_or(0)))
            .sum();
        Some(ticks as f64 / TICKS_PER_S)
    }
}

async fn sample_or_warn(url: &str, application_name: &str) -> Option<HashMap<i32, u64>> {
    match sample(url, application_name).await {
        Ok(sample) => sample,
        Err(e) => {
            eprintln!("server CPU not measured: sampling the backends failed: {e:#}");
            None
        }
    }
}

/// Ticks by pid of the backends carrying `application_name`, from a connection of its own (not
/// counted, as it carries no such name); `None` when the server is not on this machine.
async fn sample(url: &str, application_name: &str) -> anyhow::Result<Option<HashMap<i32, u64>>> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    let connection = tokio::spawn(connection);
    let own: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    // The server is local when this very backend is a PostgreSQL process here (a remote
    // server's pid may name some unrelated local process, or none). Checked while the session
    // is open: its backend exits with it.
    let local = is_postgres(&own.to_string()).unwrap_or(false);
    let rows = client
        .query(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            &[&application_name],
        )
        .await?;
    drop(client);
    let _ = connection.await;
    if !local {
        return Ok(None);
    }
    let mut ticks = HashMap::new();
    for row in rows {
        let pid: i32 = row.get(0);
        // A backend gone since the query (or not PostgreSQL after all) counts nothing.
        if let Some((name, t)) = stat(&pid.to_string())
            && is_postgres_name(&name)
        {
            ticks.insert(pid, t);
        }
    }
    Ok(Some(ticks))
}

fn is_postgres(pid: &str) -> Option<bool> {
    stat(pid).map(|(name, _)| is_postgres_name(&name))
}

fn is_postgres_name(name: &str) -> bool {
    matches!(name, "postgres" | "postmaster")
}

/// CPU ms per unit (decision, insert) of `cpu_s` over `units`; `None` without units or CPU.
pub(crate) fn ms_per(cpu_s: Option<f64>, units: u64) -> Option<f64> {
    (units > 0).then_some(())?;
    Some(cpu_s? * 1000.0 / units as f64)
}

#[cfg(test)]
mod tests {
    use super::{is_postgres, ms_per, parse_stat, process_s, with_application_name};

    #[test]
    fn user_and_system_ticks_are_fields_14_and_15_whatever_the_name() {
        let line = "2217 (postgres) S 1 2217 2217 0 -1 4194304 162208 16484514 0 263 54 671 \
                    15799 39711 20 0 1 0 4729";
        assert_eq!(parse_stat(line), Some(("postgres", 54 + 671)));
        let odd = "42 (a) b (c)) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15";
        assert_eq!(parse_stat(odd), Some(("a) b (c)", 11 + 12)));
        assert_eq!(parse_stat("42 (short) R 1 2"), None);
    }

    #[test]
    fn this_process_uses_cpu() {
        let start = process_s().expect("/proc/self/stat is readable");
        let began = std::time::Instant::now();
        let mut x = 0u64;
        // Spin until the reading moves (one tick, 10 ms of CPU), for at most 5 s.
        while process_s().expect("readable") <= start && began.elapsed().as_secs() < 5 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(
            process_s().unwrap() > start,
            "no CPU counted after {x} spins"
        );
    }

    #[test]
    fn application_name_joins_urls_and_key_value_strings() {
        assert_eq!(
            with_application_name("postgres://u@h/db", "a"),
            "postgres://u@h/db?application_name=a"
        );
        assert_eq!(
            with_application_name("postgresql://u@h/db?sslmode=disable", "a"),
            "postgresql://u@h/db?sslmode=disable&application_name=a"
        );
        assert_eq!(
            with_application_name("host=h dbname=db", "a"),
            "host=h dbname=db application_name=a"
        );
    }

    #[test]
    fn only_a_postgres_process_counts_as_a_local_backend() {
        // This test binary is no PostgreSQL backend: a remote server's pid naming it would not
        // make the server local.
        assert_eq!(is_postgres("self"), Some(false));
        assert_eq!(is_postgres("0"), None);
    }

    #[test]
    fn per_unit_needs_units_and_cpu() {
        assert_eq!(ms_per(Some(2.0), 1000), Some(2.0));
        assert_eq!(ms_per(Some(2.0), 0), None);
        assert_eq!(ms_per(None, 10), None);
    }
}
