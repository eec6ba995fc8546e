//! The runner's tests: fencing.

use super::*;

#[tokio::test]
async fn a_fenced_write_stops_the_flow_and_no_further_step_runs() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    // Created with `a` running, then one write ([a completed, b running]);
    // the next ([b completed, c running]) is refused: another host has the
    // flow now.
    h.store.fence_after(1);
    let end = h.run("chain", json!({"text": "hi"})).await;
    let id = end.flow_id;

    assert_eq!(h.store.refused(), 1, "nothing is written after the refusal");
    assert_eq!(h.events.count("WriteFenced"), 1, "the refusal is reported");
    assert_eq!(h.events.count("LeaseLost"), 1, "the lease is given up");
    assert_ne!(
        end.status,
        FlowStatus::Completed,
        "this host did not finish the flow"
    );
    assert!(h.store.released().contains(&id), "the lost lease is let go");
    assert_eq!(h.runner.active_count(), 0);

    // The store holds the last write it accepted: nothing of this host's
    // since is applied.
    let stored = h.stored(id).await;
    assert_eq!(stored.status, FlowStatus::Running);
    assert_eq!(stored.steps["a"].status, StepStatus::Completed);
    assert_eq!(stored.steps["b"].status, StepStatus::Running);
    assert_eq!(stored.steps["c"].status, StepStatus::Pending);
    assert_eq!((h.exec.calls("upper"), h.exec.calls("exclaim")), (1, 1));
    assert_eq!(
        h.exec.calls("count"),
        0,
        "step c's plugin was called although the write recording c running was refused \
         (calls: {:?})",
        h.exec.calls_of_step("c")
    );
}

#[tokio::test(start_paused = true)]
async fn a_fenced_write_between_attempts_stops_the_retries() {
    const FLAKY: &str = r#"
name: flaky
steps:
  - name: a
    plugin: flaky
    retry: {max_attempts: 5, initial_delay_ms: 1000}
"#;
    let exec = FakeExecutor::new().with(
        "flaky",
        false,
        fail_then(1, || PluginError::Retryable("busy".into()), |_| json!(1)),
    );
    let h = Harness::new(exec, &[FLAKY]);
    // The flow is created with `a` running; its first failure's write is
    // refused.
    h.store.fence_after(0);
    let end = h.run("flaky", json!({})).await;

    assert_eq!(
        h.exec.calls("flaky"),
        1,
        "no attempt after the lease was lost"
    );
    assert_eq!(h.events.count("WriteFenced"), 1);
    assert_eq!(h.events.count("LeaseLost"), 1);
    assert_ne!(end.status, FlowStatus::Completed);
    let stored = h.stored(end.flow_id).await;
    assert_eq!(stored.status, FlowStatus::Running);
    assert_eq!(
        (stored.steps["a"].status, stored.steps["a"].attempt),
        (StepStatus::Running, 1)
    );
    assert!(h.store.released().contains(&end.flow_id));
}
