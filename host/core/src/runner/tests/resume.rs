//! The runner's tests: resume, retry of a step, shutdown.

use super::*;

#[tokio::test]
async fn resume_runs_what_did_not_complete_and_reads_completed_outputs_back() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    h.exec
        .set("exclaim", fail(|| PluginError::Failed("not now".into())));
    let failed = h.run("chain", json!({"text": "hi"})).await;
    let id = failed.flow_id;
    let before = h.stored(id).await;
    assert_eq!(before.status, FlowStatus::Failed);
    assert_eq!(
        before.error.as_deref(),
        Some("step `b` failed: failed: not now")
    );
    assert_eq!(before.steps["a"].status, StepStatus::Completed);
    assert_eq!(
        (before.steps["b"].status, before.steps["b"].attempt),
        (StepStatus::Failed, 1)
    );
    assert_eq!(before.steps["c"].status, StepStatus::Pending);

    h.exec.set("exclaim", compute(exclaim));
    let resumed = within("the resume", h.runner.resume_flow(id))
        .await
        .unwrap();
    let after = h.stored(id).await;
    assert_eq!(after, resumed);
    assert_eq!(after.status, FlowStatus::Completed);
    assert_eq!(after.outputs, Some(json!({"text": "HI!", "length": 3})));
    assert_eq!(after.error, None);
    assert_eq!(after.metadata["resumes"], json!(1));
    assert_eq!(
        after.steps["a"], before.steps["a"],
        "a completed step is kept as it was"
    );
    let b = &after.steps["b"];
    assert_eq!((b.status, b.attempt), (StepStatus::Completed, 2));
    assert_eq!((&b.error, &b.error_kind), (&None, &None));
    assert_eq!(b.inputs, Some(json!({"text": "HI"})));
    let c = &after.steps["c"];
    assert_eq!((c.status, c.attempt), (StepStatus::Completed, 1));

    assert_eq!(
        h.exec.calls("upper"),
        1,
        "the completed step is not run again"
    );
    assert_eq!(h.exec.calls("exclaim"), 2);
    assert_eq!(h.exec.calls("count"), 1);
    let second = &h.exec.calls_of_step("b")[1];
    assert_eq!(second.attempt, 2);
    assert_eq!(
        second.input,
        json!({"text": "HI"}),
        "fed from a's stored output"
    );

    let again = h.runner.resume_flow(id).await;
    assert!(matches!(again, Err(RunError::Conflict(_))), "{again:?}");
    assert_eq!(
        h.stored(id).await,
        after,
        "a refused resume changes nothing"
    );
    let unknown = h.runner.resume_flow(FlowId::new()).await;
    assert!(matches!(unknown, Err(RunError::NotFound(_))), "{unknown:?}");
}

#[tokio::test]
async fn retry_step_reruns_only_that_failed_step() {
    const PAIR: &str = r#"
name: pair
steps:
  - name: x
    plugin: px
    input: {n: 1}
  - name: y
    plugin: py
    input: {n: 2}
  - name: z
    plugin: pz
    input:
      x: "${steps.x.output.n}"
      y: "${steps.y.output.n}"
outputs:
  z: "${steps.z.output}"
"#;
    let no = || fail(|| PluginError::Failed("no".into()));
    let exec = FakeExecutor::new()
        .with("px", false, no())
        .with("py", false, no())
        .with(
            "pz",
            false,
            compute(|v| json!(v["x"].as_i64().unwrap() + v["y"].as_i64().unwrap())),
        );
    let h = Harness::new(exec, &[PAIR]);
    let failed = h.run("pair", json!({})).await;
    let id = failed.flow_id;
    let stored = h.stored(id).await;
    assert_eq!(stored.status, FlowStatus::Failed);
    assert_eq!(stored.steps["x"].status, StepStatus::Failed);
    assert_eq!(stored.steps["y"].status, StepStatus::Failed);
    assert_eq!(stored.steps["z"].status, StepStatus::Pending);

    // x is retried alone: y stays failed, so z cannot run and the flow
    // fails again, now for y.
    h.exec.set("px", compute(|v| v.clone()));
    let once = h.runner.retry_step(id, "x").await.unwrap();
    let stored = h.stored(id).await;
    assert_eq!(stored, once);
    assert_eq!(stored.status, FlowStatus::Failed);
    assert_eq!(stored.error.as_deref(), Some("step `y` failed: failed: no"));
    let x = &stored.steps["x"];
    assert_eq!((x.status, x.attempt), (StepStatus::Completed, 2));
    assert_eq!(x.outputs, Some(json!({"n": 1})));
    let y = &stored.steps["y"];
    assert_eq!((y.status, y.attempt), (StepStatus::Failed, 1));
    assert_eq!(stored.steps["z"].status, StepStatus::Pending);
    assert_eq!(
        (h.exec.calls("px"), h.exec.calls("py"), h.exec.calls("pz")),
        (2, 1, 0)
    );

    // What cannot be retried.
    let completed = h.runner.retry_step(id, "x").await;
    assert!(
        matches!(completed, Err(RunError::Conflict(_))),
        "{completed:?}"
    );
    let pending = h.runner.retry_step(id, "z").await;
    assert!(matches!(pending, Err(RunError::Conflict(_))), "{pending:?}");
    let unknown = h.runner.retry_step(id, "nope").await;
    assert!(matches!(unknown, Err(RunError::UnknownStep(s)) if s == "nope"));
    assert_eq!(
        h.stored(id).await,
        stored,
        "a refused retry changes nothing"
    );

    // y retried: z runs after it, and the flow completes.
    h.exec.set("py", compute(|v| v.clone()));
    let done = h.runner.retry_step(id, "y").await.unwrap();
    let stored = h.stored(id).await;
    assert_eq!(stored, done);
    assert_eq!(stored.status, FlowStatus::Completed);
    assert_eq!(stored.outputs, Some(json!({"z": 3})));
    assert_eq!(stored.steps["z"].inputs, Some(json!({"x": 1, "y": 2})));
    assert_eq!(stored.steps["x"], once.steps["x"]);
    assert_eq!(
        (h.exec.calls("px"), h.exec.calls("py"), h.exec.calls("pz")),
        (2, 2, 1)
    );
    assert_eq!(stored.metadata["resumes"], json!(2));

    let resumed = h.runner.resume_flow(id).await;
    assert!(matches!(resumed, Err(RunError::Conflict(_))), "{resumed:?}");
    let retried = h.runner.retry_step(id, "y").await;
    assert!(matches!(retried, Err(RunError::Conflict(_))), "{retried:?}");
}

#[tokio::test]
async fn shutdown_pauses_a_flow_and_another_runner_resumes_the_interrupted_attempt() {
    const PAUSABLE: &str = r#"
name: pausable
steps:
  - name: a
    plugin: upper
    input: {text: "x"}
  - name: b
    plugin: sleeper
    input:
      text: "${steps.a.output.text}"
"#;
    let exec = chain_plugins().with("sleeper", false, until_stopped());
    let h = Harness::new(exec, &[PAUSABLE]);
    let (id, run) = h.spawn_run("pausable", json!({}));
    h.exec.wait_calls("sleeper", 1).await;

    assert_eq!(
        within("the shutdown", h.runner.shutdown(Duration::ZERO)).await,
        1
    );
    let paused = within("the run", run).await.unwrap().unwrap();
    let stored = h.stored(id).await;
    assert_eq!(stored, paused);
    assert_eq!(stored.status, FlowStatus::Paused);
    assert_eq!(stored.completed_at, None);
    let b = &stored.steps["b"];
    assert_eq!((b.status, b.attempt), (StepStatus::Pending, 1));
    assert_eq!(b.error.as_deref(), Some("interrupted by shutdown"));
    let refused = h
        .runner
        .execute(h.def("pausable"), Map::new(), FlowContext::new())
        .await;
    assert!(
        matches!(refused, Err(RunError::ShuttingDown)),
        "{refused:?}"
    );

    // Another host (or this one restarted) picks the flow up.
    h.exec.set("sleeper", compute(|v| v.clone()));
    let other = h.another_runner(config());
    let resumed = within("the resume", other.resume_flow(id)).await.unwrap();
    let stored = h.stored(id).await;
    assert_eq!(stored, resumed);
    assert_eq!(stored.status, FlowStatus::Completed);
    let b = &stored.steps["b"];
    assert_eq!(
        (b.status, b.attempt),
        (StepStatus::Completed, 1),
        "the interrupted attempt runs again"
    );
    assert_eq!(b.outputs, Some(json!({"text": "X"})));
    assert_eq!(h.exec.calls("upper"), 1);
    assert_eq!(h.exec.calls("sleeper"), 2);
    assert_eq!(stored.metadata["resumes"], json!(1));
}
