//! The PostgreSQL store: reads by index, appends through a group committer.

mod group_commit;
mod leader;
mod linger;
mod read_sql;
mod session;
mod warm_up;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use uuid::Uuid;

use super::{EventStore, PoolStatus, ReadOptions, ReadResult};
use crate::append::{AppendCondition, Appended};
use crate::error::{AppendError, StoreError};
use crate::event::{Event, Position, SequencedEvent, Tag};
use crate::limits::Limits;
use crate::query::Query;
use crate::query::{validate_query_with, validate_read};
use crate::validate::validate_events;
use group_commit::{Append, GroupCommitter};
pub(crate) use session::Session;

/// A DCB event store on PostgreSQL.
///
/// Cheap to clone: clones share the pool and the group committer. Appends from all clones and
/// tasks are collected into batches, each written by one call of `dcb_append` in one transaction.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// The connection settings, for the sessions a pool cannot serve: a subscription's lock
    /// holder and the notification listener.
    config: tokio_postgres::Config,
    limits: Limits,
    committer: GroupCommitter,
    /// This process's part in electing one appender for all processes, when it takes part.
    _leadership: Option<leader::Leadership>,
    wakeups: std::sync::OnceLock<crate::subscription::Wakeups>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.inner.pool.status())
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// Configures a [`PostgresStore`]; every setting has a stated default.
#[derive(Clone)]
#[must_use]
pub struct PostgresStoreBuilder {
    url: String,
    pool_size: usize,
    wait_timeout: Duration,
    connect_timeout: Duration,
    limits: Limits,
    max_batch: usize,
    migrate: bool,
    warm_connections: usize,
    shared_appender: Option<SocketAddr>,
}

/// Shows the URL without its password.
impl std::fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("url", &crate::redact::redact(&self.url))
            .field("pool_size", &self.pool_size)
            .field("wait_timeout", &self.wait_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("limits", &self.limits)
            .field("max_batch", &self.max_batch)
            .field("migrate", &self.migrate)
            .field("warm_connections", &self.warm_connections)
            .field("shared_appender", &self.shared_appender)
            .finish()
    }
}

impl PostgresStore {
    /// A builder for a store on the database at `url` (a libpq URL or key=value string).
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: url.into(),
            pool_size: 16,
            wait_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            max_batch: 256,
            migrate: true,
            warm_connections: 4,
            shared_appender: None,
        }
    }

    /// Connects with the defaults and applies the migrations.
    ///
    /// # Errors
    ///
    /// A bad URL, an unreachable server or a failed migration.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// The input limits this store enforces.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Applies `migrations/` in order. Idempotent, and safe when several processes call it at
    /// once: they queue on a session advisory lock.
    ///
    /// # Errors
    ///
    /// A connection or migration failure.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        crate::migrate::run(&self.inner.config).await
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.inner.config
    }

    /// The append ids of the first `limit` events matching `query` after `after` (`None`:
    /// appended without one): how a command actor learns whether another process failed its
    /// condition.
    pub(crate) async fn writers_after(
        &self,
        query: &Query,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<Option<Uuid>>, StoreError> {
        let built = read_sql::build(query, &ReadOptions::default().after_opt(after).limit(limit));
        let sql = format!(
            "SELECT x.append_id FROM ({}) r JOIN events x ON x.position = r.position",
            built.sql
        );
        let client = self.inner.pool.get().await?;
        let statement = client.prepare_cached(&sql).await?;
        let rows = client.query(&statement, &built.params()).await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// The process's one notification listener, started by the first follower that asks.
    pub(crate) fn wakeups(&self) -> &crate::subscription::Wakeups {
        self.inner
            .wakeups
            .get_or_init(|| crate::subscription::Wakeups::start(self.inner.config.clone()))
    }

    async fn write(
        &self,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
        append_id: Option<Uuid>,
    ) -> Result<Appended, AppendError> {
        self.write_watching(events, condition, append_id, Vec::new(), false)
            .await
            .0
    }

    /// [`EventStore::append_as`] (or `append_if` without `append_id`), answering also which of
    /// the turn locks in `watch` (V6) another session held when the events were written (V7):
    /// how a command actor running without turns learns that another process takes turns on
    /// its keys. `urgent`: others wait for this append (it holds turns they wait for), so it
    /// never waits for company in the appender (`postgres/linger.rs`).
    pub(crate) async fn write_watching(
        &self,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
        append_id: Option<Uuid>,
        watch: Vec<i32>,
        urgent: bool,
    ) -> (Result<Appended, AppendError>, Vec<i32>) {
        let limits = &self.inner.limits;
        let payloads = match validate_events(&events, limits) {
            Ok(payloads) => payloads,
            Err(e) => return (Err(e.into()), Vec::new()),
        };
        if let Some(c) = &condition
            && let Err(e) = validate_query_with(&c.fail_if_events_match, limits)
        {
            return (Err(e.into()), Vec::new());
        }
        self.inner
            .committer
            .submitter()
            .submit(Append {
                events,
                payloads,
                condition,
                append_id,
                watch,
                urgent,
            })
            .await
    }
}

impl PostgresStoreBuilder {
    /// Most connections in the pool (default 16; at least 1). Reads take one each; the group
    /// committer one.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How long to wait for a free connection before failing (default 10 s).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// How long to wait for a new connection to open (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Input limits (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Most appends written in one transaction (default 256; at least 1).
    pub fn max_batch(mut self, max: usize) -> Self {
        self.max_batch = max;
        self
    }

    /// Whether `connect` applies the migrations (default true).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Connections `connect` opens and readies (a read and an empty append planned on each)
    /// before it returns, at most `pool_size` (default 4: what one process's runtime keeps busy
    /// under load, its actor's reads and the appender). The pool opens the others when first
    /// needed. 0 opens only the one that checks the server is there. Best effort: a connection
    /// that cannot be readied (a statement timeout shorter than its first planning) does not
    /// fail `connect`.
    pub fn warm_connections(mut self, connections: usize) -> Self {
        self.warm_connections = connections;
        self
    }

    /// Makes this store's processes write through one appender (default: each writes its own).
    ///
    /// The processes sharing a database elect one (a PostgreSQL session advisory lock); while
    /// other processes write too, the others send it their batches over TCP, to the address it
    /// listens on, `bind` here (port 0 picks a free one; the others must reach it). Its
    /// transactions then carry the appends of every process, one disk sync for all, where each
    /// process's would queue for the store's lock, each through a sync of its own. An append the
    /// leader did not answer (it died, its connection failed, it answered late) is written by
    /// its own process under the same append id, so nothing is lost or stored twice; meanwhile
    /// each process writes its own, and a dead leader is replaced at once when a process sending
    /// to it notices, else within about 2 s. What connects must present a token the leader
    /// records in the database, so only the roles that may read the store's tables can send
    /// appends.
    pub fn shared_appender(mut self, bind: SocketAddr) -> Self {
        self.shared_appender = Some(bind);
        self
    }

    /// Opens the pool, applies the migrations unless disabled, and starts the group committer.
    ///
    /// # Errors
    ///
    /// [`StoreError::Setting`] for a pool size or batch of 0, or a shared appender bound to an
    /// unspecified address (0.0.0.0 or ::, which the others cannot be told to connect to); a bad
    /// URL, an unreachable server or a failed migration.
    pub async fn connect(self) -> Result<PostgresStore, StoreError> {
        StoreError::at_least_one("pool_size", self.pool_size)?;
        StoreError::at_least_one("max_batch", self.max_batch)?;
        if let Some(bind) = self.shared_appender
            && bind.ip().is_unspecified()
        {
            return Err(StoreError::Setting {
                name: "shared_appender",
                value: bind.to_string(),
                requirement: "an address other processes can connect to (not 0.0.0.0 or ::)",
            });
        }
        let mut pg = tokio_postgres::Config::from_str(&self.url)
            .map_err(|e| StoreError::Config(Arc::new(e)))?;
        pg.connect_timeout(self.connect_timeout);
        // Every statement the store runs is built to be index range scans, so one generic plan per
        // statement serves all parameters (planning a read can cost more than running it), and a
        // plan made while the tables were small must not freeze a full scan in place as the
        // store grows. No JIT: `enable_seqscan=off` prices a scan it cannot avoid (a small table's
        // own, `pg_locks`'s) at 10^10, far above `jit_above_cost`, so PostgreSQL up to 17
        // compiled such a statement with LLVM at each run: the first statement of each session
        // advertising where it takes forwarded commands or appends took 134-180 ms, nearly all
        // of it JIT (`EXPLAIN ANALYZE`: inlining 48 ms, optimization 34 ms). The store's
        // statements are short: JIT never pays for itself in them.
        const SESSION: &str =
            "-c enable_seqscan=off -c plan_cache_mode=force_generic_plan -c jit=off";
        let options = match pg.get_options() {
            Some(o) => format!("{o} {SESSION}"),
            None => SESSION.to_owned(),
        };
        pg.options(options);
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            // The connection used last goes out first: the few the load needs stay busy and
            // their backends warm, the rest idle. First in, first out rotated every checkout
            // through all the open connections, waking a backend that had slept longest each
            // time: with 4 connections open per process, `disjoint --processes 2` ran 0.65x.
            .queue_mode(QueueMode::Lifo)
            .wait_timeout(Some(self.wait_timeout))
            .create_timeout(Some(self.connect_timeout))
            .recycle_timeout(Some(self.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Config(Arc::new(e)))?;
        // Fail now, not at the first command, when the server is unreachable.
        drop(pool.get().await?);
        if self.migrate {
            crate::migrate::run(&pg).await?;
        }
        if self.warm_connections > 0 {
            // Best effort: a store whose connections could not all be readied (a database whose
            // statement timeout is shorter than a first planning, say) works all the same, its
            // first commands readying them.
            let warm = self.warm_connections.min(self.pool_size);
            if let Err(e) = warm_up::warm_up(&pool, warm).await {
                tracing::debug!(error = %e, "could not ready the store's connections");
            }
        }
        let (follower, news) = match self.shared_appender {
            Some(_) => {
                let (follower, news) = leader::news();
                (Some(follower), Some(news))
            }
            None => (None, None),
        };
        let committer = GroupCommitter::start(pool.clone(), self.max_batch, follower).await?;
        let leadership = self.shared_appender.zip(news).map(|(bind, news)| {
            leader::Leadership::start(pg.clone(), bind, committer.submitter().clone(), news)
        });
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                config: pg,
                limits: self.limits,
                committer,
                _leadership: leadership,
                wakeups: std::sync::OnceLock::new(),
            }),
        })
    }
}

impl EventStore for PostgresStore {
    fn pool_status(&self) -> Option<PoolStatus> {
        let status = self.inner.pool.status();
        Some(PoolStatus {
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        })
    }

    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        validate_read(query, &self.inner.limits)?;
        let started = std::time::Instant::now();
        let built = read_sql::build(query, &options);
        let client = self.inner.pool.get().await?;
        let statement = client.prepare_cached(&built.sql).await?;
        let rows = client.query(&statement, &built.params()).await?;
        let mut head = None;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            head = row.try_get::<_, Option<i64>>(0)?.map(Position::new);
            let Some(position) = row.try_get::<_, Option<i64>>(1)? else {
                continue;
            };
            let tags: Vec<String> = row.try_get(4)?;
            let tags = tags
                .iter()
                .map(|t| t.parse::<Tag>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Corrupt(format!("event at {position}: {e}")))?;
            events.push(SequencedEvent::from_parts(
                Position::new(position),
                row.try_get(2)?,
                row.try_get(3)?,
                tags,
                row.try_get(5)?,
                row.try_get(6)?,
            ));
        }
        metrics::histogram!(crate::metrics::READ_DURATION_SECONDS).record(started.elapsed());
        Ok(ReadResult { events, head })
    }

    async fn append(&self, events: Vec<Event>) -> Result<Appended, AppendError> {
        self.write(events, None, None).await
    }

    async fn read_ids(&self, ids: &[Uuid]) -> Result<Vec<SequencedEvent>, StoreError> {
        const SQL: &str = "SELECT position, id, type, tags, payload, recorded_at FROM events \
                           WHERE id = ANY($1) ORDER BY position";
        let client = self.inner.pool.get().await?;
        let statement = client.prepare_cached(SQL).await?;
        let rows = client.query(&statement, &[&ids]).await?;
        rows.iter()
            .map(|row| {
                let position = Position::new(row.try_get(0)?);
                let tags: Vec<String> = row.try_get(3)?;
                let tags = tags
                    .iter()
                    .map(|t| t.parse::<Tag>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StoreError::Corrupt(format!("event at {position}: {e}")))?;
                Ok(SequencedEvent::from_parts(
                    position,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    tags,
                    row.try_get(4)?,
                    row.try_get(5)?,
                ))
            })
            .collect()
    }

    async fn append_if(
        &self,
        events: Vec<Event>,
        condition: AppendCondition,
    ) -> Result<Appended, AppendError> {
        self.write(events, Some(condition), None).await
    }

    async fn append_as(
        &self,
        append_id: Uuid,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
    ) -> Result<Appended, AppendError> {
        self.write(events, condition, Some(append_id)).await
    }
}
