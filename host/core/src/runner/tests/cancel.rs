//! The runner's tests: cancel.

use super::*;

#[tokio::test]
async fn cancelling_a_running_flow_stops_its_step_and_starts_nothing_more() {
    const CANCEL: &str = r#"
name: cancel
steps:
  - name: quick
    plugin: upper
    input: {text: "x"}
  - name: wait
    plugin: sleeper
  - name: after
    plugin: count
    depends_on: [wait]
    input:
      text: "${steps.quick.output.text}"
"#;
    let exec = chain_plugins().with("sleeper", false, until_stopped());
    let h = Harness::new(exec, &[CANCEL]);
    let (id, run) = h.spawn_run("cancel", json!({}));
    h.exec.wait_calls("sleeper", 1).await;
    h.events
        .wait_for("StepAttempted { flow: \"cancel\", step: \"quick\"", 1)
        .await;

    let cancelled = within("the cancel", h.runner.cancel_flow(id))
        .await
        .expect("a running flow can be cancelled");
    assert_eq!(cancelled.status, FlowStatus::Cancelled);
    let end = within("the run", run).await.unwrap().unwrap();
    assert_eq!(end.status, FlowStatus::Cancelled);

    let stored = h.stored(id).await;
    assert_eq!(stored, cancelled);
    assert_eq!(stored.status, FlowStatus::Cancelled);
    assert!(stored.completed_at.is_some());
    assert_eq!((&stored.outputs, &stored.error), (&None, &None));
    assert_eq!(stored.steps["quick"].status, StepStatus::Completed);
    let wait = &stored.steps["wait"];
    assert_eq!(wait.status, StepStatus::Cancelled);
    assert_eq!(wait.error.as_deref(), Some("cancelled while running"));
    let after = &stored.steps["after"];
    assert_eq!((after.status, after.attempt), (StepStatus::Pending, 0));
    assert_eq!(h.exec.calls("count"), 0, "no step starts after a cancel");
    assert_eq!(
        h.exec.calls_of_step("wait")[0].result,
        Err("interrupted".into())
    );
    assert_eq!(h.runner.active_count(), 0);
    assert_eq!(
        h.events
            .count("FlowEnded { flow: \"cancel\", status: Cancelled"),
        1
    );

    // Cancelling it again answers it as it is; it cannot be resumed.
    let again = h.runner.cancel_flow(id).await.unwrap();
    assert_eq!(again.status, FlowStatus::Cancelled);
    let resumed = h.runner.resume_flow(id).await;
    assert!(matches!(resumed, Err(RunError::Conflict(_))), "{resumed:?}");
}

#[tokio::test]
async fn cancelling_a_stored_flow_records_it_cancelled() {
    let exec = FakeExecutor::new()
        .with("picky", false, fail(|| PluginError::Failed("no".into())))
        .with("upper", false, compute(upper));
    let h = Harness::new(exec, &[STRICT]);
    let failed = h.run("strict", json!({"text": "x"})).await;
    assert_eq!(failed.status, FlowStatus::Failed);

    let cancelled = h.runner.cancel_flow(failed.flow_id).await.unwrap();
    assert_eq!(cancelled.status, FlowStatus::Cancelled);
    let stored = h.stored(failed.flow_id).await;
    assert_eq!(stored.status, FlowStatus::Cancelled);
    assert_eq!(stored.steps["a"].status, StepStatus::Failed);
    assert!(stored.completed_at >= failed.completed_at);

    h.exec.set("picky", compute(upper));
    let done = h.run("strict", json!({"text": "y"})).await;
    assert_eq!(done.status, FlowStatus::Completed);
    let refused = h.runner.cancel_flow(done.flow_id).await;
    assert!(matches!(refused, Err(RunError::Conflict(_))), "{refused:?}");
    assert_eq!(h.stored(done.flow_id).await.status, FlowStatus::Completed);
    let unknown = h.runner.cancel_flow(FlowId::new()).await;
    assert!(matches!(unknown, Err(RunError::NotFound(_))), "{unknown:?}");
}
