//! How the runner uses the `ResultCache` port: whether a step or a whole
//! flow is cached and under which key, lookups with single-flight (one
//! computation per key: on this host the others wait for its result; across
//! hosts sharing the cache, one host leads and the others read the cache
//! until the result is there), and stores. A cache that fails is logged and
//! counted; the step runs regardless.

use crate::blob::retention::flow_holder;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Map, Value};

use super::{FlowRunner, RunError};
use crate::cache::{self, CachedResult, Flight, Invalidate, Leader};
use crate::executor::PluginFacts;
use crate::flow::{FlowDefinition, StepDef};
use crate::observe::Event;
use crate::state::{FlowState, FlowStatus, StepStatus};

/// How one step uses the cache.
pub(super) struct CachePlan {
    pub key: String,
    pub ttl: Duration,
}

/// The right to compute a key: among the steps of this host (`local`: they
/// wait for its result) and, when `across`, among the hosts sharing the
/// cache (a lead in the store, to give up with `end_lead`).
pub(super) struct Lead {
    pub local: Leader,
    pub across: bool,
}

/// The first pause between two reads of a key another host computes; it
/// doubles up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const MAX_PAUSE: Duration = Duration::from_millis(500);

impl FlowRunner {
    /// Removes cached results; returns how many there were.
    pub async fn invalidate_cache(&self, what: &Invalidate) -> Result<u64, cache::CacheError> {
        let removed = self.inner.cache.invalidate(what).await?;
        self.observe(Event::CacheInvalidated {
            by: what.label(),
            removed,
        });
        tracing::info!(by = what.label(), removed, "cache invalidated");
        Ok(removed)
    }

    fn flow_ttl(&self, def: &FlowDefinition) -> Duration {
        def.cache
            .ttl_seconds
            .map_or(self.inner.config.cache.ttl, Duration::from_secs)
    }

    /// The whole-flow key, when the flow asks for whole-flow caching.
    pub(super) fn flow_cache_key(&self, def: &FlowDefinition, inputs: &Value) -> Option<String> {
        if !(self.inner.config.cache.enabled && def.cache.flow_result)
            || def.cache.enabled == Some(false)
        {
            return None;
        }
        let facts: Vec<(&str, String)> = def
            .steps
            .iter()
            .map(|s| {
                let hash = self.inner.executor.plugin(&s.plugin).map(|p| p.hash);
                (s.name.as_str(), hash.unwrap_or_default())
            })
            .collect();
        let hashes: Vec<(&str, &str)> = facts.iter().map(|(s, h)| (*s, h.as_str())).collect();
        Some(cache::flow_key(&def.hash, &hashes, inputs))
    }

    /// Completes `state` from a stored whole-flow result, if there is one.
    pub(super) async fn flow_cache_hit(
        &self,
        def: &FlowDefinition,
        state: &mut FlowState,
        key: &str,
    ) -> Result<Option<FlowState>, RunError> {
        let clock = Instant::now();
        let entry = match self.inner.cache.get(key).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.observe(Event::CacheFailed);
                tracing::warn!(error = %e, "flow cache unavailable; running the flow");
                return Ok(None);
            }
        };
        let now = Utc::now();
        for (name, st) in state.steps.iter_mut() {
            st.status = StepStatus::Completed;
            st.cached = true;
            st.cache_key = Some(key.to_owned());
            st.started_at = Some(now);
            st.completed_at = Some(now);
            st.execution_time = Some(0.0);
            st.outputs = entry.output["steps"].get(name).cloned();
        }
        state.status = FlowStatus::Completed;
        state.outputs = entry.output.get("outputs").cloned();
        state.completed_at = Some(now);
        state.total_execution_time = Some(clock.elapsed().as_secs_f64());
        state.metadata.insert("flow_cache".into(), "hit".into());
        state.metadata.insert("cache_key".into(), key.into());
        self.hold_refs(&entry.output, &flow_holder(state.flow_id), None)
            .await;
        self.observe(Event::FlowCacheHit { flow: &def.name });
        // The run is recorded like any other, already completed.
        self.create(state).await?;
        self.count_finished(state, clock.elapsed().as_secs_f64());
        Ok(Some(state.clone()))
    }

    /// Stores a completed run's outputs and step outputs under its flow key.
    pub(super) async fn store_flow_result(
        &self,
        def: &FlowDefinition,
        key: String,
        state: &FlowState,
    ) {
        let steps: Map<String, Value> = state
            .steps
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.outputs.clone()?)))
            .collect();
        let entry = CachedResult {
            key,
            plugin: String::new(),
            flow: def.name.clone(),
            step: String::new(),
            output: serde_json::json!({ "outputs": state.outputs, "steps": steps }),
            stored_at: Utc::now(),
        };
        if let Err(e) = self.put_cached(&entry, self.flow_ttl(def)).await {
            self.observe(Event::CacheFailed);
            tracing::warn!(error = %e, "cannot store the flow result");
        }
    }

    /// Whether and how a step uses the cache: on unless turned off by the
    /// configuration, the flow or the step; only for a deterministic plugin
    /// unless the step forces it.
    pub(super) fn cache_plan(
        &self,
        def: &FlowDefinition,
        step: &StepDef,
        plugin: &PluginFacts,
        input: &Value,
    ) -> Option<CachePlan> {
        let settings = &self.inner.config.cache;
        let on = settings.enabled
            && def.cache.enabled != Some(false)
            && step.cache.enabled != Some(false)
            && (plugin.deterministic || step.cache.force);
        let contract = self.inner.executor.contract_version();
        on.then(|| CachePlan {
            key: cache::step_key(&plugin.hash, contract, &step.config, input),
            ttl: step
                .cache
                .ttl_seconds
                .or(def.cache.ttl_seconds)
                .map_or(settings.ttl, Duration::from_secs),
        })
    }

    /// Looks a key up; on a miss, either leads its computation or waits
    /// (bounded) for the flow that does, here or on another host. `Ok` is a
    /// hit; `Err(None)` computes without leading (the wait ran out).
    pub(super) async fn cache_lookup(
        &self,
        plan: &CachePlan,
        plugin: &str,
    ) -> Result<Value, Option<Lead>> {
        match self.inner.cache.get(&plan.key).await {
            Ok(Some(entry)) => {
                self.observe(Event::CacheHit { plugin });
                return Ok(entry.output);
            }
            Ok(None) => {}
            Err(e) => {
                self.observe(Event::CacheFailed);
                tracing::warn!(error = %e, "cache unavailable; running the step");
            }
        }
        match self.inner.single_flight.join(&plan.key) {
            Flight::Leader(local) => match self.lead_across_hosts(plan, plugin).await {
                Ok(output) => {
                    self.observe(Event::CacheHit { plugin });
                    local.finish(Some(output.clone()));
                    Ok(output)
                }
                Err(across) => {
                    self.observe(Event::CacheMiss { plugin });
                    Err(Some(Lead { local, across }))
                }
            },
            Flight::Follower(rx) => {
                self.observe(Event::CacheWaited { plugin });
                match cache::wait(rx, self.inner.config.cache.single_flight_wait).await {
                    Some(output) => {
                        self.observe(Event::CacheHit { plugin });
                        Ok(output)
                    }
                    None => {
                        self.observe(Event::CacheMiss { plugin });
                        Err(None)
                    }
                }
            }
        }
    }

    /// This host's leader of a key, among the hosts sharing the cache:
    /// takes the lead on the key, or reads the cache with backoff while
    /// another host holds it (at most `single_flight_wait`; a lead given up
    /// or expired without a result is taken over). `Ok` is the other host's
    /// result; `Err(true)` when this host leads, `Err(false)` when it
    /// computes without the lead (the wait ran out, or the cache failed).
    async fn lead_across_hosts(&self, plan: &CachePlan, plugin: &str) -> Result<Value, bool> {
        let cache = &self.inner.cache;
        let wait = self.inner.config.cache.single_flight_wait;
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = FIRST_PAUSE;
        let mut waited = false;
        loop {
            match cache.lead(&plan.key, wait).await {
                // A lead given up just after its result was stored: the
                // result is there.
                Ok(true) if waited => match cache.get(&plan.key).await {
                    Ok(Some(entry)) => {
                        self.end_lead(&plan.key).await;
                        return Ok(entry.output);
                    }
                    _ => return Err(true),
                },
                Ok(true) => return Err(true),
                Ok(false) => {}
                Err(e) => {
                    self.observe(Event::CacheFailed);
                    tracing::warn!(error = %e, "cache unavailable; running the step");
                    return Err(false);
                }
            }
            if !waited {
                waited = true;
                self.observe(Event::CacheWaited { plugin });
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(false);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_PAUSE);
            match cache.get(&plan.key).await {
                Ok(Some(entry)) => return Ok(entry.output),
                Ok(None) => {}
                Err(e) => {
                    self.observe(Event::CacheFailed);
                    tracing::warn!(error = %e, "cache unavailable; running the step");
                    return Err(false);
                }
            }
        }
    }

    /// Gives up this host's lead on a key: the other hosts stop waiting for
    /// it (they find the result stored, or take the lead).
    pub(super) async fn end_lead(&self, key: &str) {
        if let Err(e) = self.inner.cache.end_lead(key).await {
            self.observe(Event::CacheFailed);
            tracing::debug!(error = %e, "cannot give up the lead on a cache key; it expires");
        }
    }

    /// Stores a step's output under its plan's key, and hands it to the
    /// steps waiting for the same key.
    pub(super) async fn store_step_result(
        &self,
        (def, step): (&FlowDefinition, &StepDef),
        plan: &CachePlan,
        output: &Value,
        leader: Option<Leader>,
    ) {
        let entry = CachedResult {
            key: plan.key.clone(),
            plugin: step.plugin.clone(),
            flow: def.name.clone(),
            step: step.name.clone(),
            output: output.clone(),
            stored_at: Utc::now(),
        };
        match self.put_cached(&entry, plan.ttl).await {
            Ok(()) => self.observe(Event::CacheStored {
                plugin: &step.plugin,
            }),
            Err(e) => {
                self.observe(Event::CacheFailed);
                tracing::warn!(error = %e, "cannot store the step result");
            }
        }
        if let Some(leader) = leader {
            leader.finish(Some(output.clone()));
        }
    }
}
