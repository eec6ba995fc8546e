//! The plugins folder: real components load; a file that is not a component,
//! a core module, or a component of another world is skipped with its reason
//! (log, `GET /api/v1/plugins`, `flowhost plugins`) and never stops the host.

use flowhost_tests::{Host, flowhost_command, plugin_wasm, plugins_dir};
use serde_json::Value;

/// A plugins folder with two good plugins and four bad files.
fn mixed_folder() -> tempfile::TempDir {
    let dir = plugins_dir(&["keywords", "text-stats"]);
    let p = dir.path();
    std::fs::write(p.join("notes.wasm"), "this is not WebAssembly").unwrap();
    // The smallest valid core module: a module, not a component.
    std::fs::write(p.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::copy(plugin_wasm("other-world"), p.join("greeter.wasm")).unwrap();
    // A component whose bytes are cut short.
    let bytes = std::fs::read(plugin_wasm("echo")).unwrap();
    std::fs::write(p.join("truncated.wasm"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(p.join("README.txt"), "not a .wasm file, ignored").unwrap();
    dir
}

fn expected_reasons() -> [(&'static str, &'static str); 4] {
    [
        ("core.wasm", "a core WebAssembly module, not a component"),
        (
            "greeter.wasm",
            "does not implement the flowhost:executor world",
        ),
        ("notes.wasm", "not a WebAssembly file"),
        ("truncated.wasm", "invalid component"),
    ]
}

#[tokio::test]
async fn bad_files_are_skipped_with_a_reason_and_the_host_serves() {
    let dir = mixed_folder();
    let host = Host::start(&[("FLOWHOST_PLUGINS_DIR", dir.path().to_str().unwrap())]).unwrap();
    let listing: Value = reqwest::get(host.url("/api/v1/plugins"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded: Vec<&str> = listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(loaded, ["keywords", "text-stats"]);
    let keywords = &listing["plugins"][0];
    assert_eq!(keywords["deterministic"], true);
    assert_eq!(keywords["hash"].as_str().unwrap().len(), 64);
    assert!(keywords["input_schema"].is_object());
    let skipped = listing["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 4, "{listing}");
    for ((file, reason), s) in expected_reasons().iter().zip(skipped) {
        assert!(s["path"].as_str().unwrap().ends_with(file), "{s}");
        assert!(
            s["reason"].as_str().unwrap().contains(reason),
            "{file}: {s}"
        );
    }
    let log = host.log();
    for (file, _) in expected_reasons() {
        assert!(
            log.contains("plugin skipped") && log.contains(file),
            "{file} not in log:\n{log}"
        );
    }
    // document_analysis needs plugins that are not here: it is left out, and
    // says why; the host keeps serving.
    let health: Value = reqwest::get(host.url("/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["plugins"]["skipped"], 4);
    let flows: Value = reqwest::get(host.url("/api/v1/flows"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let errors = flows["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .unwrap()
            .contains("unknown plugin `text-normalize`")),
        "{flows}"
    );
}

#[test]
fn flowhost_plugins_lists_loaded_and_skipped() {
    let dir = mixed_folder();
    let out = flowhost_command()
        .arg("plugins")
        .env("FLOWHOST_PLUGINS_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("loaded   keywords"), "{stdout}");
    assert!(stdout.contains("loaded   text-stats"), "{stdout}");
    for (file, reason) in expected_reasons() {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("skipped") && l.contains(file) && l.contains(reason)),
            "{file}: {stdout}"
        );
    }
}
