//! The `flowhost` command line: `run` prints the result and tells success by
//! its exit code; `flows validate` names file and step of every problem;
//! configuration comes from the file, the environment and flags.

use flowhost_tests::{DOCUMENT, EXECUTORS, flowhost_command, plugins_dir};
use serde_json::Value;

#[test]
fn run_prints_the_result_and_exits_0_on_success() {
    let plugins = plugins_dir(&EXECUTORS);
    let input = serde_json::json!({ "text": DOCUMENT }).to_string();
    let out = flowhost_command()
        .args(["run", "document_analysis", "--input", &input])
        .env("FLOWHOST_PLUGINS_DIR", plugins.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "completed");
    assert_eq!(result["steps"].as_object().unwrap().len(), 4);
    assert!(
        result["outputs"]["summary"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
}

#[test]
fn run_exits_1_when_the_flow_fails_and_2_on_bad_usage() {
    let plugins = plugins_dir(&EXECUTORS);
    // A text-normalize config of the wrong type makes the first step fail.
    let flows = tempfile::tempdir().unwrap();
    std::fs::write(
        flows.path().join("bad_config.yaml"),
        "name: bad_config\ninputs:\n  text: {type: string}\nsteps:\n  - name: n\n    plugin: text-normalize\n    input: {text: '${inputs.text}'}\n    config: {lowercase: 'yes'}\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        flowhost_command()
            .args(args)
            .env("FLOWHOST_PLUGINS_DIR", plugins.path())
            .env("FLOWHOST_FLOWS_DIR", flows.path())
            .output()
            .unwrap()
    };
    let out = run(&["run", "bad_config", "--input", r#"{"text": "x"}"#]);
    assert_eq!(out.status.code(), Some(1));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "failed");
    assert!(
        result["error"].as_str().unwrap().contains("invalid input"),
        "{result}"
    );

    let out = run(&["run", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no flow named `nope`; loaded flows: [bad_config]")
    );
    let out = run(&["run", "bad_config", "--input", "[1]"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--input must be a JSON object"));
    let out = run(&["run", "bad_config", "--input", "{}"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing required input `text`"));
}

#[test]
fn flows_validate_names_the_file_and_step_of_each_problem() {
    let plugins = plugins_dir(&EXECUTORS);
    let ok = flowhost_command()
        .args(["flows", "validate"])
        .env("FLOWHOST_PLUGINS_DIR", plugins.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok     document_analysis (4 steps)"),
        "{stdout}"
    );

    let flows = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(flows.path().join(name), text).unwrap();
    write(
        "unknown_plugin.yaml",
        "name: a\nsteps:\n  - name: s\n    plugin: ocr\n",
    );
    write(
        "missing_ref.yaml",
        "name: b\nsteps:\n  - name: s\n    plugin: keywords\n    input: {text: '${steps.gone.output.text}'}\n",
    );
    write(
        "duplicate.yaml",
        "name: c\nsteps:\n  - name: s\n    plugin: keywords\n  - name: s\n    plugin: keywords\n",
    );
    write(
        "cycle.yaml",
        "name: d\nsteps:\n  - name: x\n    plugin: keywords\n    depends_on: [y]\n  - name: y\n    plugin: keywords\n    depends_on: [x]\n",
    );
    write(
        "missing_input.yaml",
        "name: e\nsteps:\n  - name: s\n    plugin: keywords\n    input: {text: '${inputs.body}'}\n",
    );
    write(
        "good.yaml",
        "name: f\nsteps:\n  - name: s\n    plugin: keywords\n",
    );
    let out = flowhost_command()
        .args(["flows", "validate"])
        .env("FLOWHOST_PLUGINS_DIR", plugins.path())
        .env("FLOWHOST_FLOWS_DIR", flows.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = flows.path().display();
    for line in [
        format!("ok     f (1 steps) {dir}/good.yaml"),
        format!(
            "error  {dir}/unknown_plugin.yaml: step `s`: unknown plugin `ocr`: no ocr.wasm in the plugins folder"
        ),
        format!(
            "error  {dir}/missing_ref.yaml: step `s`: input refers to ${{steps.gone.output.text}}, but there is no step `gone`"
        ),
        format!("error  {dir}/duplicate.yaml: step `s`: duplicate step name"),
        format!("error  {dir}/cycle.yaml: step `x`: steps form a cycle: x → y → x"),
        format!(
            "error  {dir}/missing_input.yaml: step `s`: input refers to ${{inputs.body}}, but the flow declares no input `body`"
        ),
    ] {
        assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
    }
}

#[test]
fn flags_override_the_environment_which_overrides_the_file() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "plugins_dir: /nonexistent/from-file\n").unwrap();
    let listing = |extra: &[&str], env_dir: Option<&str>| {
        let mut cmd = flowhost_command();
        cmd.env("FLOWHOST_CONFIG", config.path())
            .arg("plugins")
            .args(extra);
        if let Some(d) = env_dir {
            cmd.env("FLOWHOST_PLUGINS_DIR", d);
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    };
    assert!(listing(&[], None).contains("plugins folder: /nonexistent/from-file"));
    assert!(listing(&[], Some("/from/env")).contains("plugins folder: /from/env"));
    assert!(
        listing(&["--plugins-dir", "/from/flag"], Some("/from/env"))
            .contains("plugins folder: /from/flag")
    );

    let out = flowhost_command()
        .args(["plugins"])
        .env("FLOWHOST_REDIS_URL", "localhost:6379")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("redis.url \"localhost:6379\" must start with redis://")
    );
}
