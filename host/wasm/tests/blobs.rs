//! The `blobs` import, end to end through real compiled plugins (built by
//! `plugins/build.sh` into `plugins/testing/dist`) over `MemoryBlobs`: reads
//! in bounded chunks, creation and reading back, the per-step read set, the
//! manifest's write budget; and a plugin built against the frozen 0.1.0
//! contract still loads and runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flowhost_core::blob::{self, BlobId, BlobRef, BlobStore, CHUNK, MemoryBlobs};
use flowhost_wasm::manifest::Defaults;
use flowhost_wasm::{Call, Limits, PluginError, PluginHost};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A test plugin's component, built by `plugins/build.sh`.
fn plugin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins/testing/dist")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} not built: run plugins/build.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

fn limits() -> Limits {
    Limits {
        defaults: Defaults {
            memory_bytes: 64 << 20,
            max_memory_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
            max_input_bytes: 1 << 20,
            max_output_bytes: 1 << 20,
            fuel: None,
            max_stdio_bytes: 16 << 10,
            http_timeout: Duration::from_secs(5),
            http_max_response_bytes: 1 << 20,
            secrets: BTreeMap::new(),
        },
        max_instances: 4,
        max_component_bytes: 16 << 20,
        compile_timeout: Duration::from_secs(120),
        max_compiles: 1,
        describe_timeout: Duration::from_secs(10),
        artifacts_dir: None,
    }
}

/// A host serving `blobs` (none when `None`) with `name` loaded.
async fn host_with(
    name: &str,
    blobs: Option<Arc<dyn BlobStore>>,
) -> (PluginHost, Arc<flowhost_wasm::Plugin>) {
    let mut host = PluginHost::new(limits()).expect("engine");
    if let Some(blobs) = blobs {
        host = host.with_blobs(blobs);
    }
    let loaded = host.load_file(&plugin(name)).await.expect("plugin loads");
    (host, Arc::new(loaded))
}

/// Runs one step of `plugin` with `config` and `input`.
async fn step(
    host: &PluginHost,
    plugin: &flowhost_wasm::Plugin,
    config: Value,
    input: Value,
) -> Result<Value, PluginError> {
    let stop = CancellationToken::new();
    let call = Call {
        flow_id: "00000000-0000-0000-0000-000000000001",
        step: "s",
        attempt: 1,
        config: &config,
        input: &input,
        timeout: None,
        stop: &stop,
    };
    host.execute_plugin(plugin, &call).await.result
}

/// `size` bytes that are not all the same, so that order matters.
fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 + i / 1000) as u8).collect()
}

fn fnv1a(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{hash:016x}")
}

async fn stored(store: &MemoryBlobs, bytes: &[u8]) -> BlobRef {
    blob::put(store, "application/x-test", bytes).await.unwrap()
}

#[tokio::test]
async fn a_plugin_reads_a_referenced_blob_in_chunks_of_at_most_chunk() {
    let store = MemoryBlobs::new();
    let bytes = pattern(3 << 20);
    let r = stored(&store, &bytes).await;
    let (host, p) = host_with("blobs", Some(Arc::new(store.clone()))).await;

    // The plugin asks for 4 MiB a call; the host answers at most CHUNK.
    let out = step(
        &host,
        &p,
        json!({"mode": "digest", "len": 4 << 20}),
        json!({"doc": {"scan": r.to_json()}}),
    )
    .await
    .expect("digest");
    let got = &out["blobs"][0];
    assert_eq!(got["id"], r.id.to_string());
    assert_eq!(got["size"], bytes.len());
    assert_eq!(got["media_type"], "application/x-test");
    assert_eq!(got["fnv1a"], fnv1a(&bytes));
    assert_eq!(got["first_bytes"], json!(bytes[..8]));
    assert_eq!(got["reads"], (bytes.len() / CHUNK) as u64);
    assert_eq!(out["blobs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_plugin_creates_a_blob_and_reads_it_back_in_the_same_step() {
    let store = MemoryBlobs::new();
    let bytes = pattern(CHUNK + 17);
    let r = stored(&store, &bytes).await;
    let (host, p) = host_with("blobs", Some(Arc::new(store.clone()))).await;

    // `reverse` fails unless reading its own new blob gives the bytes back.
    let out = step(&host, &p, json!({"mode": "reverse"}), json!([r.to_json()]))
        .await
        .expect("reverse");
    let created = BlobRef::parse(&out["reversed"])
        .expect("a reference")
        .unwrap();
    let mut reversed = bytes.clone();
    reversed.reverse();
    assert_eq!(created.id, BlobId::of(&reversed));
    assert_eq!(
        (created.size, created.media_type.as_str()),
        (reversed.len() as u64, "application/x-test")
    );
    assert_eq!(blob::get(&store, &created.id).await.unwrap(), reversed);
}

#[tokio::test]
async fn a_blob_not_in_the_input_is_denied_and_the_step_fails_capability_denied() {
    let store = MemoryBlobs::new();
    let secret = stored(&store, b"someone else's blob").await;
    let given = stored(&store, b"mine").await;
    let (host, p) = host_with("blobs", Some(Arc::new(store.clone()))).await;

    let config = json!({"mode": "guess", "id": secret.id.to_string()});
    let e = step(&host, &p, config, json!({"mine": given.to_json()}))
        .await
        .unwrap_err();
    match &e {
        PluginError::CapabilityDenied {
            capability,
            detail,
            plugin_said,
        } => {
            assert_eq!(*capability, "blobs");
            assert!(detail.contains(&secret.id.to_string()), "{detail}");
            assert!(plugin_said.contains("Denied"), "{plugin_said}");
        }
        other => panic!("expected capability_denied, got {other:?}"),
    }
    assert_eq!(e.kind(), "capability_denied");

    // The blob it was given is readable, by the same mode.
    let config = json!({"mode": "guess", "id": given.id.to_string()});
    let out = step(&host, &p, config, json!({"mine": given.to_json()}))
        .await
        .unwrap();
    assert_eq!(out["read"], 4);
}

#[tokio::test]
async fn writes_within_the_manifest_budget_pass_and_past_it_fail_the_step() {
    let store = MemoryBlobs::new();
    let (host, p) = host_with("blobs", Some(Arc::new(store.clone()))).await;
    // blobs.toml sets limits.max_blob_write_bytes = 1 MiB.
    assert_eq!(p.meta.grants.max_blob_write_bytes, 1 << 20);

    for chunked in [false, true] {
        let out = step(
            &host,
            &p,
            json!({"mode": "write", "bytes": 1 << 20, "chunked": chunked}),
            json!({}),
        )
        .await
        .expect("exactly the budget");
        let r = BlobRef::parse(&out["created"]).unwrap().unwrap();
        assert_eq!(blob::get(&store, &r.id).await.unwrap().len(), 1 << 20);

        let over = json!({"mode": "write", "bytes": (1 << 20) + 1, "chunked": chunked});
        let e = step(&host, &p, over, json!({})).await.unwrap_err();
        assert!(
            matches!(
                e,
                PluginError::BlobTooLarge {
                    what: "written",
                    limit: 1_048_576,
                    ..
                }
            ),
            "chunked {chunked}: {e:?}"
        );
        assert_eq!(e.kind(), "blob_too_large");
    }

    // A plugin that shrugs the refusal off and returns output fails all the same.
    let over = json!({"mode": "write", "bytes": 2 << 20, "ignore_errors": true});
    let e = step(&host, &p, over, json!({})).await.unwrap_err();
    assert!(
        matches!(
            e,
            PluginError::BlobTooLarge {
                size: 2_097_152,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn reads_past_the_manifest_budget_fail_the_step() {
    let store = MemoryBlobs::new();
    let (a, b) = (
        stored(&store, &pattern(3 << 20)).await,
        stored(&store, &pattern(3 << 20 | 1)).await,
    );
    let (host, p) = host_with("blobs", Some(Arc::new(store.clone()))).await;
    // blobs.toml sets limits.max_blob_read_bytes = 4 MiB: one blob fits, two do not.
    assert_eq!(p.meta.grants.max_blob_read_bytes, 4 << 20);
    let e = step(
        &host,
        &p,
        json!({"mode": "digest"}),
        json!([a.to_json(), b.to_json()]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            PluginError::BlobTooLarge {
                what: "read",
                limit: 4_194_304,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn without_a_blob_store_every_call_is_unavailable() {
    let (host, p) = host_with("blobs", None).await;
    let e = step(&host, &p, json!({"mode": "write", "bytes": 10}), json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PluginError::Failed(m) if m.contains("Unavailable")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_plugin_built_against_contract_0_1_0_loads_and_runs() {
    let (host, p) = host_with("contract-0-1-0", Some(Arc::new(MemoryBlobs::new()))).await;
    assert_eq!(p.meta.declared_name, "contract-0-1-0");
    let out = step(&host, &p, json!({}), json!({"n": 1}))
        .await
        .expect("runs");
    assert_eq!(out, json!({"contract": "0.1.0", "input": {"n": 1}}));
    assert_eq!(flowhost_wasm::CONTRACT_VERSION, "flowhost:executor@0.1.1");
}
