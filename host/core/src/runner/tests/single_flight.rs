//! The runner's tests: single-flight across hosts.

use super::*;

/// One host's view of a cache shared by several: the entries of one
/// `MemoryStore`, and leads held in a map shared by the hosts, each lead
/// under its host's name.
struct SharedCache {
    entries: Arc<MemoryStore>,
    leads: Arc<Mutex<HashMap<String, String>>>,
    host: &'static str,
}

#[async_trait]
impl ResultCache for SharedCache {
    async fn get(&self, key: &str) -> Result<Option<CachedResult>, CacheError> {
        self.entries.get(key).await
    }

    async fn put(&self, entry: &CachedResult, ttl: Duration) -> Result<(), CacheError> {
        self.entries.put(entry, ttl).await
    }

    async fn invalidate(&self, what: &Invalidate) -> Result<u64, CacheError> {
        self.entries.invalidate(what).await
    }

    async fn lead(&self, key: &str, _ttl: Duration) -> Result<bool, CacheError> {
        let mut leads = lock(&self.leads);
        let holder = leads.entry(key.to_owned()).or_insert(self.host.to_owned());
        Ok(holder == self.host)
    }

    async fn end_lead(&self, key: &str) -> Result<(), CacheError> {
        let mut leads = lock(&self.leads);
        if leads.get(key).is_some_and(|h| h == self.host) {
            leads.remove(key);
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn identical_steps_on_two_hosts_call_the_plugin_once() {
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
    let (entries, leads) = (Arc::new(MemoryStore::new()), Arc::default());
    let host = |name: &'static str| {
        let cache = SharedCache {
            entries: entries.clone(),
            leads: Arc::clone(&leads),
            host: name,
        };
        let ports = Ports {
            executor: h.exec.clone(),
            flows: h.flows.clone(),
            store: h.store.clone(),
            cache: Arc::new(cache),
            blobs: Arc::new(crate::blob::MemoryBlobs::new()),
            queue: None,
            observer: h.events.clone(),
        };
        FlowRunner::new(ports, config())
    };
    let (first, second) = (host("first"), host("second"));
    let run = |runner: &FlowRunner| {
        let (runner, def) = (runner.clone(), h.def("shared"));
        tokio::spawn(async move {
            let inputs = obj(json!({"text": "same"}));
            runner.execute(def, inputs, FlowContext::new()).await
        })
    };
    let on_first = run(&first);
    h.exec.wait_calls("slow", 1).await;
    let on_second = run(&second);
    h.events
        .wait_for("CacheWaited { plugin: \"slow\" }", 1)
        .await;
    gate.open();

    let first_end = within("the first host's run", on_first)
        .await
        .unwrap()
        .unwrap();
    let second_end = within("the second host's run", on_second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.exec.calls("slow"), 1, "the plugin ran on both hosts");
    for end in [&first_end, &second_end] {
        assert_eq!(end.status, FlowStatus::Completed);
        assert_eq!(end.outputs, Some(json!({"text": "SAME"})));
    }
    assert!(!first_end.steps["slow"].cached);
    assert!(second_end.steps["slow"].cached);
    assert!(lock(&leads).is_empty(), "the lead was given up");
}

#[tokio::test(start_paused = true)]
async fn a_host_waiting_for_another_computes_once_its_lead_is_given_up_without_a_result() {
    const SHARED: &str = r#"
name: shared
steps:
  - name: slow
    plugin: slow
    input: {text: "x"}
"#;
    let exec = FakeExecutor::new().with("slow", true, compute(upper));
    let h = Harness::new(exec, &[SHARED]);
    // The step's key, from a run on a cache of its own.
    let key = h.run("shared", json!({})).await.steps["slow"]
        .cache_key
        .clone()
        .expect("a cached step has a key");
    // Another host leads that key, and gives the lead up without a result.
    let (entries, leads) = (Arc::new(MemoryStore::new()), Arc::default());
    let other = SharedCache {
        entries: entries.clone(),
        leads: Arc::clone(&leads),
        host: "other",
    };
    assert!(other.lead(&key, PATIENCE).await.unwrap());
    let cache = SharedCache {
        entries,
        leads: Arc::clone(&leads),
        host: "here",
    };
    let ports = Ports {
        executor: h.exec.clone(),
        flows: h.flows.clone(),
        store: h.store.clone(),
        cache: Arc::new(cache),
        blobs: Arc::new(crate::blob::MemoryBlobs::new()),
        queue: None,
        observer: h.events.clone(),
    };
    let runner = FlowRunner::new(ports, config());
    let (r, def) = (runner.clone(), h.def("shared"));
    let run = tokio::spawn(async move { r.execute(def, Map::new(), FlowContext::new()).await });
    h.events
        .wait_for("CacheWaited { plugin: \"slow\" }", 1)
        .await;
    assert_eq!(h.exec.calls("slow"), 1, "ran while another host led");
    other.end_lead(&key).await.unwrap();

    let end = within("the run", run).await.unwrap().unwrap();
    assert_eq!(end.status, FlowStatus::Completed);
    assert!(!end.steps["slow"].cached);
    assert_eq!(h.exec.calls("slow"), 2);
    assert!(lock(&leads).is_empty(), "the lead was given up");
}
