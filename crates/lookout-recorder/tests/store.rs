//! The store against a real SQLite file and a real Postgres: migrations, every statement
//! prepared, idempotent change rows, optimistic concurrency, a batch in one transaction,
//! retention, read-only access, and which errors are retried.

mod common;

use bytes::Bytes;
use common::TestDb;
use lookout_recorder::{
    Access, Store, StoreError,
    detector::{Change, Label, Observation, Run, StreamState},
    store::{ChangeFilter, Decision, ErrorKind, NewChange, StoredSnapshot, StreamKey},
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
    let waiting = Observation {
        sequence: 14,
        capture_time_ms: 1_020,
        top1: Some(label("cup", 0.5)),
        skipped: false,
    };
    let skipped = Observation { sequence: 15, capture_time_ms: 1_030, top1: None, skipped: true };
    let changes = vec![change(10, 980)];
    let decision =
        |key: &StreamKey, revision, state: &StreamState, changes: Vec<NewChange>| Decision {
            key: key.clone(),
            revision,
            state: state.clone(),
            insert_waiting: Vec::new(),
            delete_waiting_upto: None,
            changes,
            now_ms: 5_000,
        };
    let first = store
        .commit(&[Decision {
            insert_waiting: vec![waiting.clone(), skipped.clone()],
            ..decision(&k, 0, &state, changes.clone())
        }])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(first.revision, 1);
    assert_eq!(first.change_ids.len(), 1);

    // The state and window round-trip exactly.
    let loaded = store.load_streams().await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].key, k);
    assert_eq!(loaded[0].revision, 1);
    assert_eq!(loaded[0].state, state);
    assert_eq!(loaded[0].window, vec![waiting.clone(), skipped.clone()]);
    assert_eq!(store.load_stream(&k).await.unwrap().unwrap(), loaded[0]);
    assert_eq!(store.load_stream(&key("nobody")).await.unwrap(), None);

    // A writer that read an older revision is refused, and nothing of its batch is kept, not
    // even another stream's decision in the same transaction.
    let stale = store
        .commit(&[
            decision(&key("attic"), 0, &StreamState::default(), vec![change(40, 1_600)]),
            decision(&k, 0, &StreamState::default(), vec![change(30, 1_500)]),
        ])
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict { .. })), "{stale:?}");
    assert_eq!(stale.unwrap_err().kind(), ErrorKind::Transient);
    assert_eq!(store.changes(&ChangeFilter::default()).await.unwrap().len(), 1);
    assert_eq!(store.load_stream(&key("attic")).await.unwrap(), None);

    // The same change again (a re-delivery that got past the detector) adds no row and
    // returns the stored id; decided predictions leave the window.
    let again = store
        .commit(&[Decision { delete_waiting_upto: Some(15), ..decision(&k, 1, &state, changes) }])
        .await
        .unwrap()
        .remove(0);
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
    assert_eq!(snapshot, StoredSnapshot::Jpeg(b"\xff\xd8jpeg\xff\xd9".to_vec()));
    assert_eq!(store.snapshot(c.change_id + 1000).await.unwrap(), StoredSnapshot::NoSuchChange);

    // The outbox.
    assert_eq!(store.unpublished(10).await.unwrap().len(), 1);
    store.mark_published(&[c.change_id]).await.unwrap();
    assert!(store.unpublished(10).await.unwrap().is_empty());

    // Filters, and a change without snapshot.
    let k2 = key("garage");
    let missing = NewChange { snapshot: None, ..change(3, 2_000) };
    store.commit(&[decision(&k2, 0, &StreamState::default(), vec![missing])]).await.unwrap();
    let garage = store
        .changes(&ChangeFilter { camera: Some("garage".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(garage.len(), 1);
    assert!(garage[0].snapshot_missing);
    assert_eq!(store.snapshot(garage[0].change_id).await.unwrap(), StoredSnapshot::Missing);
    let since =
        store.changes(&ChangeFilter { since_ms: Some(1_000), ..Default::default() }).await.unwrap();
    assert_eq!(since.iter().map(|c| c.key.camera_id.as_str()).collect::<Vec<_>>(), ["garage"]);
    let detector = StreamKey { model_name: "detector".into(), ..key("garage") };
    store
        .commit(&[decision(&detector, 0, &StreamState::default(), vec![change(4, 2_100)])])
        .await
        .unwrap();
    let by_model = |name: &str| ChangeFilter { model: Some(name.into()), ..Default::default() };
    let of_detector = store.changes(&by_model("detector")).await.unwrap();
    assert_eq!(of_detector.iter().map(|c| c.frame_sequence).collect::<Vec<_>>(), [4]);
    assert_eq!(store.changes(&by_model("m")).await.unwrap().len(), 2, "the other model's two");
    assert!(store.changes(&by_model("none")).await.unwrap().is_empty());
    let newest =
        store.changes(&ChangeFilter { limit: Some(1), ..Default::default() }).await.unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].key.camera_id, "garage", "the limit keeps the newest");

    // Retention: changes captured before the cutoff go, the detector state stays (so a camera
    // stable for longer than the retention does not get a false change after a restart).
    assert_eq!(store.purge_before(1_000).await.unwrap(), 1);
    let left = store.changes(&ChangeFilter::default()).await.unwrap();
    assert_eq!(
        left.iter().map(|c| c.key.camera_id.as_str()).collect::<Vec<_>>(),
        ["garage", "garage"]
    );
    assert_eq!(store.load_stream(&k).await.unwrap().unwrap().state, state);

    // Data the database can never store is a data error, not worth retrying: a NUL byte in
    // text (Postgres refuses it; SQLite stores it, which is why the recorder checks text where
    // it enters).
    let nul = decision(&key("por\0ch"), 0, &StreamState::default(), vec![change(50, 2_500)]);
    match store.commit(&[nul]).await {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Data, "{e}"),
        Ok(_) => assert_eq!(db.name, "sqlite", "Postgres refuses NUL bytes in text"),
    }

    // Tools open it read-only, and truly so.
    let ro = Store::open(&db.url, Access::ReadOnly).await.unwrap();
    assert!(!ro.changes(&ChangeFilter::default()).await.unwrap().is_empty());
    let write = ro.commit(&[decision(&key("loft"), 0, &StreamState::default(), Vec::new())]).await;
    assert!(write.is_err(), "a read-only store writes nothing");
    assert_eq!(ro.load_stream(&key("loft")).await.unwrap(), None);
    store.close().await;
}

#[tokio::test]
async fn sqlite_store() {
    check(TestDb::sqlite()).await;
}

#[tokio::test]
async fn postgres_store() {
    check(TestDb::postgres().await).await;
}

#[tokio::test]
async fn a_missing_sqlite_file_is_created_by_the_recorder_not_by_tools() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nothing.db?mode=rwc", dir.path().display());
    assert!(Store::open(&url, Access::ReadOnly).await.is_err());
    assert!(!dir.path().join("nothing.db").exists());
    // Without `?mode=rwc`, as users write it.
    let plain = format!("sqlite://{}/lookout.db", dir.path().display());
    Store::open(&plain, Access::ReadWrite).await.expect("created").close().await;
    assert!(dir.path().join("lookout.db").exists());
}

#[tokio::test]
async fn configuration_errors_are_not_retried() {
    // A SQLite file in a folder that does not exist, and one that cannot be written.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/no/such/folder/lookout.db", dir.path().display());
    let e = Store::open(&url, Access::ReadWrite).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");

    // An unknown database and a wrong password on a real Postgres.
    let db = TestDb::postgres().await;
    let unknown =
        db.url.rsplit_once('/').map(|(server, _)| format!("{server}/no_such_database")).unwrap();
    let e = Store::open(&unknown, Access::ReadWrite).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("no_such_database"), "{e}");
}
