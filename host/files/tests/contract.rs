//! `FsBlobStore` against the `BlobStore` contract, in a temporary folder;
//! then what only a folder has: two stores (two hosts) over one folder, the
//! files an upload leaves (none unless it finished), and the lock that
//! orders a hold against a removal across stores.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use flowhost_core::blob::{self, BlobError, BlobId, BlobStore, Hold};
use flowhost_files::FsBlobStore;

/// Every file under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn run_hold(n: u32) -> Hold {
    Hold {
        holder: format!("flow:0190d5a4-0000-7000-8000-{n:012}"),
        until: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_keeps_the_blob_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path()).unwrap();
    flowhost_core::testing::blob_store(&store).await;
    // Everything the contract stored it also removed: no blob, sidecar,
    // lock or temporary file is left.
    assert_eq!(files_under(dir.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_over_one_folder_see_each_others_blobs_and_holds() {
    let dir = tempfile::tempdir().unwrap();
    let a = FsBlobStore::open(dir.path()).unwrap();
    let b = FsBlobStore::open(dir.path()).unwrap();

    let r = blob::put(&a, "text/plain", b"shared between hosts")
        .await
        .unwrap();
    let hex = r.id.hex().to_owned();
    assert!(dir.path().join("data").join(&hex[..2]).join(&hex).is_file());
    assert_eq!(blob::get(&b, &r.id).await.unwrap(), b"shared between hosts");
    assert_eq!(
        b.stat(&r.id).await.unwrap().unwrap().media_type,
        "text/plain"
    );
    assert_eq!(b.list().await.unwrap(), vec![r.id.clone()]);

    // The same bytes stored by the other host: one blob, touched, the first
    // media type kept.
    let first = a.stat(&r.id).await.unwrap().unwrap().touched_at;
    let again = blob::put(&b, "application/octet-stream", b"shared between hosts")
        .await
        .unwrap();
    assert_eq!(again, r);
    assert!(a.stat(&r.id).await.unwrap().unwrap().touched_at > first);
    assert_eq!(a.list().await.unwrap().len(), 1);

    b.hold(&r.id, &run_hold(1)).await.unwrap();
    assert_eq!(a.holds(&r.id).await.unwrap(), vec![run_hold(1)]);
    let later = Utc::now() + chrono::Duration::hours(1);
    assert!(
        !a.remove_unheld(&r.id, later).await.unwrap(),
        "removed while held elsewhere"
    );
    a.release(&r.id, &[run_hold(1).holder]).await.unwrap();
    assert!(b.holds(&r.id).await.unwrap().is_empty());
    assert!(b.remove_unheld(&r.id, later).await.unwrap());
    assert_eq!(a.stat(&r.id).await.unwrap(), None);
    assert!(matches!(
        a.read(&r.id, 0, 1).await,
        Err(BlobError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_upload_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path()).unwrap();
    let bytes = vec![7u8; blob::CHUNK + 3];

    let mut up = store.begin("image/png").await.unwrap();
    up.write(&bytes).await.unwrap();
    up.write(&bytes).await.unwrap();
    assert_eq!(
        files_under(&dir.path().join("tmp")).len(),
        1,
        "the upload is in tmp/"
    );
    drop(up);
    assert_eq!(files_under(dir.path()), Vec::<String>::new());

    let mut up = store.begin("image/png").await.unwrap();
    up.write(&bytes).await.unwrap();
    up.abort().await;
    assert_eq!(files_under(dir.path()), Vec::<String>::new());

    // A finished one leaves its data, sidecar and lock, and nothing in tmp/.
    let r = blob::put(&store, "image/png", &bytes).await.unwrap();
    let hex = r.id.hex();
    let fan = &hex[..2];
    assert_eq!(
        files_under(dir.path()),
        vec![
            format!("data/{fan}/{hex}"),
            format!("locks/{fan}/{hex}"),
            format!("meta/{fan}/{hex}.json"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_removes_temporary_files_a_dead_process_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path()).unwrap();
    let tmp = dir.path().join("tmp");
    for (name, age) in [("old.part", 25 * 3600), ("young.part", 3600)] {
        let file = fs::File::create(tmp.join(name)).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(age))
            .unwrap();
    }
    assert!(store.list().await.unwrap().is_empty());
    assert_eq!(files_under(&tmp), vec!["young.part".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_file_without_its_sidecar_is_still_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path()).unwrap();
    let id = BlobId::of(b"copied in by hand");
    let fan = dir.path().join("data").join(&id.hex()[..2]);
    fs::create_dir_all(&fan).unwrap();
    fs::write(fan.join(id.hex()), b"copied in by hand").unwrap();

    let stat = store.stat(&id).await.unwrap().expect("found");
    assert_eq!(
        (stat.size, stat.media_type.as_str()),
        (17, "application/octet-stream")
    );
    store.hold(&id, &run_hold(2)).await.unwrap();
    assert_eq!(store.holds(&id).await.unwrap(), vec![run_hold(2)]);
}

/// Holds and removals race from two stores, each pair on a fresh blob: the
/// lock must order them, so a blob ends either removed with the hold
/// refused, or kept with the hold recorded; never removed under a hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_and_a_removal_from_two_stores_never_both_win() {
    let dir = tempfile::tempdir().unwrap();
    let a = FsBlobStore::open(dir.path()).unwrap();
    let b = FsBlobStore::open(dir.path()).unwrap();
    let later = Utc::now() + chrono::Duration::hours(1);
    let (mut removed, mut held) = (0, 0);
    for n in 0..60u32 {
        let r = blob::put(&a, "text/plain", format!("blob {n}").as_bytes())
            .await
            .unwrap();
        let hold = run_hold(n);
        let (by_b, by_a) = tokio::join!(
            tokio::spawn({
                let (b, id, hold) = (b.clone(), r.id.clone(), hold.clone());
                async move { b.hold(&id, &hold).await }
            }),
            tokio::spawn({
                let (a, id) = (a.clone(), r.id.clone());
                async move { a.remove_unheld(&id, later).await }
            }),
        );
        match (by_b.unwrap(), by_a.unwrap().unwrap()) {
            (Err(BlobError::NotFound(_)), true) => {
                removed += 1;
                assert_eq!(b.stat(&r.id).await.unwrap(), None);
            }
            (Ok(()), false) => {
                held += 1;
                assert_eq!(a.holds(&r.id).await.unwrap(), vec![hold]);
            }
            (hold, removal) => panic!("blob {n}: hold {hold:?}, removed {removal}"),
        }
    }
    assert_eq!(removed + held, 60);
}
