//! Item 8 of the benchmark suite: blobs. A 5 MB image read by three steps,
//! by reference against inlined as base64 (what Redis receives for the
//! flow's state, and the execute time); a 100 MB upload's throughput and the
//! host's resident memory while it streams; Redis memory for 1,000 finished
//! `document_analysis` runs with state compression on and off.

use std::time::{Duration, Instant};

use flowhost_core::runner::FlowContext;
use flowhost_core::state::FlowStatus;
use flowhost_tests::{
    EXECUTORS, Host, RedisServer, config_file, flows_dir, plugins_dir, repo_root,
};
use serde_json::{Map, Value, json};

use crate::{Result, Table, build_app_with, redis_counters, serve, summary};

/// Words to make text that compresses like prose, not like a repeated line.
const WORDS: &[&str] = &[
    "the",
    "document",
    "analysis",
    "of",
    "scanned",
    "pages",
    "shows",
    "that",
    "model",
    "inference",
    "costs",
    "time",
    "and",
    "memory",
    "while",
    "results",
    "are",
    "cached",
    "by",
    "content",
    "hash",
    "so",
    "a",
    "second",
    "run",
    "returns",
    "quickly",
    "invoice",
    "total",
    "amount",
    "due",
    "customer",
    "account",
    "number",
    "date",
    "signature",
    "contract",
    "terms",
    "delivery",
    "shipment",
    "warehouse",
    "order",
    "quantity",
    "price",
    "tax",
    "payment",
    "received",
    "report",
    "quarterly",
    "revenue",
    "growth",
    "market",
    "share",
    "risk",
    "audit",
];

/// About `bytes` of prose-like text, different for every `seed`.
fn prose(bytes: usize, seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = String::with_capacity(bytes + 16);
    let mut in_sentence = 0;
    while out.len() < bytes {
        let w = WORDS[rng.usize(..WORDS.len())];
        if in_sentence == 0 {
            let mut c = w.chars();
            out.extend(c.next().map(|f| f.to_ascii_uppercase()));
            out.push_str(c.as_str());
        } else {
            out.push_str(w);
        }
        in_sentence += 1;
        if in_sentence > 8 + rng.usize(..10) {
            out.push_str(". ");
            in_sentence = 0;
        } else {
            out.push(' ');
        }
    }
    out
}

fn used_memory(conn: &mut redis::Connection) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query(conn)?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .ok_or_else(|| anyhow::anyhow!("no used_memory"))?
        .trim()
        .parse()?)
}

/// 8c. Redis memory for 1,000 finished `document_analysis` runs of about
/// 6 KB of text each, state compression on (the default) and off.
pub async fn compression(t: &mut Table) -> Result<()> {
    let plugins = plugins_dir(&EXECUTORS);
    let yaml = std::fs::read_to_string(repo_root().join("flows/document_analysis.yaml"))?;
    let flows = flows_dir(&[("document_analysis", &yaml)]);
    let runs = 1_000u64;
    let mut used = Vec::new();
    for compress_min_bytes in [4096usize, 0] {
        let redis = RedisServer::start()?;
        let app = build_app_with(Some(&redis), plugins.path(), flows.path(), |c| {
            c.state.compress_min_bytes = compress_min_bytes;
        })
        .await?;
        let def = app.flows.get("document_analysis").unwrap().clone();
        let mut conn = redis.connection();
        let before = used_memory(&mut conn)?;
        for i in 0..runs {
            let mut inputs = Map::new();
            inputs.insert("text".into(), prose(6_000, i).into());
            let s = app
                .runner
                .execute(def.clone(), inputs, FlowContext::new())
                .await?;
            anyhow::ensure!(s.status == FlowStatus::Completed, "{:?}", s.error);
        }
        let grown = used_memory(&mut conn)? - before;
        let label = if compress_min_bytes > 0 {
            "on (values over 4 KiB)"
        } else {
            "off"
        };
        t.row(
            format!("8c. Redis memory, {runs} document_analysis runs, zstd {label}"),
            format!(
                "{:.1} MiB ({:.1} KiB per run)",
                grown as f64 / 1048576.0,
                grown as f64 / 1024.0 / runs as f64
            ),
        );
        used.push(grown);
        app.runner.shutdown(Duration::ZERO).await;
    }
    t.row(
        "8c. Redis memory, compression off / on",
        format!("{:.2}×", used[1] as f64 / used[0] as f64),
    );
    Ok(())
}

fn vm_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// 8b. One 100 MB `POST /api/v1/blobs` to the real binary (files backend,
/// then Redis): throughput, and the host's resident memory sampled every
/// 5 ms while it streams, against its level before.
pub async fn upload(t: &mut Table) -> Result<()> {
    const SIZE: usize = 100 * 1024 * 1024;
    let redis = RedisServer::start()?;
    let blobs_dir = tempfile::tempdir()?;
    let backends = [
        (
            "files",
            format!(
                "blobs:\n  backend: files\n  dir: {}\n",
                blobs_dir.path().display()
            ),
        ),
        (
            "redis",
            format!("redis:\n  url: {}\nblobs:\n  backend: redis\n", redis.url()),
        ),
    ];
    for (name, yaml) in backends {
        let config = config_file(&yaml);
        let plugins = plugins_dir(&[]);
        let host = Host::start(&[
            ("FLOWHOST_CONFIG", config.path().to_str().unwrap()),
            ("FLOWHOST_PLUGINS_DIR", plugins.path().to_str().unwrap()),
        ])?;
        let pid = host.pid();
        let before = vm_rss(pid);
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
        let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let (peak, sampling) = (peak.clone(), sampling.clone());
            std::thread::spawn(move || {
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    peak.fetch_max(vm_rss(pid), std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        // The body is generated as it is sent: the client holds 1 MiB at a time.
        let chunk = bytes::Bytes::from(vec![7u8; 1024 * 1024]);
        let body = futures_util::stream::iter(
            (0..SIZE / chunk.len()).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
        );
        let clock = Instant::now();
        let answer: Value = reqwest::Client::new()
            .post(host.url("/api/v1/blobs"))
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let took = clock.elapsed();
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        sampler.join().ok();
        anyhow::ensure!(answer["size"] == json!(SIZE), "{answer}");
        let grown = peak
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(before);
        t.row(
            format!("8b. 100 MB upload, {name} backend"),
            format!(
                "{:.0} MB/s; host RSS +{:.1} MiB over {:.0} MiB before (target < 32 MiB)",
                SIZE as f64 / 1e6 / took.as_secs_f64(),
                grown as f64 / 1048576.0,
                before as f64 / 1048576.0
            ),
        );
    }
    Ok(())
}

/// A flow of three steps that each read the `image` input whole.
fn three_readers(name: &str) -> String {
    let mut f = format!("name: {name}\ninputs:\n  image: {{}}\nsteps:\n");
    for i in 0..3 {
        f.push_str(&format!(
            "  - {{name: read{i}, plugin: blobs, input: {{image: '${{inputs.image}}'}}, config: {{mode: digest}}, cache: false}}\n"
        ));
    }
    f
}

/// 8a. A 5 MB image read by three steps: by reference (blob stored once,
/// then each run) against inlined as base64 with offloading and compression
/// off (what every input was before blobs); bytes Redis receives per run
/// and execute time, interleaved.
pub async fn image(t: &mut Table) -> Result<()> {
    let plugins = plugins_dir(&["blobs"]);
    let flows = flows_dir(&[("look", &three_readers("look"))]);
    let (by_ref_redis, inline_redis) = (RedisServer::start()?, RedisServer::start()?);
    let by_ref = build_app_with(Some(&by_ref_redis), plugins.path(), flows.path(), |_| {}).await?;
    let inline = build_app_with(Some(&inline_redis), plugins.path(), flows.path(), |c| {
        c.state.inline_max_bytes = usize::MAX;
        c.state.compress_min_bytes = 0;
    })
    .await?;
    let (ref_url, inline_url) = (serve(&by_ref).await?, serve(&inline).await?);
    let image: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let client = reqwest::Client::new();
    let reference: Value = client
        .post(format!("{ref_url}/api/v1/blobs"))
        .header("content-type", "image/png")
        .body(image.clone())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image);
    let bodies = [
        (
            ref_url,
            json!({"inputs": {"image": reference}}).to_string(),
            &by_ref_redis,
        ),
        (
            inline_url,
            json!({"inputs": {"image": {"base64": b64, "media_type": "image/png"}}}).to_string(),
            &inline_redis,
        ),
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(), Vec::new()];
    let mut bytes = [0f64; 2];
    let (warm, kept) = (2, 15);
    for round in 0..warm + kept {
        for (i, (url, body, redis)) in bodies.iter().enumerate() {
            let mut conn = redis.connection();
            let (_, b0) = redis_counters(&mut conn)?;
            let clock = Instant::now();
            let run: Value = client
                .post(format!("{url}/api/v1/look/execute"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await?
                .json()
                .await?;
            let took = clock.elapsed();
            anyhow::ensure!(run["status"] == "completed", "{run}");
            let (_, b1) = redis_counters(&mut conn)?;
            if round >= warm {
                samples[i].push(took);
                bytes[i] += (b1 - b0) as f64 / kept as f64;
            }
        }
    }
    let (ref_p50, _) = summary(samples[0].clone());
    let (inline_p50, _) = summary(samples[1].clone());
    t.row(
        "8a. 5 MB image, 3 steps: Redis bytes per run, by reference",
        format!(
            "{:.1} KiB (target < 16 KiB; the blob stored once before)",
            bytes[0] / 1024.0
        ),
    );
    t.row(
        "8a. 5 MB image, 3 steps: Redis bytes per run, inline base64",
        format!("{:.1} MiB", bytes[1] / 1048576.0),
    );
    t.row(
        "8a. 5 MB image, 3 steps: execute p50, by reference / inline",
        format!(
            "{:.1} ms / {:.1} ms ({:.2}×)",
            ref_p50 / 1e3,
            inline_p50 / 1e3,
            inline_p50 / ref_p50
        ),
    );
    Ok(())
}
