//! The runner's tests: large values offloaded to blobs and put back for
//! plugins and templates; references checked at submit and before a call;
//! holds for runs and cache entries, and the retention sweep honouring them.

use super::*;
use crate::blob::retention::{Holders, cache_holder, flow_holder, sweep};
use crate::blob::{self, BlobId, BlobRef, BlobStore};

/// A limit small enough for test values: 1 KiB.
fn small_inline() -> RunnerConfig {
    RunnerConfig {
        inline_max_bytes: 1024,
        ..config()
    }
}

/// Every value of the recorded state: inputs, each step's inputs and
/// outputs, the flow's outputs.
fn recorded_values(state: &FlowState) -> Vec<Value> {
    let mut out = vec![state.inputs.clone()];
    out.extend(state.outputs.clone());
    for s in state.steps.values() {
        out.extend(s.inputs.clone());
        out.extend(s.outputs.clone());
    }
    out
}

#[tokio::test]
async fn a_large_input_is_kept_as_a_blob_and_every_step_sees_the_value() {
    let h = Harness::with_config(chain_plugins(), &[CHAIN], small_inline());
    let text = "abc ".repeat(2000); // 8 KB
    let end = h.run("chain", json!({"text": text})).await;
    assert_eq!(end.status, FlowStatus::Completed, "{:?}", end.error);

    // The plugins saw whole values.
    assert_eq!(text_at(&h.exec.calls_of_step("a")[0].input, "text"), text);
    let shouted = format!("{}!", text.to_uppercase());
    assert_eq!(
        text_at(&h.exec.calls_of_step("c")[0].input, "text"),
        shouted
    );

    // Nothing recorded is over the limit, and the large ones are references.
    let stored = h.stored(end.flow_id).await;
    for v in recorded_values(&stored) {
        let len = serde_json::to_string(&v).unwrap().len();
        assert!(len <= 1024, "a recorded value of {len} bytes: {v}");
    }
    let input_ref = BlobRef::parse(&stored.inputs["text"])
        .expect("a reference")
        .unwrap();
    assert!(input_ref.offloaded);
    assert_eq!(input_ref.media_type, "application/json");
    let bytes = blob::get(&*h.blobs, &input_ref.id).await.unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap(),
        json!(text)
    );
    let out_ref = BlobRef::parse(&stored.outputs.as_ref().unwrap()["text"])
        .unwrap()
        .unwrap();
    assert!(out_ref.offloaded);
    assert_eq!(
        stored.outputs.as_ref().unwrap()["length"],
        json!(shouted.len())
    );
    // The same value is the same blob: b's output is c's input.
    assert_eq!(
        stored.steps["b"].outputs.as_ref().unwrap()["text"],
        stored.steps["c"].inputs.as_ref().unwrap()["text"]
    );
    // And each is held by the run.
    for id in [&input_ref.id, &out_ref.id] {
        let holds = h.blobs.holds(id).await.unwrap();
        assert!(
            holds.iter().any(|x| x.holder == flow_holder(end.flow_id)),
            "{holds:?}"
        );
    }
}

/// `CHAIN` under `small_inline`, its middle step failing until a test
/// sets it right: a run that fails and can be retried.
fn failing_at_exclaim() -> Harness {
    let exec = FakeExecutor::new()
        .with("upper", false, compute(upper))
        .with(
            "exclaim",
            false,
            fail(|| PluginError::Failed("not now".into())),
        )
        .with("count", false, compute(count));
    Harness::with_config(exec, &[CHAIN], small_inline())
}

#[tokio::test]
async fn a_resumed_run_reads_offloaded_outputs_back() {
    let h = failing_at_exclaim();
    let text = "xyz ".repeat(1000);
    let first = h.run("chain", json!({"text": text})).await;
    assert_eq!(first.status, FlowStatus::Failed);
    assert!(
        BlobRef::parse(
            &h.stored(first.flow_id).await.steps["a"]
                .outputs
                .as_ref()
                .unwrap()["text"]
        )
        .is_some()
    );

    h.exec.set("exclaim", compute(exclaim));
    let again = within("a retry", h.runner.retry_step(first.flow_id, "b"))
        .await
        .unwrap();
    assert_eq!(again.status, FlowStatus::Completed, "{:?}", again.error);
    assert_eq!(
        h.exec.calls("upper"),
        1,
        "a completed step is not run again"
    );
    assert_eq!(
        text_at(&h.exec.calls_of_step("b").last().unwrap().input, "text"),
        text.to_uppercase()
    );
}

#[tokio::test]
async fn references_are_checked_at_submit_and_before_the_call() {
    let exec = FakeExecutor::new().with("echo", true, compute(|v| v.clone()));
    const ECHO: &str = r#"
name: look
inputs:
  image: {}
steps:
  - name: see
    plugin: echo
    input:
      image: "${inputs.image}"
outputs:
  seen: "${steps.see.output.image}"
"#;
    let h = Harness::new(exec, &[ECHO]);
    // malformed: refused before anything runs
    let bad = h
        .runner
        .execute(
            h.def("look"),
            obj(json!({"image": {"$blob": "sha1:abc"}})),
            FlowContext::new(),
        )
        .await;
    match bad {
        Err(RunError::InvalidInputs(why)) => assert!(why[0].contains("inputs.image"), "{why:?}"),
        other => panic!("a malformed reference was taken: {other:?}"),
    }
    // missing: the step fails, naming the blob, without a call
    let missing = BlobId::of(b"nobody stored this");
    let end = h
        .run("look", json!({"image": {"$blob": missing.to_string()}}))
        .await;
    assert_eq!(end.status, FlowStatus::Failed);
    let see = &h.stored(end.flow_id).await.steps["see"];
    assert_eq!(see.error_kind.as_deref(), Some("invalid_input"));
    assert!(
        see.error.as_deref().unwrap().contains(&missing.to_string()),
        "{:?}",
        see.error
    );
    assert_eq!(h.exec.calls("echo"), 0);

    // present, written bare: completed with size and media type, held by the
    // run and by the cache entry, passed to the plugin as a reference
    let png = blob::put(&*h.blobs, "image/png", b"\x89PNG fake")
        .await
        .unwrap();
    let end = h
        .run("look", json!({"image": {"$blob": png.id.to_string()}}))
        .await;
    assert_eq!(end.status, FlowStatus::Completed, "{:?}", end.error);
    assert_eq!(h.exec.calls_of_step("see")[0].input["image"], png.to_json());
    assert_eq!(end.outputs.unwrap()["seen"], png.to_json());
    let holders: Vec<String> = h
        .blobs
        .holds(&png.id)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.holder)
        .collect();
    let key = h.stored(end.flow_id).await.steps["see"]
        .cache_key
        .clone()
        .unwrap();
    assert!(holders.contains(&flow_holder(end.flow_id)), "{holders:?}");
    assert!(holders.contains(&cache_holder(&key)), "{holders:?}");
}

#[tokio::test]
async fn the_sweep_keeps_what_a_resumable_run_holds_and_removes_the_rest() {
    let h = failing_at_exclaim();
    let run = h.run("chain", json!({"text": "held ".repeat(500)})).await;
    assert_eq!(run.status, FlowStatus::Failed, "resumable by a retry");
    let held = BlobRef::parse(&h.stored(run.flow_id).await.inputs["text"])
        .unwrap()
        .unwrap()
        .id;
    let loose = blob::put(&*h.blobs, "text/plain", b"nobody holds me")
        .await
        .unwrap()
        .id;

    // grace 0: everything is old enough; only the unheld one goes
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    let swept = sweep(&*h.blobs, h.holders(), Duration::ZERO, later)
        .await
        .unwrap();
    assert_eq!(swept.removed, 1, "{swept:?}");
    assert!(h.blobs.stat(&loose).await.unwrap().is_none());
    assert!(h.blobs.stat(&held).await.unwrap().is_some());

    // the run can still be retried from its blobs
    h.exec.set("exclaim", compute(exclaim));
    let again = within("a retry", h.runner.retry_step(run.flow_id, "b"))
        .await
        .unwrap();
    assert_eq!(again.status, FlowStatus::Completed, "{:?}", again.error);

    // once the run is gone, its blobs go too
    assert!(h.store.delete_flow(run.flow_id).await.unwrap());
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    let swept = sweep(&*h.blobs, h.holders(), Duration::ZERO, later)
        .await
        .unwrap();
    assert!(swept.removed >= 1 && swept.released >= 1, "{swept:?}");
    assert!(h.blobs.stat(&held).await.unwrap().is_none());
    assert!(
        h.blobs.list().await.unwrap().is_empty(),
        "every blob of the run is gone"
    );
}

impl Harness {
    fn holders(&self) -> Holders<'_> {
        Holders {
            flows: &*self.store,
            cache: &*self.cache,
        }
    }
}
