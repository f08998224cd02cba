//! The store against a real SQLite file and a real Postgres: migrations, every statement
//! prepared, idempotent change rows, optimistic concurrency, retention.

mod common;

use bytes::Bytes;
use common::TestDb;
use lookout_recorder::{
    Access, Store, StoreError,
    detector::{Change, Label, Observation, Run, StreamState},
    store::{ChangeFilter, Decision, NewChange, StreamKey},
};

fn key(camera: &str) -> StreamKey {
    StreamKey { camera_id: camera.into(), model_name: "m".into(), model_version: "1".into() }
}

fn label(name: &str, score: f32) -> Label {
    Label { class_id: 7, name: name.into(), score }
}

fn change(sequence: u64, capture_time_ms: i64) -> NewChange {
    NewChange {
        change: Change {
            sequence,
            capture_time_ms,
            previous: Some(label("tabby", 0.25)),
            current: label("espresso", 0.875),
        },
        snapshot: Some(Bytes::from_static(b"\xff\xd8jpeg\xff\xd9")),
    }
}

async fn check(db: TestDb) {
    let store = db.store().await;
    // Migrations are idempotent; every statement prepares against the migrated schema.
    store.migrate().await.unwrap();
    store.check_statements().await.expect("every statement prepares");

    let k = key("porch");
    let state = StreamState {
        last_decided: Some(12),
        last_capture_ms: Some(1_000),
        stable: Some(label("espresso", 0.875)),
        run: Some(Run { start: 11, start_capture_ms: 990, label: label("tabby", 0.5), length: 2 }),
    };
    let waiting =
        Observation { sequence: 14, capture_time_ms: 1_020, top1: Some(label("cup", 0.5)) };
    let changes = [change(10, 980)];
    let first = store
        .commit(&Decision {
            key: &k,
            revision: 0,
            state: &state,
            insert_waiting: Some(&waiting),
            delete_waiting_upto: None,
            changes: &changes,
            now_ms: 5_000,
        })
        .await
        .unwrap();
    assert_eq!(first.revision, 1);
    assert_eq!(first.change_ids.len(), 1);

    // The state and window round-trip exactly.
    let loaded = store.load_streams().await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].key, k);
    assert_eq!(loaded[0].revision, 1);
    assert_eq!(loaded[0].state, state);
    assert_eq!(loaded[0].window, vec![waiting.clone()]);
    assert_eq!(store.load_stream(&k).await.unwrap().unwrap(), loaded[0]);
    assert_eq!(store.load_stream(&key("nobody")).await.unwrap(), None);

    // A writer that read an older revision is refused, and nothing of its decision is kept.
    let stale = store
        .commit(&Decision {
            key: &k,
            revision: 0,
            state: &StreamState::default(),
            insert_waiting: None,
            delete_waiting_upto: None,
            changes: &[change(30, 1_500)],
            now_ms: 5_001,
        })
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict { .. })), "{stale:?}");
    assert_eq!(store.changes(&ChangeFilter::default()).await.unwrap().len(), 1);

    // The same change again (a re-delivery that got past the detector) adds no row and
    // returns the stored id; decided predictions leave the window.
    let again = store
        .commit(&Decision {
            key: &k,
            revision: 1,
            state: &state,
            insert_waiting: None,
            delete_waiting_upto: Some(14),
            changes: &changes,
            now_ms: 5_002,
        })
        .await
        .unwrap();
    assert_eq!(again.change_ids, first.change_ids);
    assert_eq!(again.revision, 2);
    assert!(store.load_stream(&k).await.unwrap().unwrap().window.is_empty());

    let listed = store.changes(&ChangeFilter::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    let c = &listed[0];
    assert_eq!((c.frame_sequence, c.capture_time_ms, c.recorded_time_ms), (10, 980, 5_000));
    assert_eq!(c.previous, Some(label("tabby", 0.25)));
    assert_eq!(c.current, label("espresso", 0.875));
    assert_eq!(c.snapshot_bytes, 8);
    assert!(!c.snapshot_missing);
    let snapshot = store.snapshot(c.change_id).await.unwrap();
    assert_eq!(snapshot, Some(Some(b"\xff\xd8jpeg\xff\xd9".to_vec())));
    assert_eq!(store.snapshot(c.change_id + 1000).await.unwrap(), None);

    // The outbox.
    assert_eq!(store.unpublished(10).await.unwrap().len(), 1);
    store.mark_published(&[c.change_id]).await.unwrap();
    assert!(store.unpublished(10).await.unwrap().is_empty());

    // Filters, and a change without snapshot.
    let k2 = key("garage");
    let missing = NewChange { snapshot: None, ..change(3, 2_000) };
    store
        .commit(&Decision {
            key: &k2,
            revision: 0,
            state: &StreamState::default(),
            insert_waiting: None,
            delete_waiting_upto: None,
            changes: &[missing],
            now_ms: 5_003,
        })
        .await
        .unwrap();
    let garage = store
        .changes(&ChangeFilter { camera: Some("garage".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(garage.len(), 1);
    assert!(garage[0].snapshot_missing);
    assert_eq!(store.snapshot(garage[0].change_id).await.unwrap(), Some(None));
    let since =
        store.changes(&ChangeFilter { since_ms: Some(1_000), ..Default::default() }).await.unwrap();
    assert_eq!(since.iter().map(|c| c.key.camera_id.as_str()).collect::<Vec<_>>(), ["garage"]);
    let newest =
        store.changes(&ChangeFilter { limit: Some(1), ..Default::default() }).await.unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].key.camera_id, "garage", "the limit keeps the newest");

    // Retention: changes captured before the cutoff go, the detector state stays (so a camera
    // stable for longer than the retention does not get a false change after a restart).
    assert_eq!(store.purge_before(1_000).await.unwrap(), 1);
    let left = store.changes(&ChangeFilter::default()).await.unwrap();
    assert_eq!(left.iter().map(|c| c.key.camera_id.as_str()).collect::<Vec<_>>(), ["garage"]);
    assert_eq!(store.load_stream(&k).await.unwrap().unwrap().state, state);

    // Tools open it read-only.
    let ro = Store::open(&db.url, Access::ReadOnly).await.unwrap();
    assert_eq!(ro.changes(&ChangeFilter::default()).await.unwrap().len(), 1);
    store.close().await;
}

#[tokio::test]
async fn sqlite_store() {
    check(TestDb::sqlite()).await;
}

#[tokio::test]
async fn postgres_store() {
    let Some(db) = TestDb::postgres().await else { return };
    check(db).await;
}

#[tokio::test]
async fn a_missing_sqlite_file_is_not_created_by_tools() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nothing.db?mode=rwc", dir.path().display());
    assert!(Store::open(&url, Access::ReadOnly).await.is_err());
    assert!(!dir.path().join("nothing.db").exists());
}
