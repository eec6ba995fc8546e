//! Blobs in flow state, against the real binary and a real redis-server:
//! a large input offloaded to a blob (no field of the flow's Redis hashes
//! over `state.inline_max_bytes`, the status answering the reference, the
//! steps computing on the whole text), mid-sized values compressed with zstd
//! in Redis, and the retention sweep keeping the blobs of a run that can
//! still be retried while removing the rest; a plugin reading the blob its
//! input refers to and creating one, refused any other; references to
//! missing blobs and malformed ones.

use std::time::Duration;

use flowhost_tests::{
    DOCUMENT, EXECUTORS, Host, RedisServer, config_file, flows_dir, plugins_dir, repo_root,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

async fn execute(host: &Host, flow: &str, inputs: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(host.url(&format!("/api/v1/{flow}/execute")))
        .body(json!({ "inputs": inputs }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

async fn status(host: &Host, flow_id: &str) -> Value {
    reqwest::get(host.url(&format!("/api/v1/document_analysis/status/{flow_id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every field of every hash under the flow's keys, raw.
fn flow_fields(redis: &RedisServer, id: &str) -> Vec<(String, String, Vec<u8>)> {
    let mut conn = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{id}*"))
        .query(&mut conn)
        .unwrap();
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
        if kind != "hash" {
            continue;
        }
        let fields: Vec<(String, Vec<u8>)> =
            redis::cmd("HGETALL").arg(&key).query(&mut conn).unwrap();
        out.extend(fields.into_iter().map(|(f, v)| (key.clone(), f, v)));
    }
    assert!(!out.is_empty(), "no hash of flow {id} in redis");
    out
}

/// About `n` bytes of the test document, repeated with a counter so that
/// it does not compress to nothing.
fn long_text(n: usize) -> String {
    let mut s = String::with_capacity(n + DOCUMENT.len());
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!("Part {i}. {DOCUMENT} "));
        i += 1;
    }
    s
}

#[tokio::test]
async fn large_values_are_offloaded_and_mid_sized_ones_compressed() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&EXECUTORS);
    let flows = repo_root().join("flows");
    let host = Host::start(&[
        ("FLOWHOST_REDIS_URL", &redis.url()),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.to_str().unwrap()),
    ])
    .unwrap();

    // 200 KB: over the 64 KiB inline limit, so kept as a blob.
    let big = long_text(200_000);
    let run = execute(&host, "document_analysis", json!({"text": big})).await;
    assert_eq!(run["status"], "completed", "{run}");
    let flow_id = run["flow_id"].as_str().unwrap();
    let seen = status(&host, flow_id).await;
    let reference = &seen["inputs"]["text"];
    assert_eq!(reference["offloaded"], true, "{reference}");
    assert_eq!(reference["media_type"], "application/json");
    let words = run["outputs"]["statistics"]["words"].as_u64().unwrap();
    assert!(
        words > 20_000,
        "the steps saw the whole text: {words} words"
    );
    // The blob holds the value itself.
    let id = reference["$blob"].as_str().unwrap();
    let got = reqwest::get(host.url(&format!("/api/v1/blobs/{id}")))
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    let value: Value = serde_json::from_slice(&got.bytes().await.unwrap()).unwrap();
    assert_eq!(value, json!(big));
    for (key, field, value) in flow_fields(&redis, flow_id) {
        assert!(
            value.len() <= 64 * 1024,
            "{key} {field} holds {} bytes",
            value.len()
        );
    }
    // The normalised text went through the state as a blob too.
    let steps = seen["steps"].as_array().unwrap();
    assert_eq!(
        steps[0]["outputs"]["text"]["offloaded"], true,
        "{}",
        steps[0]["outputs"]
    );

    // 30 KB: inline, but compressed in Redis, and read back whole.
    let mid = long_text(30_000);
    let run = execute(&host, "document_analysis", json!({"text": mid})).await;
    assert_eq!(run["status"], "completed", "{run}");
    let flow_id = run["flow_id"].as_str().unwrap();
    let fields = flow_fields(&redis, flow_id);
    let compressed: Vec<_> = fields
        .iter()
        .filter(|(_, _, v)| v.starts_with(&ZSTD_MAGIC))
        .map(|(k, f, v)| (k, f, v.len()))
        .collect();
    assert!(
        !compressed.is_empty(),
        "no field compressed: {:?}",
        fields
            .iter()
            .map(|(k, f, v)| (k, f, v.len()))
            .collect::<Vec<_>>()
    );
    for (_, _, len) in &compressed {
        assert!(*len < 30_000, "compressed to {len} bytes");
    }
    assert_eq!(status(&host, flow_id).await["inputs"]["text"], json!(mid));
}

/// `see` echoes the image reference, `boom` fails: the run fails, holding
/// the image, and can be retried.
const HOLDS: &str = r#"
name: holds
inputs:
  image: {}
steps:
  - name: see
    plugin: echo
    input:
      image: ${inputs.image}
  - name: boom
    plugin: chaos
    depends_on: [see]
    input: {}
    config: {mode: fail}
"#;

async fn upload(host: &Host, bytes: &'static [u8]) -> Value {
    let resp = reqwest::Client::new()
        .post(host.url("/api/v1/blobs"))
        .header("content-type", "image/png")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json().await.unwrap()
}

async fn blob_status(host: &Host, id: &str) -> StatusCode {
    reqwest::get(host.url(&format!("/api/v1/blobs/{id}")))
        .await
        .unwrap()
        .status()
}

/// Waits up to 10 s for GET of the blob to answer `want`.
async fn until_status(host: &Host, id: &str, want: StatusCode, what: &str) {
    for _ in 0..100 {
        if blob_status(host, id).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: GET of blob {id} never answered {want}");
}

#[tokio::test]
async fn the_sweep_keeps_the_blobs_of_a_run_that_can_be_retried() {
    let redis = RedisServer::start().unwrap();
    let plugins = plugins_dir(&["echo", "chaos"]);
    let flows = flows_dir(&[("holds", HOLDS)]);
    let config = config_file("blobs:\n  grace_seconds: 0\n  sweep_interval_seconds: 1\n");
    let host = Host::start(&[
        ("FLOWHOST_CONFIG", config.path().to_str().unwrap()),
        ("FLOWHOST_REDIS_URL", &redis.url()),
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.path().to_str().unwrap()),
    ])
    .unwrap();
    let kept = upload(&host, b"\x89PNG a scanned page").await;
    let loose = upload(&host, b"\x89PNG nobody uses me").await;
    let run = execute(&host, "holds", json!({"image": kept})).await;
    assert_eq!(run["status"], "failed", "{run}");
    let (kept_id, loose_id) = (
        kept["$blob"].as_str().unwrap().to_owned(),
        loose["$blob"].as_str().unwrap().to_owned(),
    );

    // Within a few sweeps the unused upload is gone; the run's stays.
    until_status(
        &host,
        &loose_id,
        StatusCode::NOT_FOUND,
        "the unused blob swept",
    )
    .await;
    assert_eq!(blob_status(&host, &kept_id).await, StatusCode::OK);
    let resp = reqwest::Client::new()
        .delete(host.url(&format!("/api/v1/blobs/{kept_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CONFLICT,
        "a held blob is not removed"
    );

    // Once the run is pruned and the cache entry invalidated, it goes too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = reqwest::Client::new()
        .delete(host.url("/api/v1/admin/flows?older_than=1s"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
    // The run is gone, but `see`'s cached result still holds the image.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        blob_status(&host, &kept_id).await,
        StatusCode::OK,
        "a cache entry holds it"
    );
    let resp = reqwest::Client::new()
        .delete(host.url("/api/v1/cache?flow=holds"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    until_status(
        &host,
        &kept_id,
        StatusCode::NOT_FOUND,
        "the pruned run's blob swept",
    )
    .await;
}

const MIRROR: &str = r#"
name: mirror
inputs:
  image: {}
steps:
  - name: flip
    plugin: blobs
    input:
      image: ${inputs.image}
    config: {mode: reverse}
outputs:
  reversed: ${steps.flip.output.reversed}
"#;

const PEEK: &str = r#"
name: peek
inputs:
  image: {}
  other: {type: string}
steps:
  - name: guess
    plugin: blobs
    input:
      image: ${inputs.image}
      id: ${inputs.other}
    config: {mode: guess}
"#;

#[tokio::test]
async fn a_plugin_reads_its_input_blob_creates_one_and_is_refused_any_other() {
    let plugins = plugins_dir(&["blobs"]);
    let flows = flows_dir(&[("mirror", MIRROR), ("peek", PEEK)]);
    let host = Host::start(&[
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.path().to_str().unwrap()),
    ])
    .unwrap();
    let bytes: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let image: Value = reqwest::Client::new()
        .post(host.url("/api/v1/blobs"))
        .header("content-type", "image/png")
        .body(bytes.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let run = execute(&host, "mirror", json!({"image": image})).await;
    assert_eq!(run["status"], "completed", "{run}");
    let reversed = &run["outputs"]["reversed"];
    assert_eq!(reversed["media_type"], "image/png");
    assert_eq!(reversed["size"], json!(bytes.len()));
    let id = reversed["$blob"].as_str().unwrap();
    let got = reqwest::get(host.url(&format!("/api/v1/blobs/{id}")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut want = bytes.clone();
    want.reverse();
    assert!(
        got[..] == want[..],
        "the created blob holds the reversed bytes"
    );
    // The run holds what its plugin created.
    let resp = reqwest::Client::new()
        .delete(host.url(&format!("/api/v1/blobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);

    // A blob the step's input does not refer to is refused.
    let run = execute(&host, "peek", json!({"image": image, "other": id})).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["steps"][0]["error_kind"], "capability_denied", "{run}");

    // A reference to a blob nobody stored fails the step, naming it.
    let nowhere = format!("blake3:{}", "ab".repeat(32));
    let run = execute(&host, "mirror", json!({"image": {"$blob": nowhere}})).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["steps"][0]["error_kind"], "invalid_input", "{run}");
    assert!(
        run["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains(&nowhere),
        "{run}"
    );

    // A malformed reference is refused at submit.
    let resp = reqwest::Client::new()
        .post(host.url("/api/v1/mirror/execute"))
        .body(json!({"inputs": {"image": {"$blob": "md5:1234"}}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = resp.json().await.unwrap();
    assert!(body.to_string().contains("inputs.image"), "{body}");
}
