//! Contract suites: what every adapter of a port must do, as functions a
//! test calls with its adapter (the memory store here, the Redis stores on a
//! real redis-server and a real Redis Cluster in `tests/e2e/state_store.rs`).
//! A new backend proves itself by passing them. Built with the `testing`
//! feature only; they panic on the first broken promise.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::json;

use crate::blob::{self, BlobError, BlobId, BlobStore, CHUNK, Hold};
use crate::cache::{CachedResult, Invalidate, ResultCache};
use crate::state::{
    FlowId, FlowPatch, FlowState, FlowStatus, FlowStepState, FlowSummary, ListFilter, StateStore,
    StepStatus, StoreError,
};

/// A running flow of `steps` pending steps, started `started_secs` after a
/// fixed time.
pub fn flow(name: &str, steps: usize, started_secs: i64) -> FlowState {
    FlowState {
        flow_id: FlowId::new(),
        flow_name: name.into(),
        status: FlowStatus::Running,
        inputs: json!({"text": "hello"}),
        steps: (0..steps)
            .map(|i| (format!("s{i}"), FlowStepState::pending(format!("s{i}"))))
            .collect::<BTreeMap<_, _>>(),
        current_step: None,
        started_at: Utc.timestamp_opt(1_700_000_000 + started_secs, 0).unwrap(),
        completed_at: None,
        total_execution_time: None,
        metadata: json!({"who": "test"}).as_object().unwrap().clone(),
        outputs: None,
        error: None,
    }
}

/// The `StateStore` contract: create and read back, step and header writes,
/// listing with every filter, delete and prune, idempotency keys (taken and
/// given back), and the lease calls a store serving one host answers.
pub async fn state_store(store: &dyn StateStore) {
    // create, read back whole
    let mut a = flow("alpha", 3, 0);
    store.create_flow(&a).await.unwrap();
    assert_eq!(store.get_flow(a.flow_id).await.unwrap(), Some(a.clone()));
    assert!(matches!(
        store.create_flow(&a).await,
        Err(StoreError::AlreadyExists(id)) if id == a.flow_id
    ));
    assert_eq!(store.get_flow(FlowId::new()).await.unwrap(), None);

    // one step and the patch are written together; other steps untouched
    let mut s1 = FlowStepState::pending("s1");
    s1.status = StepStatus::Completed;
    s1.started_at = Some(Utc.timestamp_opt(1_700_000_001, 5_000_000).unwrap());
    s1.completed_at = Some(Utc.timestamp_opt(1_700_000_002, 0).unwrap());
    s1.inputs = Some(json!({"text": "x"}));
    s1.outputs = Some(json!({"n": 1.5, "list": [1, "two", null]}));
    s1.execution_time = Some(0.25);
    s1.attempt = 2;
    s1.cached = true;
    s1.cache_key = Some("k".into());
    let patch = FlowPatch {
        current_step: Some("s1".into()),
        ..FlowPatch::default()
    };
    store.save_step(a.flow_id, &s1, &patch).await.unwrap();
    a.steps.insert("s1".into(), s1.clone());
    a.current_step = Some("s1".into());
    assert_eq!(store.get_flow(a.flow_id).await.unwrap(), Some(a.clone()));

    // header patch
    let done = FlowPatch {
        status: Some(FlowStatus::Completed),
        completed_at: Some(Utc.timestamp_opt(1_700_000_003, 0).unwrap()),
        total_execution_time: Some(3.0),
        outputs: Some(json!({"answer": 42})),
        metadata: Some(
            json!({"who": "test", "more": true})
                .as_object()
                .unwrap()
                .clone(),
        ),
        ..FlowPatch::default()
    };
    store.update_flow(a.flow_id, &done).await.unwrap();
    done.apply(&mut a);
    assert_eq!(store.get_flow(a.flow_id).await.unwrap(), Some(a.clone()));

    let (b, c) = listing(store, &a).await;
    delete_and_prune(store, &a, &b, &c).await;
    idempotency_keys(store, c.flow_id).await;
}

fn ids(v: Vec<FlowSummary>) -> Vec<FlowId> {
    v.into_iter().map(|s| s.flow_id).collect()
}

/// Listing: newest first, filtered by name and status, limited. Adds two
/// running flows (`beta` then `alpha`, started after `a`) and returns them.
async fn listing(store: &dyn StateStore, a: &FlowState) -> (FlowState, FlowState) {
    let b = flow("beta", 1, 10);
    let c = flow("alpha", 1, 20);
    store.create_flow(&b).await.unwrap();
    store.create_flow(&c).await.unwrap();
    let ids = |v: Vec<FlowSummary>| v.into_iter().map(|s| s.flow_id).collect::<Vec<_>>();
    let all = ListFilter {
        limit: 10,
        ..ListFilter::default()
    };
    assert_eq!(
        ids(store.list_flows(&all).await.unwrap()),
        vec![c.flow_id, b.flow_id, a.flow_id]
    );
    let alpha = ListFilter {
        flow_name: Some("alpha".into()),
        limit: 10,
        ..ListFilter::default()
    };
    assert_eq!(
        ids(store.list_flows(&alpha).await.unwrap()),
        vec![c.flow_id, a.flow_id]
    );
    let running = ListFilter {
        status: Some(FlowStatus::Running),
        limit: 10,
        ..ListFilter::default()
    };
    let mut got = ids(store.list_flows(&running).await.unwrap());
    got.sort();
    let mut want = vec![b.flow_id, c.flow_id];
    want.sort();
    assert_eq!(got, want);
    let completed = ListFilter {
        status: Some(FlowStatus::Completed),
        limit: 10,
        ..ListFilter::default()
    };
    let summaries = store.list_flows(&completed).await.unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].flow_id, a.flow_id);
    assert_eq!(summaries[0].total_execution_time, Some(3.0));
    let one = ListFilter {
        limit: 1,
        ..ListFilter::default()
    };
    assert_eq!(ids(store.list_flows(&one).await.unwrap()), vec![c.flow_id]);

    (b, c)
}

/// Delete, and prune, which removes finished flows only (`a` completed, `c`
/// still running).
async fn delete_and_prune(store: &dyn StateStore, a: &FlowState, b: &FlowState, c: &FlowState) {
    let all = ListFilter {
        limit: 10,
        ..ListFilter::default()
    };
    assert!(store.delete_flow(b.flow_id).await.unwrap());
    assert!(!store.delete_flow(b.flow_id).await.unwrap());
    assert_eq!(store.get_flow(b.flow_id).await.unwrap(), None);
    assert_eq!(
        ids(store.list_flows(&all).await.unwrap()),
        vec![c.flow_id, a.flow_id]
    );

    let later = Utc::now() + chrono::Duration::minutes(1);
    assert_eq!(
        store
            .prune(Utc.timestamp_opt(1_600_000_000, 0).unwrap())
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.prune(later).await.unwrap(), 1);
    assert_eq!(store.get_flow(a.flow_id).await.unwrap(), None);
    assert!(store.get_flow(c.flow_id).await.unwrap().is_some());
}

async fn idempotency_keys(store: &dyn StateStore, first: FlowId) {
    let ttl = Duration::from_secs(60);
    let key = format!("contract-{first}");
    assert_eq!(store.remember_key(&key, first, ttl).await.unwrap(), None);
    let again = store.remember_key(&key, FlowId::new(), ttl).await.unwrap();
    assert_eq!(again, Some(first), "a key keeps naming its first flow");
    let other = format!("contract-other-{first}");
    assert_eq!(
        store
            .remember_key(&other, FlowId::new(), ttl)
            .await
            .unwrap(),
        None
    );

    // Given back only by the request that took it: a key naming another
    // flow is kept, one naming this flow is removed and free again.
    assert!(!store.forget_key(&key, FlowId::new()).await.unwrap());
    assert_eq!(
        store.remember_key(&key, FlowId::new(), ttl).await.unwrap(),
        Some(first)
    );
    assert!(store.forget_key(&key, first).await.unwrap());
    assert!(!store.forget_key(&key, first).await.unwrap());
    let second = FlowId::new();
    assert_eq!(store.remember_key(&key, second, ttl).await.unwrap(), None);
    assert_eq!(
        store.remember_key(&key, first, ttl).await.unwrap(),
        Some(second)
    );
    let never = format!("contract-never-{first}");
    assert!(!store.forget_key(&never, first).await.unwrap());
}

/// The `ResultCache` contract: a stored entry reads back whole; entries are
/// removed by key, by plugin and by flow, and each removal says how many; a
/// host's lead on a key is its own until it gives it up.
pub async fn result_cache(cache: &dyn ResultCache) {
    let ttl = Duration::from_secs(600);
    let run = FlowId::new().to_string();
    let entry = |key: &str, plugin: &str, flow: &str| CachedResult {
        key: format!("{key}-{run}"),
        plugin: format!("{plugin}-{run}"),
        flow: format!("{flow}-{run}"),
        step: "s".into(),
        output: json!({"n": 1.5, "list": [1, "two", null]}),
        stored_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
    };
    let a = entry("a", "p", "f");
    cache.put(&a, ttl).await.unwrap();
    assert_eq!(cache.get(&a.key).await.unwrap(), Some(a.clone()));
    assert_eq!(cache.get(&format!("missing-{run}")).await.unwrap(), None);
    assert_eq!(
        cache
            .invalidate(&Invalidate::Key(a.key.clone()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(cache.get(&a.key).await.unwrap(), None);

    let (b, c, d) = (
        entry("b", "p", "f"),
        entry("c", "p", "g"),
        entry("d", "q", "g"),
    );
    for e in [&b, &c, &d] {
        cache.put(e, ttl).await.unwrap();
    }
    assert_eq!(
        cache
            .invalidate(&Invalidate::Plugin(b.plugin.clone()))
            .await
            .unwrap(),
        2
    );
    assert_eq!(cache.get(&b.key).await.unwrap(), None);
    assert_eq!(cache.get(&c.key).await.unwrap(), None);
    assert_eq!(cache.get(&d.key).await.unwrap(), Some(d.clone()));
    assert_eq!(
        cache
            .invalidate(&Invalidate::Flow(d.flow.clone()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(cache.get(&d.key).await.unwrap(), None);

    // A lead is this host's until it gives it up; leading again is no wait.
    let key = format!("lead-{run}");
    assert!(cache.lead(&key, ttl).await.unwrap());
    assert!(cache.lead(&key, ttl).await.unwrap());
    cache.end_lead(&key).await.unwrap();
    assert!(cache.lead(&key, ttl).await.unwrap());
    cache.end_lead(&key).await.unwrap();
}

/// Leads between two hosts sharing one cache (`a` and `b`, each as its host
/// sees it): one leads a key at a time, only the leader gives it up, and a
/// lead runs out at its TTL, so a host that died blocks no other for longer.
pub async fn shared_leads(a: &dyn ResultCache, b: &dyn ResultCache) {
    let run = FlowId::new().to_string();
    let ttl = Duration::from_secs(600);
    let key = format!("shared-{run}");
    assert!(a.lead(&key, ttl).await.unwrap());
    assert!(!b.lead(&key, ttl).await.unwrap(), "two hosts lead one key");
    b.end_lead(&key).await.unwrap();
    assert!(
        !b.lead(&key, ttl).await.unwrap(),
        "a lead given up by another"
    );
    a.end_lead(&key).await.unwrap();
    assert!(b.lead(&key, ttl).await.unwrap());
    assert!(!a.lead(&key, ttl).await.unwrap());
    b.end_lead(&key).await.unwrap();

    let brief = format!("brief-{run}");
    assert!(a.lead(&brief, Duration::from_millis(100)).await.unwrap());
    assert!(!b.lead(&brief, ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b.lead(&brief, ttl).await.unwrap(),
        "an expired lead still held"
    );
    b.end_lead(&brief).await.unwrap();
}

/// Bytes that differ from chunk to chunk (so that a chunk read from the
/// wrong place shows), `len` of them.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed)) as u8
        })
        .collect()
}

/// The `BlobStore` contract: content addressing (the same bytes, the same
/// id, stored once; the first media type stays), whole and ranged reads
/// across chunk boundaries, uploads aborted or dropped leaving nothing
/// visible, holds and the conditional removal the retention sweep relies on.
pub async fn blob_store(store: &dyn BlobStore) {
    let bytes = pattern(2 * CHUNK + 1234, 3);
    let r = blob::put(store, "image/png", &bytes).await.unwrap();
    assert_eq!(r.id, BlobId::of(&bytes));
    assert_eq!(
        (r.size, r.media_type.as_str(), r.offloaded),
        (bytes.len() as u64, "image/png", false)
    );
    let stat = store.stat(&r.id).await.unwrap().expect("stored");
    assert_eq!(
        (stat.size, stat.media_type.as_str()),
        (bytes.len() as u64, "image/png")
    );
    assert_eq!(blob::get(store, &r.id).await.unwrap(), bytes);
    assert!(store.list().await.unwrap().contains(&r.id));

    // ranges: within a chunk, across a boundary, at and past the end
    for (offset, len) in [
        (0, 10),
        (CHUNK as u64 - 5, 10),
        (CHUNK as u64, CHUNK as u64 + 1),
        (bytes.len() as u64 - 3, 100),
    ] {
        let end = (offset + len).min(bytes.len() as u64) as usize;
        assert_eq!(
            store.read(&r.id, offset, len).await.unwrap(),
            &bytes[offset as usize..end],
            "range {offset}+{len}"
        );
    }
    assert!(
        store
            .read(&r.id, bytes.len() as u64 + 5, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // the same bytes again: the same reference, the first media type, touched
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = blob::put(store, "application/octet-stream", &bytes)
        .await
        .unwrap();
    assert_eq!(again, r);
    let touched = store.stat(&r.id).await.unwrap().unwrap().touched_at;
    assert!(
        touched > stat.touched_at,
        "a second upload touches the blob"
    );

    // an empty blob is a blob
    let empty = blob::put(store, "text/plain", b"").await.unwrap();
    assert_eq!((empty.id.clone(), empty.size), (BlobId::of(b""), 0));
    assert!(store.read(&empty.id, 0, 10).await.unwrap().is_empty());

    // uploads given up leave nothing behind
    let partial = pattern(CHUNK + 7, 9);
    let mut up = store.begin("image/jpeg").await.unwrap();
    up.write(&partial).await.unwrap();
    assert_eq!(up.size(), partial.len() as u64);
    up.abort().await;
    let mut up = store.begin("image/jpeg").await.unwrap();
    up.write(&partial).await.unwrap();
    drop(up);
    assert_eq!(store.stat(&BlobId::of(&partial)).await.unwrap(), None);
    assert!(!store.list().await.unwrap().contains(&BlobId::of(&partial)));

    // a blob that is not there
    let missing = BlobId::of(b"never stored");
    assert_eq!(store.stat(&missing).await.unwrap(), None);
    assert!(
        matches!(store.read(&missing, 0, 1).await, Err(BlobError::NotFound(id)) if id == missing)
    );
    let run = Hold {
        holder: "flow:0190d5a4-0000-7000-8000-000000000001".into(),
        until: None,
    };
    assert!(matches!(
        store.hold(&missing, &run).await,
        Err(BlobError::NotFound(_))
    ));

    // holds, and removal only without them and only when old enough
    let later = Utc::now() + chrono::Duration::hours(1);
    let entry = Hold {
        holder: "cache:k1".into(),
        until: Some(later),
    };
    store.hold(&r.id, &run).await.unwrap();
    store.hold(&r.id, &entry).await.unwrap();
    store.hold(&r.id, &run).await.unwrap();
    let mut holds = store.holds(&r.id).await.unwrap();
    holds.sort_by(|a, b| a.holder.cmp(&b.holder));
    assert_eq!(holds.len(), 2, "holds are a set: {holds:?}");
    assert_eq!(holds[0].holder, "cache:k1");
    assert_eq!(
        holds[0].until.map(|t| t.timestamp_millis()),
        Some(later.timestamp_millis())
    );
    assert_eq!(holds[1], run);
    let future = Utc::now() + chrono::Duration::hours(2);
    assert!(
        !store.remove_unheld(&r.id, future).await.unwrap(),
        "removed while held"
    );
    store
        .release(&r.id, &["cache:k1".into(), run.holder.clone()])
        .await
        .unwrap();
    assert!(store.holds(&r.id).await.unwrap().is_empty());
    assert!(
        !store.remove_unheld(&r.id, touched).await.unwrap(),
        "removed while young"
    );
    assert!(store.remove_unheld(&r.id, future).await.unwrap());
    assert_eq!(store.stat(&r.id).await.unwrap(), None);
    assert!(matches!(
        store.read(&r.id, 0, 1).await,
        Err(BlobError::NotFound(_))
    ));
    assert!(!store.list().await.unwrap().contains(&r.id));
    // and stored again afterwards, whole
    let back = blob::put(store, "image/png", &bytes).await.unwrap();
    assert_eq!(blob::get(store, &back.id).await.unwrap(), bytes);
    assert!(
        store
            .remove_unheld(&back.id, Utc::now() + chrono::Duration::hours(2))
            .await
            .unwrap()
    );
    assert!(
        store
            .remove_unheld(&empty.id, Utc::now() + chrono::Duration::hours(2))
            .await
            .unwrap()
    );
}

#[cfg(test)]
mod tests {
    use crate::memory::MemoryStore;

    #[tokio::test]
    async fn the_memory_store_keeps_the_contracts() {
        let store = MemoryStore::new();
        super::state_store(&store).await;
        super::result_cache(&store).await;
        super::blob_store(&crate::blob::MemoryBlobs::new()).await;
    }
}
