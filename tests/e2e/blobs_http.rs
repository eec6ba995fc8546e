//! Blobs over HTTP against the real binary: an upload read back whole, in
//! ranges and by ETag; the size limit; an upload cut off halfway (raw TCP)
//! leaving nothing; delete, and its refusal while a run holds the blob (on
//! Redis); files in a multipart execute reaching the `echo` plugin as blob
//! references; and `flowhost run --input-file`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use flowhost_core::blob::BlobId;
use flowhost_tests::{
    Host, RedisServer, config_file, eventually, flowhost_command, flows_dir, plugins_dir,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Uploads may be 2 MiB here: small enough to pass, large enough to span
/// several of the store's chunks (512 KiB).
const MAX: usize = 2 << 20;

/// Echoes its inputs: a blob reference arrives as it is.
const SEE: &str = r#"
name: see
inputs:
  image: {}
  note: {type: string}
  n: {type: integer, required: false}
  extra: {required: false}
steps:
  - name: look
    plugin: echo
    input:
      image: ${inputs.image}
      note: ${inputs.note}
outputs:
  image: ${steps.look.output.input.image}
  note: ${steps.look.output.input.note}
"#;

/// What a host's life needs kept: its plugins, flows and config.
type Folders = (
    tempfile::TempDir,
    tempfile::TempDir,
    tempfile::NamedTempFile,
);

fn host(redis: Option<&RedisServer>) -> (Host, Folders) {
    let plugins = plugins_dir(&["echo"]);
    let flows = flows_dir(&[("see", SEE)]);
    // Bodies other than blobs are held to 64 KiB: the uploads and forms
    // here are larger, which only streaming lets through.
    let config = config_file(&format!(
        "blobs:\n  max_bytes: {MAX}\nlimits:\n  max_request_bytes: 65536\n"
    ));
    let url = redis.map(RedisServer::url).unwrap_or_default();
    let mut env = vec![
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_FLOWS_DIR", flows.path().to_str().unwrap()),
        ("FLOWHOST_CONFIG", config.path().to_str().unwrap()),
    ];
    if redis.is_some() {
        env.push(("FLOWHOST_REDIS_URL", &url));
    }
    let host = Host::start(&env).unwrap();
    (host, (plugins, flows, config))
}

/// `len` bytes that no two offsets of the test share by chance.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

fn id_of(bytes: &[u8]) -> String {
    BlobId::of(bytes).to_string()
}

async fn upload(host: &Host, media_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(host.url("/api/v1/blobs"))
        .header("content-type", media_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

async fn get(host: &Host, id: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(host.url(&format!("/api/v1/blobs/{id}")));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

async fn status_of(host: &Host, id: &str) -> StatusCode {
    get(host, id, &[]).await.status()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", resp.headers()))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn an_upload_reads_back_whole_in_ranges_and_by_etag() {
    let (host, _keep) = host(None);
    let data = bytes(1_500_000, 1);
    let id = id_of(&data);
    let (status, reference) = upload(&host, "image/png", data.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{reference}");
    assert_eq!(
        reference,
        json!({"$blob": id, "size": data.len(), "media_type": "image/png"})
    );
    // The same bytes again: the same reference, the first media type kept.
    let (status, again) = upload(&host, "application/octet-stream", data.clone()).await;
    assert_eq!((status, &again), (StatusCode::CREATED, &reference));

    let whole = get(&host, &id, &[]).await;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(header(&whole, "content-type"), "image/png");
    assert_eq!(header(&whole, "content-length"), data.len().to_string());
    assert_eq!(header(&whole, "etag"), format!("\"{id}\""));
    assert_eq!(header(&whole, "accept-ranges"), "bytes");
    assert!(header(&whole, "cache-control").contains("immutable"));
    assert!(
        whole.bytes().await.unwrap() == data,
        "the bytes read back differ"
    );
    // The bare hex digits name it too.
    let bare = id.strip_prefix("blake3:").unwrap();
    assert_eq!(status_of(&host, bare).await, StatusCode::OK);

    // Ranges: one across the store's 512 KiB chunks, an open one, a suffix.
    let n = data.len();
    for (range, first, last) in [
        ("bytes=524000-525000", 524_000, 525_000),
        ("bytes=1499990-", n - 10, n - 1),
        ("bytes=-7", n - 7, n - 1),
        ("bytes=0-9999999", 0, n - 1),
    ] {
        let part = get(&host, &id, &[("range", range)]).await;
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&part, "content-range"),
            format!("bytes {first}-{last}/{n}"),
            "{range}"
        );
        assert!(part.bytes().await.unwrap() == data[first..=last], "{range}");
    }
    let past = get(&host, &id, &[("range", &format!("bytes={n}-"))]).await;
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&past, "content-range"), format!("bytes */{n}"));
    let body: Value = past.json().await.unwrap();
    assert_eq!(body["code"], "range_not_satisfiable", "{body}");
    // Several ranges are answered whole.
    let several = get(&host, &id, &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(several.status(), StatusCode::OK);

    // The ETag never goes stale.
    let etag = format!("\"{id}\"");
    for tag in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"x\", {etag}"),
        "*".into(),
    ] {
        let cached = get(&host, &id, &[("if-none-match", &tag)]).await;
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED, "{tag}");
        assert!(cached.bytes().await.unwrap().is_empty());
    }
    let other = get(&host, &id, &[("if-none-match", "\"blake3:00\"")]).await;
    assert_eq!(other.status(), StatusCode::OK);

    // HEAD: the headers alone.
    let head = reqwest::Client::new()
        .head(host.url(&format!("/api/v1/blobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length"), n.to_string());
}

/// The peak resident memory of a process so far, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

#[tokio::test]
async fn a_100_mb_blob_goes_in_and_out_without_100_mb_of_host_memory() {
    // On a folder, so that the store itself holds nothing in memory.
    let plugins = plugins_dir(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&format!(
        "blobs:\n  backend: files\n  dir: {}\n  max_bytes: 200000000\n",
        dir.path().display()
    ));
    let host = Host::start(&[
        ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ("FLOWHOST_CONFIG", config.path().to_str().unwrap()),
    ])
    .unwrap();
    let before = peak_rss(host.pid());
    let data = bytes(100_000_000, 7);
    let (status, reference) = upload(&host, "application/octet-stream", data.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{reference}");
    let mut read = get(&host, &id_of(&data), &[]).await;
    let mut received = 0;
    while let Some(piece) = read.chunk().await.unwrap() {
        assert!(
            piece == data[received..received + piece.len()],
            "at {received}"
        );
        received += piece.len();
    }
    assert_eq!(received, data.len());
    let grown = peak_rss(host.pid()).saturating_sub(before);
    assert!(
        grown < 40_000_000,
        "the host's peak memory grew by {grown} bytes for a 100 MB blob"
    );
}

#[tokio::test]
async fn ids_are_checked_and_missing_blobs_are_404() {
    let (host, _keep) = host(None);
    let bad = get(&host, "blake3:XYZ", &[]).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["code"], "bad_blob_id", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("64 lowercase hex"),
        "{body}"
    );
    let missing = get(&host, &id_of(b"never stored"), &[]).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "blob_not_found", "{body}");
    // An empty blob is a blob; a range of it is not.
    let (status, empty) = upload(&host, "text/plain", Vec::new()).await;
    assert_eq!(
        (status, empty["size"].as_u64()),
        (StatusCode::CREATED, Some(0))
    );
    let id = empty["$blob"].as_str().unwrap();
    assert_eq!(status_of(&host, id).await, StatusCode::OK);
    let range = get(&host, id, &[("range", "bytes=0-")]).await;
    assert_eq!(range.status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

/// Writes `request` on a new connection and reads the answer's status and
/// body (`Connection: close` expected).
fn raw(port: u16, parts: &[&[u8]]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    for part in parts {
        // The server may answer and close before it has read everything.
        if stream.write_all(part).is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// `data` in HTTP/1.1 chunked transfer coding, 64 KiB a chunk.
fn chunked(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in data.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test]
async fn an_upload_over_blobs_max_bytes_is_413_and_stores_nothing() {
    let (host, _keep) = host(None);
    let data = bytes(MAX + 1, 2);
    // Announced by its length: refused before it is read.
    let (status, body) = upload(&host, "application/octet-stream", data.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["code"], "blob_too_large", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("blobs.max_bytes"),
        "{body}"
    );

    // Chunked, so the size shows only while it streams: aborted then.
    let head = b"POST /api/v1/blobs HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\
                 connection: close\r\n\r\n";
    let (status, body) = raw(host.port, &[head, &chunked(&data)]);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("blob_too_large"), "{body}");
    eventually("the upload aborted", Duration::from_secs(10), || {
        host.log().contains("blob upload aborted").then_some(())
    });
    assert_eq!(status_of(&host, &id_of(&data)).await, StatusCode::NOT_FOUND);
    assert_eq!(
        status_of(&host, &id_of(&data[..MAX])).await,
        StatusCode::NOT_FOUND
    );

    // Other routes keep limits.max_request_bytes, a JSON execute too.
    let head = b"POST /api/v1/see/execute HTTP/1.1\r\nhost: x\r\ncontent-length: 70000\r\n\
                 connection: close\r\n\r\n";
    let (status, body) = raw(host.port, &[head]);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
}

#[tokio::test]
async fn an_upload_cut_off_halfway_leaves_no_blob() {
    let (host, _keep) = host(None);
    let data = bytes(1 << 20, 3);
    let half = &data[..data.len() / 2];
    {
        let mut stream = TcpStream::connect(("127.0.0.1", host.port)).unwrap();
        let head = format!(
            "POST /api/v1/blobs HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\n\
             content-length: {}\r\n\r\n",
            data.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(half).unwrap();
        stream.flush().unwrap();
        // Dropped here: the connection closes halfway through the body.
    }
    eventually("the upload aborted", Duration::from_secs(10), || {
        host.log().contains("blob upload aborted").then_some(())
    });
    assert_eq!(status_of(&host, &id_of(&data)).await, StatusCode::NOT_FOUND);
    assert_eq!(status_of(&host, &id_of(half)).await, StatusCode::NOT_FOUND);
    // The host is fine: the whole upload, sent again, is stored.
    let (status, reference) = upload(&host, "image/png", data.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(reference["$blob"], id_of(&data));
}

async fn delete(host: &Host, id: &str) -> (StatusCode, String) {
    let resp = reqwest::Client::new()
        .delete(host.url(&format!("/api/v1/blobs/{id}")))
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test]
async fn a_blob_nothing_holds_is_deleted() {
    let (host, _keep) = host(None);
    let (_, reference) = upload(&host, "text/plain", b"short lived".to_vec()).await;
    let id = reference["$blob"].as_str().unwrap();
    assert_eq!(delete(&host, id).await.0, StatusCode::NO_CONTENT);
    assert_eq!(status_of(&host, id).await, StatusCode::NOT_FOUND);
    let (status, body) = delete(&host, id).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("blob_not_found"), "{body}");
    assert_eq!(delete(&host, "nope").await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_blob_a_run_holds_is_not_deleted() {
    let redis = RedisServer::start().unwrap();
    let (host, _keep) = host(Some(&redis));
    let (_, image) = upload(&host, "image/png", b"\x89PNG held by a run".to_vec()).await;
    let run: Value = reqwest::Client::new()
        .post(host.url("/api/v1/see/execute"))
        .json(&json!({"inputs": {"image": image, "note": "keep it"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["status"], "completed", "{run}");
    let id = image["$blob"].as_str().unwrap();
    let (status, body) = delete(&host, id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "blob_held", "{body}");
    let holder = format!("flow:{}", run["flow_id"].as_str().unwrap());
    assert!(body["error"].as_str().unwrap().contains(&holder), "{body}");
    assert_eq!(status_of(&host, id).await, StatusCode::OK);
}

/// One part of a form: name, file name, content type, bytes.
type Part<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

/// A `multipart/form-data` body: its Content-Type and its bytes.
fn form(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = "----flowhost-test-boundary-7MA4YWxk";
    let mut body = Vec::new();
    for (name, file, media_type, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{name}\"");
        if let Some(file) = file {
            disposition.push_str(&format!("; filename=\"{file}\""));
        }
        body.extend_from_slice(format!("{disposition}\r\n").as_bytes());
        if let Some(t) = media_type {
            body.extend_from_slice(format!("Content-Type: {t}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn post_form(host: &Host, path: &str, form: (String, Vec<u8>)) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(host.url(path))
        .header("content-type", form.0)
        .body(form.1)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn a_form_execute_gives_its_files_to_the_flow_as_references() {
    let (host, _keep) = host(None);
    let scan = bytes(700_000, 4);
    let (status, run) = post_form(
        &host,
        "/api/v1/see/execute",
        form(&[
            ("image", Some("scan.png"), Some("image/png"), &scan),
            ("note", None, None, b"a \"quoted\" note"),
            ("n", None, Some("application/json"), b"3"),
            ("inputs", None, None, br#"{"extra": [1, 2]}"#),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["status"], "completed", "{run}");
    let image = &run["outputs"]["image"];
    assert_eq!(image["$blob"], id_of(&scan), "{run}");
    assert_eq!(image["media_type"], "image/png", "{run}");
    assert_eq!(run["outputs"]["note"], "a \"quoted\" note", "{run}");
    let stored = get(&host, &id_of(&scan), &[]).await;
    assert!(stored.bytes().await.unwrap() == scan);

    // The Idempotency-Key works as with a JSON body.
    let keyed = || async {
        let (content_type, body) = form(&[
            ("image", Some("scan.png"), Some("image/png"), &scan),
            ("note", None, None, b"once"),
        ]);
        let resp = reqwest::Client::new()
            .post(host.url("/api/v1/see/execute"))
            .header("content-type", content_type)
            .header("idempotency-key", "form-once")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json::<Value>().await.unwrap()["flow_id"].clone()
    };
    assert_eq!(keyed().await, keyed().await);

    // execute-async takes the same form; an unnamed type is guessed.
    let (status, submitted) = post_form(
        &host,
        "/api/v1/see/execute-async",
        form(&[
            ("image", Some("page.pdf"), None, b"%PDF-1.7"),
            ("note", None, None, b"x"),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    let status_url = submitted["status_url"].as_str().unwrap().to_owned();
    let done = eventually("the async run", Duration::from_secs(20), || {
        let text = flowhost_tests::http_get(host.port, &status_url, None)?;
        let run: Value = serde_json::from_str(&text).ok()?;
        (run["status"] == "completed").then_some(run)
    });
    assert_eq!(
        done["outputs"]["image"]["media_type"], "application/pdf",
        "{done}"
    );

    // An input given twice, a file over the limit, a part without a name.
    let (status, body) = post_form(
        &host,
        "/api/v1/see/execute",
        form(&[
            ("note", None, None, b"a"),
            ("inputs", None, None, br#"{"note": "b"}"#),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("given twice"),
        "{body}"
    );
    let big = bytes(MAX + 10, 5);
    let (status, body) = post_form(
        &host,
        "/api/v1/see/execute",
        form(&[
            ("image", Some("big.bin"), None, &big),
            ("note", None, None, b"x"),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // Sent chunked, the form is cut while its file streams to the store.
    let (content_type, body) = form(&[
        ("note", None, None, b"x"),
        ("image", Some("big.bin"), None, &big),
    ]);
    let head = format!(
        "POST /api/v1/see/execute HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let (status, answer) = raw(host.port, &[head.as_bytes(), &chunked(&body)]);
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("blob_too_large"), "{answer}");
    assert_eq!(status_of(&host, &id_of(&big)).await, StatusCode::NOT_FOUND);
    assert_eq!(
        status_of(&host, &id_of(&big[..MAX])).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_form_upload_stores_every_part() {
    let (host, _keep) = host(None);
    let (status, refs) = post_form(
        &host,
        "/api/v1/blobs",
        form(&[
            ("a", Some("one.jpg"), None, b"\xff\xd8 first"),
            ("b", Some("two.bin"), Some("audio/wav"), b"RIFF second"),
            ("c", None, None, b"third, as text"),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{refs}");
    let types: Vec<&str> = refs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["media_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["image/jpeg", "audio/wav", "text/plain"]);
    assert_eq!(refs[2]["$blob"], id_of(b"third, as text"));
    let third = get(&host, refs[2]["$blob"].as_str().unwrap(), &[]).await;
    assert_eq!(third.text().await.unwrap(), "third, as text");
}

#[test]
fn run_takes_files_as_blob_inputs() {
    let plugins = plugins_dir(&["echo"]);
    let flows = flows_dir(&[("see", SEE)]);
    let dir = tempfile::tempdir().unwrap();
    let scan = bytes(600_000, 6);
    let path = dir.path().join("scan.JPG");
    std::fs::write(&path, &scan).unwrap();
    let run = |args: &[&str]| {
        flowhost_command()
            .args(args)
            .env("FLOWHOST_PLUGINS_DIR", plugins.path())
            .env("FLOWHOST_FLOWS_DIR", flows.path())
            .output()
            .unwrap()
    };
    let file_arg = format!("image={}", path.display());
    let out = run(&[
        "run",
        "see",
        "--input",
        r#"{"note": "n"}"#,
        "--input-file",
        &file_arg,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: Value = serde_json::from_slice(&out.stdout).unwrap();
    let image = &state["outputs"]["image"];
    assert_eq!(
        (&image["$blob"], &image["size"], &image["media_type"]),
        (
            &json!(id_of(&scan)),
            &json!(scan.len()),
            &json!("image/jpeg")
        ),
        "{state}"
    );

    for (args, says) in [
        (vec!["--input-file", "image"], "expected NAME=PATH"),
        (
            vec!["--input-file", "image=/no/such/file"],
            "cannot read /no/such/file",
        ),
        (
            vec!["--input", r#"{"image": 1}"#, "--input-file", &file_arg],
            "given twice",
        ),
    ] {
        let mut all = vec!["run", "see"];
        all.extend(args);
        let out = run(&all);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[tokio::test]
async fn the_document_lists_the_blob_routes_and_the_execute_form() {
    let (host, _keep) = host(None);
    let doc: Value = reqwest::get(host.url("/api/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = &doc["paths"];
    assert!(paths["/api/v1/blobs"]["post"].is_object(), "{paths}");
    assert!(paths["/api/v1/blobs/{id}"]["get"].is_object());
    assert!(paths["/api/v1/blobs/{id}"]["delete"].is_object());
    let execute = &paths["/api/v1/{flow}/execute"]["post"]["requestBody"]["content"];
    assert!(execute["multipart/form-data"].is_object(), "{execute}");
    assert!(execute["application/json"].is_object(), "{execute}");
}
