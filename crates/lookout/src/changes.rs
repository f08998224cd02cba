//! `lookout changes` and `lookout snapshot`: the label changes the recorder stored, read from
//! its database (the same `--database-url` / `LOOKOUT_DATABASE_URL`), opened read-only.

use std::{
    io::{IsTerminal as _, Write},
    path::PathBuf,
};

use anyhow::{Context as _, bail};
use lookout_proto::objects;
use lookout_recorder::{
    Access, Store,
    detector::Label,
    store::{ChangeFilter, DEFAULT_DATABASE_URL, StoredChange, StoredSnapshot},
};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

#[derive(Debug, clap::Args)]
pub(crate) struct DatabaseArgs {
    /// The recorder's database: `postgres://user:password@host/db` or `sqlite://path`.
    #[arg(long, env = "LOOKOUT_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    database_url: String,
}

impl DatabaseArgs {
    async fn open(&self) -> anyhow::Result<Store> {
        let shown = lookout_recorder::store::redact(&self.database_url);
        Store::open(&self.database_url, Access::ReadOnly)
            .await
            .with_context(|| format!("cannot open the recorder's database {shown}"))
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ChangesArgs {
    /// Only this camera.
    #[arg(long)]
    camera: Option<String>,

    /// Only the changes of this model (its name, e.g. efficientnet-lite0 or
    /// ssdlite-mobilenet-v2-coco).
    #[arg(long)]
    model: Option<String>,

    /// Only changes captured at or after this time: RFC 3339 (`2026-11-22T18:00:00Z`) or a
    /// duration ago (`90s`, `30m`, `2h`).
    #[arg(long, value_parser = parse_since)]
    since: Option<i64>,

    /// At most this many changes (the newest), oldest first.
    #[arg(long, short = 'n', default_value_t = 100)]
    limit: i64,

    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    db: DatabaseArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SnapshotArgs {
    /// The change id, as `lookout changes` shows it.
    id: i64,

    /// Write the JPEG to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,

    #[command(flatten)]
    db: DatabaseArgs,
}

/// `--since`: RFC 3339, or a duration before now; Unix milliseconds.
pub(crate) fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let ago = lookout_service::parse_duration(s)
        .map_err(|_| format!("{s:?}: expected an RFC 3339 time or a duration such as 2h"))?;
    let now = OffsetDateTime::now_utc() - ago;
    Ok((now.unix_timestamp_nanos() / 1_000_000) as i64)
}

pub(crate) async fn run_changes(args: ChangesArgs) -> anyhow::Result<()> {
    let store = args.db.open().await?;
    let filter = ChangeFilter {
        camera: args.camera.clone(),
        model: args.model.clone(),
        since_ms: args.since,
        limit: Some(args.limit),
    };
    let changes = store.changes(&filter).await?;
    store.close().await;
    let mut out = std::io::stdout().lock();
    print_changes(&changes, args.json, &mut out)?;
    Ok(())
}

pub(crate) async fn run_snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    if args.output.is_none() && std::io::stdout().is_terminal() {
        bail!(
            "not writing a JPEG to a terminal: redirect it (lookout snapshot {id} > change-{id}.jpg) or use --output",
            id = args.id
        );
    }
    let store = args.db.open().await?;
    let jpeg = snapshot(&store, args.id).await;
    store.close().await;
    let jpeg = jpeg?;
    match &args.output {
        Some(path) => std::fs::write(path, &jpeg)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&jpeg).and_then(|()| out.flush()).context("cannot write the JPEG")?;
        }
    }
    Ok(())
}

async fn snapshot(store: &Store, id: i64) -> anyhow::Result<Vec<u8>> {
    match store.snapshot(id).await? {
        StoredSnapshot::NoSuchChange => {
            bail!("no change {id} in {}; `lookout changes` lists them", store.url())
        }
        StoredSnapshot::Missing => bail!(
            "change {id} was stored without a snapshot: the recorder could not get its frame \
             (the recorder's log says why: the frame was never published, dropped by retention, \
             or not read within --snapshot-wait)"
        ),
        StoredSnapshot::Jpeg(jpeg) => Ok(jpeg),
    }
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

fn label_json(l: &Label) -> Value {
    json!({ "class_id": l.class_id, "name": l.name, "score": l.score })
}

fn change_json(c: &StoredChange) -> Value {
    json!({
        "change_id": c.change_id,
        "camera_id": c.key.camera_id,
        "frame_sequence": c.frame_sequence,
        "capture_time": rfc3339(c.capture_time_ms),
        "recorded_time": rfc3339(c.recorded_time_ms),
        "model": { "name": c.key.model_name, "version": c.key.model_version },
        "previous": c.previous.as_ref().map(label_json),
        "current": label_json(&c.current),
        "snapshot_bytes": c.snapshot_bytes,
        "snapshot_missing": c.snapshot_missing,
    })
}

pub(crate) fn print_changes(
    changes: &[StoredChange],
    as_json: bool,
    out: &mut impl Write,
) -> std::io::Result<()> {
    if as_json {
        for c in changes {
            writeln!(out, "{}", change_json(c))?;
        }
        return out.flush();
    }
    writeln!(
        out,
        "{:>8}  {:<30}  {:<16}  {:>18}  {:<44}  {:<24}  SNAPSHOT",
        "ID", "CAPTURED", "CAMERA", "SEQUENCE", "CHANGE", "MODEL"
    )?;
    for c in changes {
        let change = if c.current.class_id == objects::CLASSES_PRESENT {
            // A detector's object event: what appeared and what left.
            objects::describe(c.previous.as_ref().map(|p| p.name.as_str()), &c.current.name)
        } else {
            let previous = c
                .previous
                .as_ref()
                .map_or("(first)".to_owned(), |p| format!("{} {:.2}", p.name, p.score));
            format!("{previous} -> {} {:.2}", c.current.name, c.current.score)
        };
        let model = format!("{}@{}", c.key.model_name, c.key.model_version);
        // A change found in replayed predictions is not stored: no id, no snapshot.
        let id = if c.change_id == 0 { "-".to_owned() } else { c.change_id.to_string() };
        let snapshot = if c.change_id == 0 {
            "-".to_owned()
        } else if c.snapshot_missing {
            "missing".to_owned()
        } else {
            format!("{} B", c.snapshot_bytes)
        };
        writeln!(
            out,
            "{:>8}  {:<30}  {:<16}  {:>18}  {:<44}  {:<24}  {snapshot}",
            id,
            rfc3339(c.capture_time_ms),
            c.key.camera_id,
            c.frame_sequence,
            change,
            model,
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use lookout_recorder::{
        detector::{Change, StreamState},
        store::{Decision, NewChange, StreamKey},
    };

    use super::*;

    async fn database() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/lookout.db?mode=rwc", dir.path().display());
        let store = Store::open(&url, Access::ReadWrite).await.unwrap();
        let label = |name: &str, score| Label { class_id: 1, name: name.into(), score };
        for (i, (camera, snapshot)) in
            [("porch", Some("jpeg-1")), ("lobby", None), ("porch", Some("jpeg-3"))]
                .into_iter()
                .enumerate()
        {
            let key = StreamKey {
                camera_id: camera.into(),
                model_name: "m".into(),
                model_version: "1".into(),
            };
            let revision = store.load_stream(&key).await.unwrap().map_or(0, |s| s.revision);
            let change = NewChange {
                change: Change {
                    sequence: 100 + i as u64,
                    capture_time_ms: 1_763_830_000_000 + i as i64 * 60_000,
                    previous: (i == 2).then(|| label("tabby", 0.5)),
                    current: label(if i == 2 { "espresso" } else { "tabby" }, 0.75),
                },
                snapshot: snapshot.map(|s| Bytes::from(s.as_bytes().to_vec())),
            };
            store
                .commit(&[Decision {
                    key,
                    revision,
                    state: StreamState::default(),
                    insert_waiting: Vec::new(),
                    delete_waiting_upto: None,
                    changes: vec![change],
                    now_ms: 1_763_830_500_000,
                }])
                .await
                .unwrap();
        }
        store.close().await;
        (dir, url)
    }

    #[tokio::test]
    async fn changes_are_listed_as_a_table_and_as_json() {
        let (_dir, url) = database().await;
        let store = Store::open(&url, Access::ReadOnly).await.unwrap();
        let all = store.changes(&ChangeFilter::default()).await.unwrap();
        let mut table = Vec::new();
        print_changes(&all, false, &mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert_eq!(table.lines().count(), 4, "{table}");
        assert!(table.contains("(first) -> tabby 0.75"), "{table}");
        assert!(table.contains("tabby 0.50 -> espresso 0.75"), "{table}");
        assert!(table.contains("missing"), "{table}");
        assert!(table.contains("2025-11-22T16:46:40Z"), "{table}");

        let porch = store
            .changes(&ChangeFilter { camera: Some("porch".into()), ..Default::default() })
            .await
            .unwrap();
        let mut lines = Vec::new();
        print_changes(&porch, true, &mut lines).unwrap();
        let lines: Vec<Value> = String::from_utf8(lines)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["previous"]["name"], "tabby");
        assert_eq!(lines[1]["current"]["name"], "espresso");
        assert_eq!(lines[1]["model"]["version"], "1");
        assert_eq!(lines[0]["snapshot_bytes"], 6);
    }

    #[test]
    fn a_detector_change_says_what_appeared_and_what_left() {
        let set = |name: &str| Label {
            class_id: objects::CLASSES_PRESENT,
            name: name.into(),
            score: 1.0,
        };
        let change = StoredChange {
            change_id: 7,
            key: StreamKey {
                camera_id: "drive".into(),
                model_name: "ssdlite-mobilenet-v2-coco".into(),
                model_version: "1".into(),
            },
            frame_sequence: 40,
            previous: Some(set("car, dog")),
            current: set("dog, person"),
            capture_time_ms: 1_763_830_000_000,
            recorded_time_ms: 1_763_830_000_500,
            snapshot_bytes: 1000,
            snapshot_missing: false,
        };
        let mut table = Vec::new();
        print_changes(&[change], false, &mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains(" +person -car "), "{table}");
        assert!(table.contains("ssdlite-mobilenet-v2-coco@1"), "{table}");
    }

    #[tokio::test]
    async fn a_snapshot_is_written_out_or_explained() {
        let (_dir, url) = database().await;
        let store = Store::open(&url, Access::ReadOnly).await.unwrap();
        let all = store.changes(&ChangeFilter::default()).await.unwrap();
        let porch = all.iter().find(|c| c.key.camera_id == "porch").unwrap();
        assert_eq!(snapshot(&store, porch.change_id).await.unwrap(), b"jpeg-1");
        let lobby = all.iter().find(|c| c.key.camera_id == "lobby").unwrap();
        let e = snapshot(&store, lobby.change_id).await.unwrap_err().to_string();
        assert!(e.contains("without a snapshot"), "{e}");
        let e = snapshot(&store, 999).await.unwrap_err().to_string();
        assert!(e.contains("no change 999"), "{e}");
    }

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        assert_eq!(parse_since("2025-11-22T16:46:40Z").unwrap(), 1_763_830_000_000);
        let two_hours_ago = parse_since("2h").unwrap();
        let now = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        assert!((now - 7_200_000 - two_hours_ago).abs() < 5_000);
        assert!(parse_since("yesterday").is_err());
    }
}
