//! Storage with sqlx: Postgres for deployments, SQLite as the embedded default.
//!
//! Both backends run the same statements (`$N` placeholders, `ON CONFLICT`, `RETURNING` work in
//! both); only the schema differs, in `migrations/postgres` and `migrations/sqlite`, embedded in
//! the binary and applied at start. Every statement is listed in [`STATEMENTS`] and a test
//! prepares each one against both migrated backends, so a typo in a column or table name fails
//! the tests rather than production.
//!
//! Tables: `cameras`; `changes` (unique on camera + frame sequence + model, so a re-delivered
//! prediction can never add a row); `detector_state` and `detector_window`, the change detector's
//! state per stream, written in the same transaction as the changes it decides.

use std::{borrow::Cow, future::Future, pin::Pin, str::FromStr, time::Duration};

use bytes::Bytes;
use sqlx::{
    Row as _,
    error::BoxDynError,
    migrate::{Migration, MigrationSource, MigrationType, Migrator},
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};

use crate::detector::{Change, Label, Observation, Run, StreamState};

/// The default database: a SQLite file in the working directory, created if missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://lookout.db?mode=rwc";

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "init", include_str!("../migrations/postgres/0001_init.sql"))];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "init", include_str!("../migrations/sqlite/0001_init.sql"))];

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
    /// Whether retrying later may succeed (the database is down, busy or restarting).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Query { .. } | Self::Conflict { .. })
    }
}

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// One camera labelled by one model: the unit of change detection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// Camera id.
    pub camera_id: String,
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
}

impl StreamKey {
    fn model(&self) -> String {
        format!("{}@{}", self.model_name, self.model_version)
    }
}

/// A stream's persisted detector state and waiting predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredStream {
    /// Which stream.
    pub key: StreamKey,
    /// Incremented by every write; a write expecting another revision is a conflict.
    pub revision: i64,
    /// The detector state.
    pub state: StreamState,
    /// Predictions waiting in the reorder window.
    pub window: Vec<Observation>,
}

/// A change to store, with its frame when it was buffered.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChange {
    /// The change.
    pub change: Change,
    /// JPEG of the change's frame; `None` when the frame was no longer buffered.
    pub snapshot: Option<Bytes>,
}

/// One decision of a stream's detector, written in one transaction.
#[derive(Debug)]
pub struct Decision<'a> {
    /// Which stream.
    pub key: &'a StreamKey,
    /// The revision the state was read at (0: the stream is new).
    pub revision: i64,
    /// The state after the decision.
    pub state: &'a StreamState,
    /// A prediction that now waits in the window.
    pub insert_waiting: Option<&'a Observation>,
    /// Delete waiting predictions up to this sequence (they were decided).
    pub delete_waiting_upto: Option<u64>,
    /// Changes decided.
    pub changes: &'a [NewChange],
    /// The time of the decision, Unix milliseconds.
    pub now_ms: i64,
}

/// What a committed [`Decision`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The stream's new revision.
    pub revision: i64,
    /// Database ids of the decision's changes, in order.
    pub change_ids: Vec<i64>,
}

/// A stored change.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChange {
    /// Database id.
    pub change_id: i64,
    /// Camera and model.
    pub key: StreamKey,
    /// The frame where the new label started.
    pub frame_sequence: u64,
    /// The label before, `None` for a camera's first label.
    pub previous: Option<Label>,
    /// The new label.
    pub current: Label,
    /// Capture time of the change's frame, Unix milliseconds.
    pub capture_time_ms: i64,
    /// When the change was stored, Unix milliseconds.
    pub recorded_time_ms: i64,
    /// Size of the stored snapshot in bytes (0 when missing).
    pub snapshot_bytes: i64,
    /// True when the frame was no longer buffered.
    pub snapshot_missing: bool,
}

/// Which changes to list.
#[derive(Debug, Clone, Default)]
pub struct ChangeFilter {
    /// Only this camera.
    pub camera: Option<String>,
    /// Only changes captured at or after this time, Unix milliseconds.
    pub since_ms: Option<i64>,
    /// At most this many (the newest are kept).
    pub limit: Option<i64>,
}

/// Every statement the store runs, by name; the tests prepare each against both backends.
pub const STATEMENTS: &[(&str, &str)] = &[
    ("insert camera", INSERT_CAMERA),
    ("touch camera", TOUCH_CAMERA),
    ("insert state", INSERT_STATE),
    ("update state", UPDATE_STATE),
    ("insert waiting", INSERT_WAITING),
    ("delete waiting", DELETE_WAITING),
    ("insert change", INSERT_CHANGE),
    ("find change", FIND_CHANGE),
    ("load states", LOAD_STATES),
    ("load state", LOAD_STATE),
    ("load window", LOAD_WINDOW),
    ("load stream window", LOAD_STREAM_WINDOW),
    ("unpublished", UNPUBLISHED),
    ("mark published", MARK_PUBLISHED),
    ("purge", PURGE),
    ("list changes", LIST_CHANGES),
    ("snapshot", SNAPSHOT),
    ("ping", PING),
];

const INSERT_CAMERA: &str = "INSERT INTO cameras (camera_id, first_seen_ms) VALUES ($1, $2) \
     ON CONFLICT (camera_id) DO NOTHING";
const TOUCH_CAMERA: &str = "UPDATE cameras SET last_change_ms = $2 WHERE camera_id = $1";
const INSERT_STATE: &str = "INSERT INTO detector_state (camera_id, model_name, model_version, \
     revision, last_decided, last_capture_ms, stable_label, stable_class_id, stable_score, \
     run_start, run_capture_ms, run_label, run_class_id, run_score, run_length, updated_ms) \
     VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
     ON CONFLICT (camera_id, model_name, model_version) DO NOTHING";
const UPDATE_STATE: &str = "UPDATE detector_state SET revision = revision + 1, \
     last_decided = $4, last_capture_ms = $5, stable_label = $6, stable_class_id = $7, \
     stable_score = $8, run_start = $9, run_capture_ms = $10, run_label = $11, \
     run_class_id = $12, run_score = $13, run_length = $14, updated_ms = $15 \
     WHERE camera_id = $1 AND model_name = $2 AND model_version = $3 AND revision = $16";
const INSERT_WAITING: &str = "INSERT INTO detector_window (camera_id, model_name, \
     model_version, frame_sequence, capture_time_ms, label, class_id, score) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (camera_id, model_name, model_version, frame_sequence) DO NOTHING";
const DELETE_WAITING: &str = "DELETE FROM detector_window WHERE camera_id = $1 \
     AND model_name = $2 AND model_version = $3 AND frame_sequence <= $4";
const INSERT_CHANGE: &str = "INSERT INTO changes (camera_id, frame_sequence, model_name, \
     model_version, previous_label, previous_class_id, previous_score, new_label, new_class_id, \
     new_score, capture_time_ms, recorded_time_ms, snapshot, snapshot_missing) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
     ON CONFLICT (camera_id, frame_sequence, model_name, model_version) DO NOTHING \
     RETURNING change_id";
const FIND_CHANGE: &str = "SELECT change_id FROM changes WHERE camera_id = $1 \
     AND frame_sequence = $2 AND model_name = $3 AND model_version = $4";
const LOAD_STATES: &str = "SELECT camera_id, model_name, model_version, revision, last_decided, \
     last_capture_ms, stable_label, stable_class_id, stable_score, run_start, run_capture_ms, \
     run_label, run_class_id, run_score, run_length, updated_ms FROM detector_state";
const LOAD_STATE: &str = "SELECT camera_id, model_name, model_version, revision, last_decided, \
     last_capture_ms, stable_label, stable_class_id, stable_score, run_start, run_capture_ms, \
     run_label, run_class_id, run_score, run_length, updated_ms FROM detector_state \
     WHERE camera_id = $1 AND model_name = $2 AND model_version = $3";
const LOAD_WINDOW: &str = "SELECT camera_id, model_name, model_version, frame_sequence, \
     capture_time_ms, label, class_id, score FROM detector_window \
     ORDER BY camera_id, model_name, model_version, frame_sequence";
const LOAD_STREAM_WINDOW: &str = "SELECT camera_id, model_name, model_version, frame_sequence, \
     capture_time_ms, label, class_id, score FROM detector_window \
     WHERE camera_id = $1 AND model_name = $2 AND model_version = $3 ORDER BY frame_sequence";
const UNPUBLISHED: &str = "SELECT change_id, camera_id, frame_sequence, model_name, \
     model_version, previous_label, previous_class_id, previous_score, new_label, new_class_id, \
     new_score, capture_time_ms, recorded_time_ms, \
     CAST(COALESCE(LENGTH(snapshot), 0) AS BIGINT) AS snapshot_bytes, snapshot_missing \
     FROM changes WHERE NOT published ORDER BY change_id LIMIT $1";
const MARK_PUBLISHED: &str = "UPDATE changes SET published = TRUE WHERE change_id = $1";
const PURGE: &str = "DELETE FROM changes WHERE change_id IN \
     (SELECT change_id FROM changes WHERE capture_time_ms < $1 ORDER BY change_id LIMIT $2)";
const LIST_CHANGES: &str = "SELECT * FROM (SELECT change_id, camera_id, frame_sequence, \
     model_name, model_version, previous_label, previous_class_id, previous_score, new_label, \
     new_class_id, new_score, capture_time_ms, recorded_time_ms, \
     CAST(COALESCE(LENGTH(snapshot), 0) AS BIGINT) AS snapshot_bytes, snapshot_missing FROM changes \
     WHERE (CAST($1 AS TEXT) IS NULL OR camera_id = $1) AND capture_time_ms >= $2 \
     ORDER BY capture_time_ms DESC, change_id DESC LIMIT $3) AS newest \
     ORDER BY capture_time_ms, change_id";
const SNAPSHOT: &str = "SELECT snapshot, snapshot_missing FROM changes WHERE change_id = $1";
const PING: &str = "SELECT 1";

/// Runs `$body` with `$pool` bound to the Postgres or the SQLite pool: the statements are the
/// same, the types differ.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Postgres($pool) => $body,
            Pool::Sqlite($pool) => $body,
        }
    };
}

/// Reads a detector state row.
macro_rules! state_row {
    ($row:expr) => {{
        let r = &$row;
        let stable = match r.try_get::<Option<String>, _>("stable_label")? {
            Some(name) => Some(Label {
                class_id: class_id(r.try_get("stable_class_id")?),
                name,
                score: score(r.try_get("stable_score")?),
            }),
            None => None,
        };
        let run = match r.try_get::<Option<String>, _>("run_label")? {
            Some(name) => Some(Run {
                start: seq(r.try_get::<Option<i64>, _>("run_start")?.unwrap_or_default()),
                start_capture_ms: r
                    .try_get::<Option<i64>, _>("run_capture_ms")?
                    .unwrap_or_default(),
                label: Label {
                    class_id: class_id(r.try_get("run_class_id")?),
                    name,
                    score: score(r.try_get("run_score")?),
                },
                length: r
                    .try_get::<Option<i64>, _>("run_length")?
                    .unwrap_or(1)
                    .clamp(1, i64::from(u32::MAX)) as u32,
            }),
            None => None,
        };
        StoredStream {
            key: StreamKey {
                camera_id: r.try_get("camera_id")?,
                model_name: r.try_get("model_name")?,
                model_version: r.try_get("model_version")?,
            },
            revision: r.try_get("revision")?,
            state: StreamState {
                last_decided: r.try_get::<Option<i64>, _>("last_decided")?.map(seq),
                last_capture_ms: r.try_get("last_capture_ms")?,
                stable,
                run,
            },
            window: Vec::new(),
        }
    }};
}

/// Reads a reorder-window row: (stream, observation).
macro_rules! window_row {
    ($row:expr) => {{
        let r = &$row;
        let top1 = match r.try_get::<Option<String>, _>("label")? {
            Some(name) => Some(Label {
                class_id: class_id(r.try_get("class_id")?),
                name,
                score: score(r.try_get("score")?),
            }),
            None => None,
        };
        (
            StreamKey {
                camera_id: r.try_get("camera_id")?,
                model_name: r.try_get("model_name")?,
                model_version: r.try_get("model_version")?,
            },
            Observation {
                sequence: seq(r.try_get("frame_sequence")?),
                capture_time_ms: r.try_get("capture_time_ms")?,
                top1,
            },
        )
    }};
}

/// Reads a change row (without the snapshot bytes).
macro_rules! change_row {
    ($row:expr) => {{
        let r = &$row;
        let previous = match r.try_get::<Option<String>, _>("previous_label")? {
            Some(name) => Some(Label {
                class_id: class_id(r.try_get("previous_class_id")?),
                name,
                score: score(r.try_get("previous_score")?),
            }),
            None => None,
        };
        StoredChange {
            change_id: r.try_get("change_id")?,
            key: StreamKey {
                camera_id: r.try_get("camera_id")?,
                model_name: r.try_get("model_name")?,
                model_version: r.try_get("model_version")?,
            },
            frame_sequence: seq(r.try_get("frame_sequence")?),
            previous,
            current: Label {
                class_id: class_id(Some(r.try_get::<i64, _>("new_class_id")?)),
                name: r.try_get("new_label")?,
                score: score(Some(r.try_get::<f64, _>("new_score")?)),
            },
            capture_time_ms: r.try_get("capture_time_ms")?,
            recorded_time_ms: r.try_get("recorded_time_ms")?,
            snapshot_bytes: r.try_get("snapshot_bytes")?,
            snapshot_missing: r.try_get("snapshot_missing")?,
        }
    }};
}

fn seq(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

fn class_id(v: Option<i64>) -> u32 {
    v.and_then(|v| u32::try_from(v).ok()).unwrap_or_default()
}

/// Scores are `f32` on the wire and stored as `f64`, which holds them exactly.
fn score(v: Option<f64>) -> f32 {
    v.unwrap_or_default() as f32
}

fn db_seq(what: &'static str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::OutOfRange { what, value: v })
}

#[derive(Debug, Clone)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// How to open a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The recorder: create a SQLite file if the URL says so, apply migrations.
    ReadWrite,
    /// Tools: open an existing database read-only, change nothing.
    ReadOnly,
}

/// The recorder's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    url: String,
}

impl Store {
    /// Opens a database by URL: `postgres://user:pass@host/db` or `sqlite://path?mode=rwc`.
    ///
    /// Postgres connections are made lazily, so this succeeds while the server is down (the
    /// first statement reports it). [`Access::ReadWrite`] applies the migrations.
    pub async fn open(url: &str, access: Access) -> Result<Self, StoreError> {
        let shown = redact(url);
        let bad = |source| StoreError::BadUrl { url: shown.clone(), source };
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(bad)?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(3))
                .connect_lazy_with(options);
            Pool::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(bad)?
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let options = match access {
                // WAL with synchronous=NORMAL: a commit survives a process crash (kill -9);
                // the last commits may be lost on power loss.
                Access::ReadWrite => options
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal),
                Access::ReadOnly => options.create_if_missing(false),
            };
            // One connection: SQLite has one writer anyway, and this avoids SQLITE_BUSY
            // between the recorder's own transactions.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .map_err(db("open"))?;
            Pool::Sqlite(pool)
        } else {
            return Err(StoreError::UnsupportedUrl(shown));
        };
        let store = Self { pool, url: shown };
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
        match &self.pool {
            Pool::Postgres(pool) => {
                Migrator::new(Embedded(POSTGRES_MIGRATIONS)).await?.run(pool).await?;
            }
            Pool::Sqlite(pool) => {
                Migrator::new(Embedded(SQLITE_MIGRATIONS)).await?.run(pool).await?;
            }
        }
        Ok(())
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

    /// Writes one decision in one transaction: the detector state (only if it is still at
    /// `decision.revision`, else [`StoreError::Conflict`]), the reorder window and the changes
    /// (a change already stored is kept, and its id returned).
    pub async fn commit(&self, d: &Decision<'_>) -> Result<Committed, StoreError> {
        let k = d.key;
        let s = d.state;
        let last_decided = s.last_decided.map(|v| db_seq("frame sequence", v)).transpose()?;
        let run_start = s.run.as_ref().map(|r| db_seq("frame sequence", r.start)).transpose()?;
        let insert_waiting = match d.insert_waiting {
            Some(o) => Some((o, db_seq("frame sequence", o.sequence)?)),
            None => None,
        };
        let delete_upto = d.delete_waiting_upto.map(|v| db_seq("frame sequence", v)).transpose()?;
        let mut changes = Vec::with_capacity(d.changes.len());
        for c in d.changes {
            changes.push((c, db_seq("frame sequence", c.change.sequence)?));
        }
        let stable = s.stable.as_ref();
        let run = s.run.as_ref();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(db("begin"))?;
            if d.revision == 0 {
                sqlx::query(INSERT_CAMERA)
                    .bind(&k.camera_id)
                    .bind(d.now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("insert camera"))?;
            }
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
            let updated = state.execute(&mut *tx).await.map_err(db("write detector state"))?;
            if updated.rows_affected() != 1 {
                return Err(StoreError::Conflict { camera: k.camera_id.clone(), model: k.model() });
            }
            if let Some(upto) = delete_upto {
                sqlx::query(DELETE_WAITING)
                    .bind(&k.camera_id)
                    .bind(&k.model_name)
                    .bind(&k.model_version)
                    .bind(upto)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("delete waiting prediction"))?;
            }
            if let Some((o, sequence)) = insert_waiting {
                let top = o.top1.as_ref();
                sqlx::query(INSERT_WAITING)
                    .bind(&k.camera_id)
                    .bind(&k.model_name)
                    .bind(&k.model_version)
                    .bind(sequence)
                    .bind(o.capture_time_ms)
                    .bind(top.map(|l| l.name.as_str()))
                    .bind(top.map(|l| i64::from(l.class_id)))
                    .bind(top.map(|l| f64::from(l.score)))
                    .execute(&mut *tx)
                    .await
                    .map_err(db("insert waiting prediction"))?;
            }
            let mut change_ids = Vec::with_capacity(changes.len());
            for (c, sequence) in &changes {
                let previous = c.change.previous.as_ref();
                let current = &c.change.current;
                let inserted: Option<i64> = sqlx::query_scalar(INSERT_CHANGE)
                    .bind(&k.camera_id)
                    .bind(*sequence)
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
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("insert change"))?;
                let id = match inserted {
                    Some(id) => id,
                    None => sqlx::query_scalar(FIND_CHANGE)
                        .bind(&k.camera_id)
                        .bind(*sequence)
                        .bind(&k.model_name)
                        .bind(&k.model_version)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db("find change"))?,
                };
                change_ids.push(id);
            }
            if !changes.is_empty() {
                sqlx::query(TOUCH_CAMERA)
                    .bind(&k.camera_id)
                    .bind(d.now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("touch camera"))?;
            }
            tx.commit().await.map_err(db("commit"))?;
            Ok(Committed { revision: d.revision + 1, change_ids })
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

    /// A change's snapshot: `Ok(None)` when there is no such change, `Ok(Some(None))` when it
    /// was stored without one.
    pub async fn snapshot(&self, change_id: i64) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        with_pool!(self, pool => {
            let row = sqlx::query(SNAPSHOT)
                .bind(change_id)
                .fetch_optional(pool)
                .await
                .map_err(db("read snapshot"))?;
            match row {
                None => Ok(None),
                Some(row) => {
                    Ok(Some(row.try_get::<Option<Vec<u8>>, _>("snapshot").map_err(db("read snapshot"))?))
                }
            }
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

/// Hides the password of a database URL, in its user information (`user:***@`) or its query
/// (`?password=***`).
pub fn redact(url: &str) -> String {
    lookout_service::redact::url(url)
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
        assert_eq!(redact(DEFAULT_DATABASE_URL), DEFAULT_DATABASE_URL);
    }

    #[tokio::test]
    async fn unsupported_urls_are_refused() {
        let e = Store::open("mysql://x/y", Access::ReadWrite).await.unwrap_err();
        assert!(matches!(e, StoreError::UnsupportedUrl(_)), "{e}");
    }
}
