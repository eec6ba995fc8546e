//! The runner's tests: store outages: no step starts whose start could not be recorded.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_flow_is_held_while_the_store_is_down_and_goes_on_when_it_returns() {
    use StepStatus::{Completed, Running};
    let gate = Gate::new();
    let exec = chain_plugins();
    exec.set("upper", gated(&gate, upper));
    let h = Harness::new(exec, &[CHAIN]);
    let (id, run) = h.spawn_run("chain", json!({"text": "hold"}));
    h.exec.wait_calls("upper", 1).await;

    // `a` ends while the store is down: its end and `b`'s start cannot be
    // recorded, so `b` does not start.
    h.store.set_outage(true);
    gate.open();
    h.store.wait_unavailable(4).await;
    assert_eq!(
        h.exec.calls("exclaim"),
        0,
        "step b started although its start was not recorded"
    );
    let held = h.stored(id).await;
    assert_eq!(held.steps["a"].status, Running);
    assert_eq!(held.steps["b"].status, StepStatus::Pending);

    h.store.set_outage(false);
    let end = within("the run", run).await.unwrap().unwrap();
    assert_eq!(end.status, FlowStatus::Completed);
    assert_eq!(end.outputs, Some(json!({"text": "HOLD!", "length": 5})));
    assert_eq!(
        (
            h.exec.calls("upper"),
            h.exec.calls("exclaim"),
            h.exec.calls("count")
        ),
        (1, 1, 1)
    );
    assert_eq!(h.stored(id).await, end);
    assert_eq!(
        h.store.history(id),
        rows(&[
            ("a", Running, 1),
            ("a", Completed, 1),
            ("b", Running, 1),
            ("b", Completed, 1),
            ("c", Running, 1),
            ("c", Completed, 1),
        ])
    );
    assert!(h.events.count("StateWriteFailed") >= 4);
    assert_eq!(h.events.count("LeaseLost"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_flow_the_store_cannot_take_past_the_hold_limit_stops_here_unrecorded() {
    let gate = Gate::new();
    let exec = chain_plugins();
    exec.set("upper", gated(&gate, upper));
    let h = Harness::new(exec, &[CHAIN]);
    h.runner.set_hold_limit(Duration::from_secs(3));
    let (id, run) = h.spawn_run("chain", json!({"text": "gone"}));
    h.exec.wait_calls("upper", 1).await;
    h.store.set_outage(true);
    let held_at = Instant::now();
    gate.open();

    let end = within("the run", run).await.unwrap();
    let held = held_at.elapsed();
    assert!(
        matches!(&end, Err(RunError::Store(StoreError::Unavailable(_)))),
        "{end:?}"
    );
    assert!(held >= Duration::from_secs(3), "held only {held:?}");
    assert_eq!(h.exec.calls("exclaim"), 0, "nothing more started");
    assert_eq!(h.runner.active_count(), 0);
    assert_eq!(h.events.count("FlowEnded"), 0);
    // It stays as last recorded: running, `a` running, for whichever host
    // takes it over; it is not recorded failed anywhere.
    h.store.set_outage(false);
    let stored = h.stored(id).await;
    assert_eq!(stored.status, FlowStatus::Running);
    assert_eq!(stored.steps["a"].status, StepStatus::Running);
    assert_eq!(stored.steps["b"].status, StepStatus::Pending);

    // Taken over once the store is back: `a`, whose end was never recorded,
    // runs again; the rest once.
    let resumed = within("the resume", h.runner.resume_flow(id))
        .await
        .unwrap();
    assert_eq!(resumed.status, FlowStatus::Completed);
    assert_eq!(
        (
            h.exec.calls("upper"),
            h.exec.calls("exclaim"),
            h.exec.calls("count")
        ),
        (2, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_whose_start_cannot_be_recorded_waits_for_the_store() {
    use StepStatus::{Completed, Failed, Running};
    const FLAKY: &str = r#"
name: flaky
steps:
  - name: a
    plugin: flaky
    retry: {max_attempts: 3, initial_delay_ms: 10}
"#;
    let gate = Gate::new();
    let held = gate.clone();
    let exec = FakeExecutor::new().with(
        "flaky",
        false,
        script(move |call| {
            let gate = held.clone();
            async move {
                gate.wait().await;
                if call.nth == 1 {
                    Err(PluginError::Retryable("busy".into()))
                } else {
                    Ok(json!({"ok": true}))
                }
            }
        }),
    );
    let h = Harness::new(exec, &[FLAKY]);
    let (id, run) = h.spawn_run("flaky", json!({}));
    h.exec.wait_calls("flaky", 1).await;
    h.store.set_outage(true);
    gate.open();
    h.store.wait_unavailable(4).await;
    assert_eq!(h.exec.calls("flaky"), 1, "a retry started unrecorded");

    h.store.set_outage(false);
    let end = within("the run", run).await.unwrap().unwrap();
    assert_eq!(end.status, FlowStatus::Completed);
    assert_eq!(h.exec.calls("flaky"), 2);
    assert_eq!(
        h.store.history(id),
        rows(&[
            ("a", Running, 1),
            ("a", Failed, 1),
            ("a", Running, 2),
            ("a", Completed, 2),
        ])
    );
}
