//! Retry backoff on paused time: the runner, in process, with the real chaos
//! plugin; tokio's clock is paused, so the delays are checked exactly and the
//! test takes no wall time waiting.

use std::sync::Arc;

use flowhost::App;
use flowhost::config::{Config, Overrides};
use flowhost_core::runner::FlowContext;
use flowhost_core::state::{FlowStatus, StepStatus};
use flowhost_tests::{flows_dir, plugins_dir};
use serde_json::Map;

async fn app_with(flow: &str) -> (Arc<App>, tempfile::TempDir, tempfile::TempDir) {
    let plugins = plugins_dir(&["chaos"]);
    let flows = flows_dir(&[("f", flow)]);
    let overrides = Overrides {
        plugins_dir: Some(plugins.path().to_owned()),
        flows_dir: Some(flows.path().to_owned()),
        redis_url: Some(String::new()),
        ..Overrides::default()
    };
    let config = Config::load(
        Some(&flowhost_tests::repo_root().join("config.yaml")),
        &overrides,
    )
    .unwrap();
    (App::build(config).await.unwrap(), plugins, flows)
}

#[tokio::test(start_paused = true)]
async fn retries_wait_the_backoff_schedule() {
    let flow = "name: f
steps:
  - name: s
    plugin: chaos
    config: {mode: retryable, fail_times: 3}
    retry: {max_attempts: 4, initial_delay_ms: 10000, factor: 2, max_delay_ms: 30000, jitter: 0}
";
    let (app, _p, _f) = app_with(flow).await;
    let def = app.flows.get("f").unwrap().clone();
    let start = tokio::time::Instant::now();
    let state = app
        .runner
        .execute(def, Map::new(), FlowContext::new())
        .await
        .unwrap();
    let waited = start.elapsed();
    assert_eq!(state.status, FlowStatus::Completed, "{state:?}");
    let s = &state.steps["s"];
    assert_eq!(s.attempt, 4);
    assert_eq!(s.outputs.as_ref().unwrap()["attempt"], 4);
    // 10 s, 20 s, then 40 s capped at 30 s.
    assert!(
        waited.as_secs_f64() >= 60.0 && waited.as_secs_f64() < 61.0,
        "waited {waited:?}"
    );
    let metrics = app.metrics.render();
    assert!(
        metrics.contains(r#"flowhost_step_retries_total{flow="f",step="s",plugin="chaos"} 3"#),
        "{metrics}"
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_input_is_never_retried_and_attempts_run_out() {
    let flow = "name: f
steps:
  - name: bad
    plugin: chaos
    config: {mode: invalid}
    retry: {max_attempts: 5, initial_delay_ms: 1000, jitter: 0}
  - name: flaky
    plugin: chaos
    config: {mode: retryable, fail_times: 10}
    retry: {max_attempts: 3, initial_delay_ms: 1000, factor: 1, jitter: 0}
";
    let (app, _p, _f) = app_with(flow).await;
    let def = app.flows.get("f").unwrap().clone();
    let start = tokio::time::Instant::now();
    let state = app
        .runner
        .execute(def, Map::new(), FlowContext::new())
        .await
        .unwrap();
    assert_eq!(state.status, FlowStatus::Failed);
    let bad = &state.steps["bad"];
    assert_eq!((bad.status, bad.attempt), (StepStatus::Failed, 1));
    assert_eq!(
        bad.error.as_deref(),
        Some("invalid input: chaos: invalid on purpose")
    );
    let flaky = &state.steps["flaky"];
    assert_eq!((flaky.status, flaky.attempt), (StepStatus::Failed, 3));
    assert_eq!(
        flaky.error.as_deref(),
        Some("failed (retryable): chaos: attempt 3 of 10 fails")
    );
    // Two backoffs of 1 s for flaky; bad waited none.
    let waited = start.elapsed().as_secs_f64();
    assert!((2.0..2.5).contains(&waited), "waited {waited}");
}
