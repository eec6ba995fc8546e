//! The runner's tests: background runs and idempotency.

use super::*;

#[tokio::test]
async fn a_submitted_flow_is_recorded_pending_then_runs_in_the_background() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    let id = h
        .runner
        .submit(
            h.def("chain"),
            obj(json!({"text": "bg"})),
            FlowContext::new(),
        )
        .await
        .unwrap();
    // On this (current-thread) runtime the background task cannot have run
    // yet: the flow is as `submit` recorded it.
    let pending = h.stored(id).await;
    assert_eq!(pending.status, FlowStatus::Pending);
    assert!(
        pending
            .steps
            .values()
            .all(|s| s.status == StepStatus::Pending)
    );
    assert_eq!(h.exec.log().len(), 0);

    let done = h
        .wait_stored(id, "the submitted flow to finish", |s| {
            s.status.is_finished()
        })
        .await;
    assert_eq!(done.status, FlowStatus::Completed);
    assert_eq!(done.outputs, Some(json!({"text": "BG!", "length": 3})));
    assert!(
        done.steps
            .values()
            .all(|s| s.status == StepStatus::Completed && s.attempt == 1)
    );
    assert_eq!(
        (
            h.exec.calls("upper"),
            h.exec.calls("exclaim"),
            h.exec.calls("count")
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn submissions_beyond_the_limit_are_refused_busy() {
    let gate = Gate::new();
    let exec = chain_plugins();
    exec.set("upper", gated(&gate, upper));
    let h = Harness::with_config(
        exec,
        &[CHAIN],
        RunnerConfig {
            max_async_in_flight: 1,
            ..config()
        },
    );
    let submit = || {
        h.runner.submit(
            h.def("chain"),
            obj(json!({"text": "q"})),
            FlowContext::new(),
        )
    };
    let first = submit().await.unwrap();
    let busy = submit().await;
    assert!(
        matches!(busy, Err(RunError::Busy { in_flight: 1, .. })),
        "{busy:?}"
    );
    let all = ListFilter {
        limit: 10,
        ..ListFilter::default()
    };
    assert_eq!(
        h.store.list_flows(&all).await.unwrap().len(),
        1,
        "a refusal records nothing"
    );

    gate.open();
    let done = h
        .wait_stored(first, "the first submission to finish", |s| {
            s.status.is_finished()
        })
        .await;
    assert_eq!(done.status, FlowStatus::Completed);
    // Once it has left the active set, there is room again.
    within("the first flow to leave", async {
        while h.runner.active_count() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    submit().await.expect("room for a new submission");
}

#[tokio::test]
async fn the_same_idempotency_key_gives_the_same_run() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    let keyed = || FlowContext {
        idempotency_key: Some("order-7".into()),
        ..FlowContext::new()
    };
    let first = h.run_with("chain", json!({"text": "k"}), keyed()).await;
    let ctx = keyed();
    let unused = ctx.flow_id;
    let second = h.run_with("chain", json!({"text": "k"}), ctx).await;
    assert_eq!(second.flow_id, first.flow_id);
    assert_eq!(second, h.stored(first.flow_id).await);
    assert_eq!(h.exec.calls("upper"), 1, "the repeat does not run the flow");
    assert_eq!(h.store.get_flow(unused).await.unwrap(), None);

    let submitted = h
        .runner
        .submit(h.def("chain"), obj(json!({"text": "k"})), keyed())
        .await
        .unwrap();
    assert_eq!(submitted, first.flow_id);

    let other = h
        .run_with(
            "chain",
            json!({"text": "k"}),
            FlowContext {
                idempotency_key: Some("order-8".into()),
                ..FlowContext::new()
            },
        )
        .await;
    assert_ne!(other.flow_id, first.flow_id);
    assert_eq!(h.exec.calls("upper"), 2);
}

#[tokio::test]
async fn a_key_refused_busy_is_given_back_and_its_retry_runs() {
    let gate = Gate::new();
    let exec = chain_plugins();
    exec.set("upper", gated(&gate, upper));
    let h = Harness::with_config(
        exec,
        &[CHAIN],
        RunnerConfig {
            max_async_in_flight: 1,
            ..config()
        },
    );
    let submit = |ctx: FlowContext| {
        h.runner
            .submit(h.def("chain"), obj(json!({"text": "q"})), ctx)
    };
    let keyed = || FlowContext {
        idempotency_key: Some("order-9".into()),
        ..FlowContext::new()
    };
    let first = submit(FlowContext::new()).await.unwrap();
    let refused = keyed();
    let refused_id = refused.flow_id;
    let busy = submit(refused).await;
    assert!(matches!(busy, Err(RunError::Busy { .. })), "{busy:?}");

    gate.open();
    h.wait_stored(first, "the first submission to finish", |s| {
        s.status.is_finished()
    })
    .await;
    within("the first flow to leave", async {
        while h.runner.active_count() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // The retry after Retry-After starts its run: the key was given back.
    let retry = keyed();
    let retry_id = retry.flow_id;
    let id = submit(retry).await.expect("the retry is accepted");
    assert_eq!(id, retry_id);
    assert_ne!(id, refused_id);
    let done = h
        .wait_stored(id, "the retried submission to finish", |s| {
            s.status.is_finished()
        })
        .await;
    assert_eq!(done.status, FlowStatus::Completed);
    assert_eq!(h.store.get_flow(refused_id).await.unwrap(), None);
    // And the key names it now.
    assert_eq!(submit(keyed()).await.unwrap(), id);
}

#[tokio::test]
async fn a_key_refused_for_a_taken_flow_id_is_given_back() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    let other = h.run("chain", json!({"text": "first"})).await;
    let keyed = || FlowContext {
        idempotency_key: Some("order-10".into()),
        ..FlowContext::new()
    };
    let taken = FlowContext {
        flow_id: other.flow_id,
        ..keyed()
    };
    let refused = h
        .runner
        .submit(h.def("chain"), obj(json!({"text": "again"})), taken)
        .await;
    assert!(
        matches!(refused, Err(RunError::DuplicateId(id)) if id == other.flow_id),
        "{refused:?}"
    );
    let refused = h
        .runner
        .execute(
            h.def("chain"),
            obj(json!({"text": "again"})),
            FlowContext {
                flow_id: other.flow_id,
                ..keyed()
            },
        )
        .await;
    assert!(
        matches!(refused, Err(RunError::DuplicateId(_))),
        "{refused:?}"
    );

    // Resent without the flow id, the key starts a run of its own.
    let ctx = keyed();
    let fresh = ctx.flow_id;
    let run = h.run_with("chain", json!({"text": "again"}), ctx).await;
    assert_eq!(run.flow_id, fresh, "the key named the other flow's run");
    assert_eq!(run.outputs, Some(json!({"text": "AGAIN!", "length": 6})));
    assert_eq!(h.stored(other.flow_id).await.outputs, other.outputs);
}

#[tokio::test(start_paused = true)]
async fn a_sync_replay_of_a_running_key_answers_the_runs_end() {
    let gate = Gate::new();
    let exec = chain_plugins();
    exec.set("upper", gated(&gate, upper));
    let h = Harness::new(exec, &[CHAIN]);
    let keyed = || FlowContext {
        idempotency_key: Some("order-11".into()),
        ..FlowContext::new()
    };
    let first = keyed();
    let id = first.flow_id;
    let (runner, def) = (h.runner.clone(), h.def("chain"));
    let original =
        tokio::spawn(async move { runner.execute(def, obj(json!({"text": "r"})), first).await });
    h.exec.wait_calls("upper", 1).await;

    let (runner, def) = (h.runner.clone(), h.def("chain"));
    let mut replay = tokio::spawn(async move {
        runner
            .execute(def, obj(json!({"text": "r"})), keyed())
            .await
    });
    // On the paused clock, time only moves once every task waits: the replay
    // has done all it can and is still waiting for the run.
    let early = tokio::time::timeout(Duration::from_secs(60), &mut replay).await;
    assert!(
        early.is_err(),
        "the replay answered before the run ended: {:?}",
        early.map(|r| r.unwrap().map(|s| s.status))
    );

    gate.open();
    let replayed = within("the replay", replay).await.unwrap().unwrap();
    let ended = within("the original", original).await.unwrap().unwrap();
    assert_eq!(replayed.flow_id, id);
    assert_eq!(replayed.status, FlowStatus::Completed);
    assert_eq!(replayed.outputs, Some(json!({"text": "R!", "length": 2})));
    assert_eq!(replayed, ended);
    assert_eq!(h.exec.calls("upper"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_sync_replay_of_a_key_run_elsewhere_waits_for_the_store() {
    let h = Harness::new(chain_plugins(), &[CHAIN]);
    // A run another host started: recorded running, not active here.
    let elsewhere = h.another_runner(config());
    let ctx = FlowContext {
        idempotency_key: Some("order-12".into()),
        ..FlowContext::new()
    };
    let id = ctx.flow_id;
    let gate = Gate::new();
    h.exec.set("upper", gated(&gate, upper));
    let (runner, def) = (elsewhere.clone(), h.def("chain"));
    let original =
        tokio::spawn(async move { runner.execute(def, obj(json!({"text": "e"})), ctx).await });
    h.exec.wait_calls("upper", 1).await;
    // The replay comes to a runner where the run is not active: it reads
    // the store until the run ends.
    let fresh = new_runner(
        &h.exec,
        &h.flows,
        (&h.store, &h.cache, &h.blobs),
        &h.events,
        config(),
    );
    let def = h.def("chain");
    let mut replay = tokio::spawn(async move {
        let ctx = FlowContext {
            idempotency_key: Some("order-12".into()),
            ..FlowContext::new()
        };
        fresh.execute(def, obj(json!({"text": "e"})), ctx).await
    });
    let early = tokio::time::timeout(Duration::from_secs(60), &mut replay).await;
    assert!(early.is_err(), "the replay answered before the run ended");
    gate.open();
    let replayed = within("the replay", replay).await.unwrap().unwrap();
    let ended = within("the original", original).await.unwrap().unwrap();
    assert_eq!(replayed.flow_id, id);
    assert_eq!(replayed.status, FlowStatus::Completed);
    assert_eq!(replayed, ended);
}
