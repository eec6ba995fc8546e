//! The runner's tests: caching.

use super::*;

#[tokio::test]
async fn a_deterministic_step_is_served_from_the_cache_and_a_non_deterministic_one_is_not() {
    const CACHED: &str = r#"
name: cached
inputs:
  text: {type: string}
steps:
  - name: det
    plugin: upper-det
    input:
      text: "${inputs.text}"
  - name: nondet
    plugin: upper-rand
    input:
      text: "${inputs.text}"
outputs:
  det: "${steps.det.output.text}"
  nondet: "${steps.nondet.output.text}"
"#;
    let exec = FakeExecutor::new()
        .with("upper-det", true, compute(upper))
        .with("upper-rand", false, compute(upper));
    let h = Harness::new(exec, &[CACHED]);
    let first = h.run("cached", json!({"text": "hello"})).await;
    let second = h.run("cached", json!({"text": "hello"})).await;
    let other = h.run("cached", json!({"text": "other"})).await;

    assert_eq!(h.exec.calls("upper-det"), 2, "once per distinct input");
    assert_eq!(h.exec.calls("upper-rand"), 3, "never cached");
    let [first, second, other] = [first, second, other].map(|s| s.flow_id);
    let (first, second, other) = (
        h.stored(first).await,
        h.stored(second).await,
        h.stored(other).await,
    );
    for state in [&first, &second, &other] {
        assert_eq!(state.status, FlowStatus::Completed);
        assert!(state.steps["nondet"].cache_key.is_none());
        assert!(!state.steps["nondet"].cached);
    }
    assert_eq!(second.outputs, first.outputs);
    assert_eq!(
        second.outputs,
        Some(json!({"det": "HELLO", "nondet": "HELLO"}))
    );

    let (d1, d2, d3) = (
        &first.steps["det"],
        &second.steps["det"],
        &other.steps["det"],
    );
    assert!(!d1.cached && d2.cached && !d3.cached);
    assert_eq!(d2.outputs, d1.outputs);
    assert_eq!((d2.status, d2.attempt), (StepStatus::Completed, 1));
    assert!(d1.cache_key.is_some());
    assert_eq!(d2.cache_key, d1.cache_key);
    assert_ne!(d3.cache_key, d1.cache_key);

    assert_eq!(h.events.count("CacheHit { plugin: \"upper-det\" }"), 1);
    assert_eq!(h.events.count("CacheMiss { plugin: \"upper-det\" }"), 2);
    assert_eq!(h.events.count("CacheStored { plugin: \"upper-det\" }"), 2);
    assert_eq!(h.events.count("CacheHit { plugin: \"upper-rand\" }"), 0);
}

#[tokio::test]
async fn a_flow_that_caches_its_result_is_answered_without_running_again() {
    const WHOLE: &str = r#"
name: whole
cache: {flow_result: true}
inputs:
  text: {type: string}
steps:
  - name: shout
    plugin: upper
    input:
      text: "${inputs.text}"
outputs:
  text: "${steps.shout.output.text}"
"#;
    let h = Harness::new(chain_plugins(), &[WHOLE]);
    let first = h.run("whole", json!({"text": "hey"})).await;
    let second = h.run("whole", json!({"text": "hey"})).await;

    assert_eq!(h.exec.calls("upper"), 1);
    assert_ne!(first.flow_id, second.flow_id);
    let stored = h.stored(second.flow_id).await;
    assert_eq!(stored, second);
    assert_eq!(stored.status, FlowStatus::Completed);
    assert_eq!(stored.outputs, Some(json!({"text": "HEY"})));
    assert_eq!(stored.metadata["flow_cache"], json!("hit"));
    let shout = &stored.steps["shout"];
    assert!(shout.cached);
    assert_eq!(shout.status, StepStatus::Completed);
    assert_eq!(shout.outputs, Some(json!({"text": "HEY"})));
    assert_eq!(h.events.count("FlowCacheMiss"), 1);
    assert_eq!(h.events.count("FlowCacheHit"), 1);
}

#[tokio::test]
async fn concurrent_flows_needing_the_same_key_call_the_plugin_once() {
    const SHARED: &str = r#"
name: shared
inputs:
  text: {type: string}
steps:
  - name: slow
    plugin: slow
    input:
      text: "${inputs.text}"
outputs:
  text: "${steps.slow.output.text}"
"#;
    let gate = Gate::new();
    let exec = FakeExecutor::new().with("slow", true, gated(&gate, upper));
    let h = Harness::new(exec, &[SHARED]);
    let runs: Vec<_> = (0..3)
        .map(|_| h.spawn_run("shared", json!({"text": "same"})))
        .collect();
    // The first flow computes; the two others wait for it.
    h.exec.wait_calls("slow", 1).await;
    h.events
        .wait_for("CacheWaited { plugin: \"slow\" }", 2)
        .await;
    gate.open();

    let mut cached = Vec::new();
    for (id, run) in runs {
        let end = within("a run", run).await.unwrap().unwrap();
        assert_eq!(end.status, FlowStatus::Completed);
        assert_eq!(end.outputs, Some(json!({"text": "SAME"})));
        let stored = h.stored(id).await;
        assert_eq!(stored.status, FlowStatus::Completed);
        assert_eq!(stored.steps["slow"].outputs, Some(json!({"text": "SAME"})));
        cached.push(stored.steps["slow"].cached);
    }
    assert_eq!(
        h.exec.calls("slow"),
        1,
        "one computation for the three flows"
    );
    cached.sort();
    assert_eq!(cached, [false, true, true]);
    assert_eq!(h.events.count("CacheMiss"), 1);
    assert_eq!(h.events.count("CacheStored"), 1);
    assert_eq!(h.events.count("CacheHit"), 2);
}
