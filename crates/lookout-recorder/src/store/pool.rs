//! Connections: opening a database by URL (read-write or truly read-only), the embedded
//! migrations, the password-hiding of URLs, and which database errors are worth retrying.

use std::{borrow::Cow, future::Future, pin::Pin, str::FromStr, time::Duration};

use sqlx::{
    error::BoxDynError,
    migrate::{Migration, MigrationSource, MigrationType, Migrator},
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};

use super::{StoreError, db};

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        "skipped, no cameras",
        include_str!("../../migrations/postgres/0002_skipped_no_cameras.sql"),
    ),
];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, "skipped, no cameras", include_str!("../../migrations/sqlite/0002_skipped_no_cameras.sql")),
];

#[derive(Debug, Clone)]
pub(super) enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// How to open a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The recorder: creates a SQLite file that does not exist, applies migrations.
    ReadWrite,
    /// Tools: an existing database, opened so that nothing can be written (SQLite read-only
    /// mode; Postgres `default_transaction_read_only`).
    ReadOnly,
}

/// Opens a pool by URL: `postgres://user:pass@host/db` or `sqlite://path`. Postgres
/// connections are made lazily, so this succeeds while the server is down.
pub(super) async fn open(url: &str, access: Access) -> Result<Pool, StoreError> {
    let shown = redact(url);
    let bad = |source| StoreError::BadUrl { url: shown.clone(), source };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut options = PgConnectOptions::from_str(url).map_err(bad)?;
        if access == Access::ReadOnly {
            options = options.options([("default_transaction_read_only", "on")]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        return Ok(Pool::Postgres(pool));
    }
    if !url.starts_with("sqlite:") {
        return Err(StoreError::UnsupportedUrl(shown));
    }
    let options = SqliteConnectOptions::from_str(url)
        .map_err(bad)?
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    let options = match access {
        // WAL with synchronous=NORMAL: a commit survives a process crash (kill -9); the last
        // commits may be lost on power loss. A file that does not exist is created, whether
        // or not the URL says `?mode=rwc`.
        Access::ReadWrite => options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal),
        Access::ReadOnly => options.create_if_missing(false).read_only(true),
    };
    // One connection: SQLite has one writer anyway, and this avoids SQLITE_BUSY between the
    // recorder's own transactions.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(db("open"))?;
    Ok(Pool::Sqlite(pool))
}

/// Applies the embedded migrations that have not been applied yet.
pub(super) async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    match pool {
        Pool::Postgres(pool) => {
            Migrator::new(Embedded(POSTGRES_MIGRATIONS)).await?.run(pool).await?
        }
        Pool::Sqlite(pool) => Migrator::new(Embedded(SQLITE_MIGRATIONS)).await?.run(pool).await?,
    }
    Ok(())
}

/// Hides the password of a database URL, in its user information (`user:***@`) and its query
/// (`?password=***`); see [`lookout_service::redact::url`].
pub fn redact(url: &str) -> String {
    lookout_service::redact::url(url)
}

/// What a database error means for whoever gets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The database is down, busy or restarting, or the transaction lost a race: retrying
    /// later may succeed.
    Transient,
    /// The data can never be stored (a NUL byte in text, a key longer than an index allows):
    /// retrying the same data fails the same way.
    Data,
    /// The configuration is wrong (password, database name, permissions, a read-only file):
    /// nothing works until a person fixes it.
    Config,
}

/// Sorts a driver error. SQLSTATE classes for Postgres: 22 (data exception), 23 (integrity
/// constraint violation) and 54 (program limit exceeded) are data errors; 28 (invalid
/// authorization), 3D (unknown database) and 42501 (insufficient privilege) configuration
/// errors; everything else, connection errors above all, is transient. SQLite's primary
/// result codes are sorted the same way.
pub fn classify(e: &sqlx::Error) -> ErrorKind {
    let sqlx::Error::Database(db) = e else {
        return match e {
            sqlx::Error::Configuration(_) => ErrorKind::Config,
            _ => ErrorKind::Transient,
        };
    };
    let Some(code) = db.code() else { return ErrorKind::Transient };
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // Extended result codes carry the primary code in their low byte.
        return match code.parse::<i32>().map(|c| c & 0xff) {
            // SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH, SQLITE_RANGE
            Ok(18 | 19 | 20 | 25) => ErrorKind::Data,
            // SQLITE_PERM, SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_NOTADB, SQLITE_AUTH
            Ok(3 | 8 | 14 | 26 | 23) => ErrorKind::Config,
            _ => ErrorKind::Transient,
        };
    }
    match (&code[..2.min(code.len())], code.as_ref()) {
        ("22" | "23" | "54", _) => ErrorKind::Data,
        ("28" | "3D", _) | (_, "42501") => ErrorKind::Config,
        _ => ErrorKind::Transient,
    }
}

/// Migrations compiled into the binary.
#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = self
            .0
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://lookout:secret@db:5432/x"),
            "postgres://lookout:***@db:5432/x"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
        assert_eq!(
            redact("postgres://db/x?user=a&password=secret&sslmode=require"),
            "postgres://db/x?user=a&password=***&sslmode=require"
        );
        assert_eq!(redact(super::super::DEFAULT_DATABASE_URL), super::super::DEFAULT_DATABASE_URL);
    }
}
