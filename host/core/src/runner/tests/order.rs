//! The runner's tests: ordering and concurrency.

use super::*;

#[tokio::test]
async fn a_chain_runs_in_order_each_step_fed_by_the_one_before() {
    use StepStatus::{Completed, Running};
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    let end = h.run("chain", json!({"text": "hello"})).await;
    let stored = h.stored(end.flow_id).await;
    assert_eq!(stored, end, "the store holds the state the runner returned");

    assert_eq!(stored.status, FlowStatus::Completed);
    assert_eq!(stored.outputs, Some(json!({"text": "HELLO!", "length": 6})));
    assert_eq!(stored.error, None);
    assert!(stored.completed_at.is_some() && stored.total_execution_time.is_some());
    for (name, input, output) in [
        ("a", json!({"text": "hello"}), json!({"text": "HELLO"})),
        ("b", json!({"text": "HELLO"}), json!({"text": "HELLO!"})),
        ("c", json!({"text": "HELLO!"}), json!({"n": 6})),
    ] {
        let st = &stored.steps[name];
        assert_eq!(st.status, Completed, "step {name}");
        assert_eq!(st.attempt, 1, "step {name}");
        assert_eq!(st.inputs, Some(input), "step {name}");
        assert_eq!(st.outputs, Some(output), "step {name}");
        assert_eq!((st.cached, &st.error), (false, &None), "step {name}");
        assert!(st.started_at.is_some() && st.execution_time.is_some());
    }
    for (before, after) in [("a", "b"), ("b", "c")] {
        assert!(stored.steps[before].completed_at <= stored.steps[after].started_at);
    }

    // Each plugin was called once, after the one before had returned.
    let log = h.exec.log();
    let order: Vec<&str> = log.iter().map(|c| c.step.as_str()).collect();
    assert_eq!(order, ["a", "b", "c"]);
    assert!(log.windows(2).all(|w| w[1].started >= w[0].ended));
    assert!(log.iter().all(|c| c.attempt == 1));

    // Each step was recorded running before its plugin was called, and
    // completed before the next one started.
    assert_eq!(
        h.store.history(end.flow_id),
        rows(&[
            ("a", Running, 1),
            ("a", Completed, 1),
            ("b", Running, 1),
            ("b", Completed, 1),
            ("c", Running, 1),
            ("c", Completed, 1),
        ])
    );
    assert_eq!(h.events.count("FlowStarted"), 1);
    assert_eq!(
        h.events
            .count("FlowEnded { flow: \"chain\", status: Completed"),
        1
    );
    let attempts = h.events.matching("StepAttempted");
    assert_eq!(attempts.len(), 3);
    assert!(
        attempts
            .iter()
            .all(|e| e.contains("outcome: \"completed\""))
    );
    assert_eq!(h.runner.active_count(), 0);
}

#[tokio::test]
async fn independent_steps_overlap_and_a_join_waits_for_both() {
    const FAN: &str = r#"
name: fan
steps:
  - name: left
    plugin: meet
    input: {side: left}
  - name: right
    plugin: meet
    input: {side: right}
  - name: join
    plugin: join
    input:
      left: "${steps.left.output.side}"
      right: "${steps.right.output.side}"
outputs:
  joined: "${steps.join.output}"
"#;
    // Both sides must be in their plugin at once to pass the barrier; then
    // `right` is held until the test has seen `left` recorded completed.
    let barrier = Arc::new(Barrier::new(2));
    let hold_right = Gate::new();
    let meet = {
        let (barrier, hold_right) = (barrier.clone(), hold_right.clone());
        script(move |call| {
            let (barrier, hold_right) = (barrier.clone(), hold_right.clone());
            async move {
                let side = call.input["side"].clone();
                if tokio::time::timeout(PATIENCE, barrier.wait())
                    .await
                    .is_err()
                {
                    return Err(PluginError::Failed("the other side never came".into()));
                }
                if side == "right" {
                    hold_right.wait().await;
                }
                Ok(json!({"side": side}))
            }
        })
    };
    let exec = FakeExecutor::new().with("meet", false, meet).with(
        "join",
        false,
        compute(|v| json!(format!("{}+{}", text_at(v, "left"), text_at(v, "right")))),
    );
    let h = Harness::new(exec, &[FAN]);
    let (id, run) = h.spawn_run("fan", json!({}));

    let midway = h
        .wait_stored(id, "`left` recorded completed", |s| {
            s.steps["left"].status == StepStatus::Completed
        })
        .await;
    assert_eq!(midway.steps["right"].status, StepStatus::Running);
    assert_eq!(
        midway.steps["join"].status,
        StepStatus::Pending,
        "the join must not start while `right` runs"
    );
    assert_eq!(h.exec.calls("join"), 0);
    hold_right.open();

    let end = within("the run", run).await.unwrap().unwrap();
    let stored = h.stored(id).await;
    assert_eq!(stored.status, FlowStatus::Completed);
    assert_eq!(stored.outputs, Some(json!({"joined": "left+right"})));
    assert_eq!(
        stored.steps["join"].inputs,
        Some(json!({"left": "left", "right": "right"}))
    );
    assert!(
        stored
            .steps
            .values()
            .all(|s| s.status == StepStatus::Completed)
    );
    assert_eq!(end.status, FlowStatus::Completed);

    assert!(h.exec.max_in_flight() >= 2, "left and right ran at once");
    let [left, right, join] = ["left", "right", "join"].map(|s| h.exec.calls_of_step(s));
    assert_eq!((left.len(), right.len(), join.len()), (1, 1, 1));
    assert!(left[0].started < right[0].ended && right[0].started < left[0].ended);
    assert!(join[0].started >= left[0].ended.max(right[0].ended));
    assert!(stored.steps["join"].started_at >= stored.steps["right"].completed_at);
}
