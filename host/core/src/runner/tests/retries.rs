//! The runner's tests: retries.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_retryable_error_is_retried_with_backoff_until_it_succeeds() {
    use StepStatus::{Completed, Failed, Running};
    const FLAKY: &str = r#"
name: flaky
steps:
  - name: a
    plugin: flaky
    input: {n: 1}
    retry: {max_attempts: 3, initial_delay_ms: 100, factor: 2.0, max_delay_ms: 1000, jitter: 0.0}
outputs:
  ok: "${steps.a.output.ok}"
"#;
    let exec = FakeExecutor::new().with(
        "flaky",
        false,
        fail_then(
            2,
            || PluginError::Retryable("busy".into()),
            |_| json!({"ok": true}),
        ),
    );
    let h = Harness::new(exec, &[FLAKY]);
    let end = h.run("flaky", json!({})).await;
    let stored = h.stored(end.flow_id).await;

    assert_eq!(stored.status, FlowStatus::Completed);
    assert_eq!(stored.outputs, Some(json!({"ok": true})));
    let a = &stored.steps["a"];
    assert_eq!((a.status, a.attempt), (Completed, 3));
    assert_eq!((&a.error, &a.error_kind), (&None, &None));
    assert_eq!(a.outputs, Some(json!({"ok": true})));

    let log = h.exec.log();
    assert_eq!(h.exec.calls("flaky"), 3);
    assert_eq!(log.iter().map(|c| c.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(log[0].result, Err("failed (retryable): busy".into()));
    // The backoff: 100 ms after the first failure, 200 ms after the second.
    for (i, ms) in [(1, 100), (2, 200)] {
        let waited = log[i].started - log[i - 1].ended;
        assert!(
            waited >= Duration::from_millis(ms) && waited < Duration::from_millis(ms + 50),
            "waited {waited:?} before attempt {}",
            i + 1
        );
    }
    // Each failed attempt was recorded, then the next one running.
    assert_eq!(
        h.store.history(end.flow_id),
        rows(&[
            ("a", Running, 1),
            ("a", Failed, 1),
            ("a", Running, 2),
            ("a", Failed, 2),
            ("a", Running, 3),
            ("a", Completed, 3),
        ])
    );
    assert_eq!(h.events.count("StepRetried"), 2);
    let outcomes: Vec<bool> = h
        .events
        .matching("StepAttempted")
        .iter()
        .map(|e| e.contains("outcome: \"completed\""))
        .collect();
    assert_eq!(outcomes, [false, false, true]);
}

#[tokio::test(start_paused = true)]
async fn retries_end_at_max_attempts_and_fail_the_flow() {
    use StepStatus::{Failed, Running};
    const HOPELESS: &str = r#"
name: hopeless
steps:
  - name: a
    plugin: busy
    retry: {max_attempts: 2, initial_delay_ms: 50}
"#;
    let exec = FakeExecutor::new().with(
        "busy",
        false,
        fail(|| PluginError::Retryable("busy".into())),
    );
    let h = Harness::new(exec, &[HOPELESS]);
    let end = h.run("hopeless", json!({})).await;
    let stored = h.stored(end.flow_id).await;

    assert_eq!(h.exec.calls("busy"), 2);
    let a = &stored.steps["a"];
    assert_eq!((a.status, a.attempt), (Failed, 2));
    assert_eq!(a.error.as_deref(), Some("failed (retryable): busy"));
    assert_eq!(a.error_kind.as_deref(), Some("retryable"));
    assert_eq!(stored.status, FlowStatus::Failed);
    assert_eq!(
        stored.error.as_deref(),
        Some("step `a` failed: failed (retryable): busy")
    );
    assert_eq!(
        h.store.history(end.flow_id),
        rows(&[
            ("a", Running, 1),
            ("a", Failed, 1),
            ("a", Running, 2),
            ("a", Failed, 2)
        ])
    );
    assert_eq!(h.events.count("StepRetried"), 1);
}

#[tokio::test]
async fn a_non_retryable_error_fails_the_step_and_the_flow_at_once() {
    let exec = FakeExecutor::new()
        .with(
            "picky",
            false,
            fail(|| PluginError::Failed("bad input".into())),
        )
        .with("upper", false, compute(upper));
    let h = Harness::new(exec, &[STRICT]);
    let end = h.run("strict", json!({"text": "x"})).await;
    let stored = h.stored(end.flow_id).await;
    assert_eq!(stored, end);

    assert_eq!(
        h.exec.calls("picky"),
        1,
        "a non-retryable error is not retried"
    );
    assert_eq!(h.exec.calls("upper"), 0, "nothing runs after a failed step");
    let a = &stored.steps["a"];
    assert_eq!((a.status, a.attempt), (StepStatus::Failed, 1));
    assert_eq!(a.error.as_deref(), Some("failed: bad input"));
    assert_eq!(a.error_kind.as_deref(), Some("failed"));
    assert_eq!(a.outputs, None);
    let b = &stored.steps["b"];
    assert_eq!(
        (b.status, b.attempt, b.started_at),
        (StepStatus::Pending, 0, None)
    );
    assert_eq!(stored.status, FlowStatus::Failed);
    assert_eq!(
        stored.error.as_deref(),
        Some("step `a` failed: failed: bad input")
    );
    assert!(stored.completed_at.is_some());
    assert_eq!(stored.outputs, None);
    assert_eq!(h.events.count("StepRetried"), 0);
    assert_eq!(
        h.events
            .count("FlowEnded { flow: \"strict\", status: Failed"),
        1
    );
}

#[tokio::test]
async fn an_input_that_cannot_be_resolved_fails_its_step_without_a_call() {
    const MISSING: &str = r#"
name: missing
steps:
  - name: a
    plugin: upper
    input: {text: "x"}
  - name: b
    plugin: count
    input:
      text: "${steps.a.output.nothing_here}"
"#;
    let h = Harness::new(chain_plugins(), &[MISSING]);
    let end = h.run("missing", json!({})).await;
    let stored = h.stored(end.flow_id).await;
    assert_eq!(stored.status, FlowStatus::Failed);
    assert_eq!(stored.steps["a"].status, StepStatus::Completed);
    let b = &stored.steps["b"];
    assert_eq!(b.status, StepStatus::Failed);
    assert!(
        b.error.as_deref().is_some_and(|e| e.starts_with("input: ")),
        "{b:?}"
    );
    assert!(
        stored
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("step `b` failed: input: ")),
        "{:?}",
        stored.error
    );
    assert_eq!(h.exec.calls("count"), 0);
}

#[tokio::test]
async fn invalid_inputs_are_refused_before_anything_is_recorded() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    let err = h
        .runner
        .execute(h.def("chain"), obj(json!({"txt": 1})), FlowContext::new())
        .await
        .unwrap_err();
    let RunError::InvalidInputs(problems) = err else {
        panic!("expected InvalidInputs, got {err:?}");
    };
    assert_eq!(
        problems,
        [
            "unknown input `txt`: flow `chain` takes [text]",
            "missing required input `text`"
        ]
    );
    let all = ListFilter {
        limit: 10,
        ..ListFilter::default()
    };
    assert!(h.store.list_flows(&all).await.unwrap().is_empty());
    assert!(h.exec.log().is_empty());
}
