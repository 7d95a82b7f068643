//! Test support: a fresh database per test, with the real migrations, dropped afterwards.

use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::error::StoreError;
use crate::local::LocalPostgres;
use crate::store::PostgresStore;

/// The server shared by the tests of one binary (a throwaway one lives as long as the binary).
static SERVER: OnceCell<LocalPostgres> = OnceCell::const_new();

/// A database of its own, `test_<random>`, created on the server named by `DATABASE_URL` (or the
/// local default, see [`crate::local`]), migrated, and dropped when this value is dropped.
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

/// Shows the URLs without their password.
impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .field("url", &crate::redact::redact(&self.url))
            .field("admin_url", &crate::redact::redact(&self.admin_url))
            .finish()
    }
}

impl TestDatabase {
    /// Creates and migrates a fresh database.
    ///
    /// # Errors
    ///
    /// No server, or the database could not be created or migrated.
    pub async fn create() -> Result<Self, StoreError> {
        let server = SERVER.get_or_try_init(LocalPostgres::from_env).await?;
        Self::create_on(server.url()).await
    }

    /// Creates and migrates a fresh database on the server at `server_url`.
    ///
    /// # Errors
    ///
    /// The server is unreachable, or the database could not be created or migrated.
    pub async fn create_on(server_url: &str) -> Result<Self, StoreError> {
        let admin_url = server_url.to_owned();
        let name = format!("test_{}", Uuid::new_v4().simple());
        let admin = connect(&admin_url).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let db = Self {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        };
        db.store().await?;
        Ok(db)
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL with its password replaced by `***`, for printing.
    pub fn redacted_url(&self) -> String {
        crate::redact::redact(&self.url)
    }

    /// Leaves the database on its server instead of dropping it, so that what was stored can be
    /// looked at afterwards, and returns its name. Removing it is then up to the caller
    /// (`DROP DATABASE <name> WITH (FORCE)`).
    pub fn keep(self) -> String {
        // Dropping `self` would drop the database: take the fields out and never run `Drop`.
        let mut kept = std::mem::ManuallyDrop::new(self);
        let _ = (
            std::mem::take(&mut kept.url),
            std::mem::take(&mut kept.admin_url),
        );
        std::mem::take(&mut kept.name)
    }

    /// A store on this database (migrations already applied).
    ///
    /// # Errors
    ///
    /// The database is unreachable.
    pub async fn store(&self) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(&self.url).await
    }

    /// A plain connection, for checking invariants with SQL.
    ///
    /// # Errors
    ///
    /// The database is unreachable.
    pub async fn client(&self) -> Result<tokio_postgres::Client, StoreError> {
        connect(&self.url).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside a runtime: drop the database from a thread with a
        // runtime of its own.
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let admin = connect(&admin_url).await?;
                admin.batch_execute(&sql).await?;
                Ok::<_, StoreError>(())
            })
            .map_err(std::io::Error::other)
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// Opens one connection and drives it on a task.
pub(crate) async fn connect(url: &str) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = ?e, "test connection ended");
        }
    });
    Ok(client)
}

/// The same server URL naming another database, in URL or key=value form.
pub fn with_database(url: &str, database: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={database}");
    };
    let rest_start = scheme_end + 3;
    let query_start = url[rest_start..]
        .find('?')
        .map_or(url.len(), |i| rest_start + i);
    let path_start = url[rest_start..query_start]
        .find('/')
        .map_or(query_start, |i| rest_start + i);
    format!("{}/{}{}", &url[..path_start], database, &url[query_start..])
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_only_the_database() {
        assert_eq!(
            with_database("postgres://u:p@h:5/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert_eq!(with_database("postgresql://h", "x"), "postgresql://h/x");
        assert_eq!(
            with_database("host=h user=u", "x"),
            "host=h user=u dbname=x"
        );
    }
}

/// Starts a given/when/then test of a decision, without a database: `given(history)
/// .when(command).then([expected events])` or `.then_rejected()`.
///
/// The history is stored in order (positions 1, 2, ...) and the decision sees exactly the events
/// its projection's query matches, as it would from a store.
pub fn given(history: impl IntoIterator<Item = crate::Event>) -> Given {
    let events = history
        .into_iter()
        .zip(1..)
        .map(|(event, position)| crate::SequencedEvent {
            position: crate::Position::new(position),
            recorded_at: std::time::SystemTime::UNIX_EPOCH,
            event,
        })
        .collect();
    Given { events }
}

/// The history of a given/when/then test.
#[derive(Debug)]
pub struct Given {
    events: Vec<crate::SequencedEvent>,
}

impl Given {
    /// Folds the history through the decision's projection and decides.
    pub fn when<D: crate::Decision>(self, decision: D) -> Then<D> {
        use crate::Projection;
        let projection = decision.projection();
        let query = projection.query();
        let mut state = projection.initial_state();
        projection.fold(
            &mut state,
            self.events.iter().filter(|e| query.matches(&e.event)),
        );
        Then {
            result: decision.decide(&state),
        }
    }
}

/// The outcome of a given/when/then test.
#[derive(Debug)]
pub struct Then<D: crate::Decision> {
    result: Result<Vec<crate::Event>, D::Rejection>,
}

impl<D: crate::Decision> Then<D>
where
    D::Rejection: std::fmt::Debug,
{
    /// Asserts the decision produced these events (compared by type, tags and payload; ids are
    /// fresh on every decision).
    ///
    /// # Panics
    ///
    /// When the decision rejected the command or produced other events.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = crate::Event>) {
        let shape = |e: &crate::Event| {
            (
                e.event_type().to_owned(),
                e.tags().to_vec(),
                e.payload().clone(),
            )
        };
        let expected: Vec<_> = expected.into_iter().map(|e| shape(&e)).collect();
        match self.result {
            Ok(events) => {
                let got: Vec<_> = events.iter().map(shape).collect();
                assert_eq!(got, expected, "the decision produced other events");
            }
            Err(why) => panic!("expected events, the command was rejected: {why:?}"),
        }
    }

    /// What the decision answered: its events, or its rejection.
    ///
    /// # Errors
    ///
    /// The decision's rejection.
    pub fn into_result(self) -> Result<Vec<crate::Event>, D::Rejection> {
        self.result
    }

    /// Asserts the decision rejected the command and returns why.
    ///
    /// # Panics
    ///
    /// When the decision produced events.
    #[track_caller]
    pub fn then_rejected(self) -> D::Rejection {
        match self.result {
            Ok(events) => panic!("expected a rejection, the decision produced {events:?}"),
            Err(why) => why,
        }
    }
}
