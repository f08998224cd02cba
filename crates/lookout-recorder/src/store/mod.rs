//! Storage with sqlx: Postgres for deployments, SQLite as the embedded default.
//!
//! - [`types`]: what is read and written (streams, decisions, changes);
//! - [`sql`](mod@sql): every statement, the same text for both backends;
//! - `rows`: reading rows of either backend;
//! - [`pool`]: opening a database (read-write or read-only), migrations (embedded, in
//!   `migrations/postgres` and `migrations/sqlite`, applied at start), password hiding, and
//!   which database errors are worth retrying.
//!
//! Tables: `changes` (unique on camera + frame sequence + model, so a re-delivered prediction
//! can never add a row); `detector_state` and `detector_window`, the change detector's state
//! per stream, written in the same transaction as the changes it decides.

pub mod pool;
mod rows;
pub mod sql;
pub mod types;

use sqlx::Row as _;

pub use pool::{Access, ErrorKind, classify, redact};
pub use sql::STATEMENTS;
pub use types::{
    Backend, ChangeFilter, Committed, Decision, NewChange, StoredChange, StoredSnapshot,
    StoredStream, StreamKey,
};

use crate::detector::{Label, Observation, Run, StreamState};
use pool::Pool;
use rows::{change_row, class_id, db_seq, score, seq, state_row, window_row, with_pool};
use sql::*;

/// The default database: a SQLite file in the working directory, created if missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://lookout.db";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("unsupported database URL {0}: use postgres://… or sqlite://…")]
    UnsupportedUrl(String),
    /// The URL does not parse.
    #[error("bad database URL {url}: {source}")]
    BadUrl {
        /// The URL, password hidden.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// Applying the embedded migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A statement failed (also: the database is unreachable).
    #[error("database {what} failed: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Another writer changed the stream's detector state since it was read.
    #[error("detector state of camera {camera} (model {model}) was changed by another writer")]
    Conflict {
        /// Camera id.
        camera: String,
        /// Model name and version.
        model: String,
    },
    /// A value does not fit the database's column (a sequence above `i64::MAX`).
    #[error("{what} {value} does not fit a database integer")]
    OutOfRange {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
    },
}

impl StoreError {
    /// What the error means: retry later, give up on this data, or stop until a person fixes
    /// the configuration.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Query { source, .. } => classify(source),
            Self::Conflict { .. } => ErrorKind::Transient,
            Self::OutOfRange { .. } => ErrorKind::Data,
            Self::Migrate(sqlx::migrate::MigrateError::Execute(e)) => classify(e),
            Self::Migrate(_) | Self::UnsupportedUrl(_) | Self::BadUrl { .. } => ErrorKind::Config,
        }
    }

    /// Whether retrying later may succeed (the database is down, busy or restarting).
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }
}

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// Writes one stream's decision on a transaction's connection; evaluates to its [`Committed`].
/// A macro because the connection types of the two backends differ.
macro_rules! write_decision {
    ($conn:expr, $d:expr) => {{
        let d: &Decision = $d;
        let (k, s) = (&d.key, &d.state);
        let last_decided = s.last_decided.map(|v| db_seq("frame sequence", v)).transpose()?;
        let run_start = s.run.as_ref().map(|r| db_seq("frame sequence", r.start)).transpose()?;
        let delete_upto = d.delete_waiting_upto.map(|v| db_seq("frame sequence", v)).transpose()?;
        let (stable, run) = (s.stable.as_ref(), s.run.as_ref());
        let state = sqlx::query(if d.revision == 0 { INSERT_STATE } else { UPDATE_STATE })
            .bind(&k.camera_id)
            .bind(&k.model_name)
            .bind(&k.model_version)
            .bind(last_decided)
            .bind(s.last_capture_ms)
            .bind(stable.map(|l| l.name.as_str()))
            .bind(stable.map(|l| i64::from(l.class_id)))
            .bind(stable.map(|l| f64::from(l.score)))
            .bind(run_start)
            .bind(run.map(|r| r.start_capture_ms))
            .bind(run.map(|r| r.label.name.as_str()))
            .bind(run.map(|r| i64::from(r.label.class_id)))
            .bind(run.map(|r| f64::from(r.label.score)))
            .bind(run.map(|r| i64::from(r.length)))
            .bind(d.now_ms);
        let state = if d.revision == 0 { state } else { state.bind(d.revision) };
        let updated = state.execute($conn).await.map_err(db("write detector state"))?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Conflict { camera: k.camera_id.clone(), model: k.model() });
        }
        if let Some(upto) = delete_upto {
            sqlx::query(DELETE_WAITING)
                .bind(&k.camera_id)
                .bind(&k.model_name)
                .bind(&k.model_version)
                .bind(upto)
                .execute($conn)
                .await
                .map_err(db("delete waiting prediction"))?;
        }
        for o in &d.insert_waiting {
            let top = o.top1.as_ref();
            sqlx::query(INSERT_WAITING)
                .bind(&k.camera_id)
                .bind(&k.model_name)
                .bind(&k.model_version)
                .bind(db_seq("frame sequence", o.sequence)?)
                .bind(o.capture_time_ms)
                .bind(top.map(|l| l.name.as_str()))
                .bind(top.map(|l| i64::from(l.class_id)))
                .bind(top.map(|l| f64::from(l.score)))
                .bind(o.skipped)
                .execute($conn)
                .await
                .map_err(db("insert waiting prediction"))?;
        }
        let mut change_ids = Vec::with_capacity(d.changes.len());
        for c in &d.changes {
            let sequence = db_seq("frame sequence", c.change.sequence)?;
            let previous = c.change.previous.as_ref();
            let current = &c.change.current;
            let inserted: Option<i64> = sqlx::query_scalar(INSERT_CHANGE)
                .bind(&k.camera_id)
                .bind(sequence)
                .bind(&k.model_name)
                .bind(&k.model_version)
                .bind(previous.map(|l| l.name.as_str()))
                .bind(previous.map(|l| i64::from(l.class_id)))
                .bind(previous.map(|l| f64::from(l.score)))
                .bind(current.name.as_str())
                .bind(i64::from(current.class_id))
                .bind(f64::from(current.score))
                .bind(c.change.capture_time_ms)
                .bind(d.now_ms)
                .bind(c.snapshot.as_deref())
                .bind(c.snapshot.is_none())
                .fetch_optional($conn)
                .await
                .map_err(db("insert change"))?;
            let id = match inserted {
                Some(id) => id,
                None => sqlx::query_scalar(FIND_CHANGE)
                    .bind(&k.camera_id)
                    .bind(sequence)
                    .bind(&k.model_name)
                    .bind(&k.model_version)
                    .fetch_one($conn)
                    .await
                    .map_err(db("find change"))?,
            };
            change_ids.push(id);
        }
        Committed { revision: d.revision + 1, change_ids }
    }};
}

/// The recorder's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    url: String,
}

impl Store {
    /// Opens a database by URL: `postgres://user:pass@host/db` or `sqlite://path` (the file is
    /// created if missing for [`Access::ReadWrite`], which also applies the migrations).
    ///
    /// Postgres connections are made lazily, so this succeeds while the server is down (the
    /// first statement reports it).
    pub async fn open(url: &str, access: Access) -> Result<Self, StoreError> {
        let pool = pool::open(url, access).await?;
        let store = Self { pool, url: redact(url) };
        if access == Access::ReadWrite {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// The URL, password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Postgres(_) => Backend::Postgres,
            Pool::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Applies the embedded migrations that have not been applied yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        pool::migrate(&self.pool).await
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(PING).execute(pool).await.map_err(db("ping"))?;
        });
        Ok(())
    }

    /// Closes the connections.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await);
    }

    /// Every stream's detector state with its waiting predictions.
    pub async fn load_streams(&self) -> Result<Vec<StoredStream>, StoreError> {
        let (mut streams, window) = with_pool!(self, pool => {
            let read = async {
                let mut streams = Vec::new();
                for row in sqlx::query(LOAD_STATES).fetch_all(pool).await? {
                    streams.push(state_row!(row));
                }
                let mut window = Vec::new();
                for row in sqlx::query(LOAD_WINDOW).fetch_all(pool).await? {
                    window.push(window_row!(row));
                }
                Ok::<_, sqlx::Error>((streams, window))
            };
            read.await.map_err(db("load detector state"))?
        });
        streams.sort_by(|a, b| a.key.cmp(&b.key));
        for (key, observation) in window {
            if let Ok(i) = streams.binary_search_by(|s| s.key.cmp(&key)) {
                streams[i].window.push(observation);
            }
        }
        Ok(streams)
    }

    /// One stream's detector state with its waiting predictions; `None` for a new stream.
    pub async fn load_stream(&self, key: &StreamKey) -> Result<Option<StoredStream>, StoreError> {
        with_pool!(self, pool => {
            let read = async {
                let Some(row) = sqlx::query(LOAD_STATE)
                    .bind(&key.camera_id)
                    .bind(&key.model_name)
                    .bind(&key.model_version)
                    .fetch_optional(pool)
                    .await?
                else {
                    return Ok(None);
                };
                let mut stream = state_row!(row);
                for row in sqlx::query(LOAD_STREAM_WINDOW)
                    .bind(&key.camera_id)
                    .bind(&key.model_name)
                    .bind(&key.model_version)
                    .fetch_all(pool)
                    .await?
                {
                    stream.window.push(window_row!(row).1);
                }
                Ok::<_, sqlx::Error>(Some(stream))
            };
            read.await.map_err(db("load detector state"))
        })
    }

    /// Writes the decisions of a batch in one transaction: for each stream its detector state
    /// (only if it is still at `revision`, else [`StoreError::Conflict`] and nothing is
    /// written), its reorder window and its changes (a change already stored is kept, and its
    /// id returned). Returns what each decision produced, in order.
    pub async fn commit(&self, decisions: &[Decision]) -> Result<Vec<Committed>, StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(db("begin"))?;
            let mut out = Vec::with_capacity(decisions.len());
            for d in decisions {
                out.push(write_decision!(&mut *tx, d));
            }
            tx.commit().await.map_err(db("commit"))?;
            Ok(out)
        })
    }

    /// Changes not yet published on the changes topic, oldest first.
    pub async fn unpublished(&self, limit: i64) -> Result<Vec<StoredChange>, StoreError> {
        with_pool!(self, pool => {
            let read = async {
                let mut out = Vec::new();
                for row in sqlx::query(UNPUBLISHED).bind(limit).fetch_all(pool).await? {
                    out.push(change_row!(row));
                }
                Ok::<_, sqlx::Error>(out)
            };
            read.await.map_err(db("read unpublished changes"))
        })
    }

    /// Marks changes as published.
    pub async fn mark_published(&self, ids: &[i64]) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(db("begin"))?;
            for id in ids {
                sqlx::query(MARK_PUBLISHED)
                    .bind(*id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("mark published"))?;
            }
            tx.commit().await.map_err(db("commit"))?;
        });
        Ok(())
    }

    /// Deletes changes captured before `cutoff_ms`, in batches; returns how many.
    pub async fn purge_before(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        const BATCH: i64 = 1000;
        let mut total = 0;
        loop {
            let n = with_pool!(self, pool => {
                sqlx::query(PURGE)
                    .bind(cutoff_ms)
                    .bind(BATCH)
                    .execute(pool)
                    .await
                    .map_err(db("purge"))?
                    .rows_affected()
            });
            total += n;
            if n < BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Stored changes, oldest first.
    pub async fn changes(&self, filter: &ChangeFilter) -> Result<Vec<StoredChange>, StoreError> {
        with_pool!(self, pool => {
            let read = async {
                let mut out = Vec::new();
                let rows = sqlx::query(LIST_CHANGES)
                    .bind(filter.camera.as_deref())
                    .bind(filter.since_ms.unwrap_or(i64::MIN))
                    .bind(filter.limit.unwrap_or(i64::MAX))
                    .bind(filter.model.as_deref())
                    .fetch_all(pool)
                    .await?;
                for row in rows {
                    out.push(change_row!(row));
                }
                Ok::<_, sqlx::Error>(out)
            };
            read.await.map_err(db("list changes"))
        })
    }

    /// A change's snapshot.
    pub async fn snapshot(&self, change_id: i64) -> Result<StoredSnapshot, StoreError> {
        with_pool!(self, pool => {
            let row = sqlx::query(SNAPSHOT)
                .bind(change_id)
                .fetch_optional(pool)
                .await
                .map_err(db("read snapshot"))?;
            let Some(row) = row else { return Ok(StoredSnapshot::NoSuchChange) };
            let jpeg: Option<Vec<u8>> = row.try_get("snapshot").map_err(db("read snapshot"))?;
            Ok(jpeg.map_or(StoredSnapshot::Missing, StoredSnapshot::Jpeg))
        })
    }

    /// Prepares every statement of [`STATEMENTS`]: fails on a syntax error or an unknown table
    /// or column. For tests and start-up checks.
    pub async fn check_statements(&self) -> Result<(), StoreError> {
        use sqlx::Executor as _;
        for (what, sql) in STATEMENTS {
            with_pool!(self, pool => {
                pool.prepare(sql).await.map_err(|source| StoreError::Query { what, source })?;
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unsupported_urls_are_refused() {
        let e = Store::open("mysql://x/y", Access::ReadWrite).await.unwrap_err();
        assert!(matches!(e, StoreError::UnsupportedUrl(_)), "{e}");
        assert_eq!(e.kind(), ErrorKind::Config);
    }
}
