//! Every Prometheus metric flowhost exports, named in this one place, and the
//! `Observer` that turns the core's and the adapters' events into them.
//!
//! Labels are bounded: flow, step and plugin names come from the loaded
//! definitions, outcomes from fixed sets; never a flow id or an error text.

use flowhost_core::observe::{Event, Observer};
use flowhost_core::state::FlowStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowOutcome {
    pub flow: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabel {
    pub flow: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepOutcome {
    pub flow: String,
    pub step: String,
    pub plugin: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub plugin: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrapLabel {
    pub plugin: String,
    pub kind: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByLabel {
    pub by: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub flow: String,
    pub step: String,
    pub plugin: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 50 µs to about 7 minutes.
    Histogram::new(exponential_buckets(0.00005, 2.5, 18))
}

pub struct Metrics {
    registry: Registry,
    pub flows_started: Family<FlowLabel, Counter>,
    pub flow_runs: Family<FlowOutcome, Counter>,
    pub flow_duration: HistogramFamily<FlowLabel>,
    pub step_runs: Family<StepOutcome, Counter>,
    pub step_duration: HistogramFamily<StepLabel>,
    pub step_retries: Family<StepLabel, Counter>,
    pub cache_hits: Family<PluginLabel, Counter>,
    pub cache_misses: Family<PluginLabel, Counter>,
    pub cache_stores: Family<PluginLabel, Counter>,
    pub cache_single_flight_waits: Family<PluginLabel, Counter>,
    pub cache_invalidations: Family<ByLabel, Counter>,
    pub cache_errors: Counter,
    pub flow_cache_hits: Family<FlowLabel, Counter>,
    pub flow_cache_misses: Family<FlowLabel, Counter>,
    pub flows_in_flight: Gauge,
    pub plugin_compile: HistogramFamily<PluginLabel>,
    pub plugin_instantiate: HistogramFamily<PluginLabel>,
    pub plugin_traps: Family<TrapLabel, Counter>,
    pub redis_duration: HistogramFamily<OpLabel>,
    pub redis_errors: Family<OpLabel, Counter>,
    pub plugins_loaded: Gauge,
    pub plugins_skipped: Gauge,
    pub state_write_errors: Counter,
    pub degraded: Gauge,
    pub fenced_writes: Counter,
    pub offloaded_values: Counter,
    pub offloaded_bytes: Counter,
    pub leases_lost: Counter,
    pub flows_reclaimed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    // One registration per metric, all in this one function: it is the
    // catalogue of what flowhost exports (the test below counts them).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let flows_started = Family::<FlowLabel, Counter>::default();
        registry.register(
            "flowhost_flows_started",
            "Flow runs started (new runs, resumes and retries), by flow",
            flows_started.clone(),
        );
        let flow_runs = Family::<FlowOutcome, Counter>::default();
        registry.register(
            "flowhost_flow_runs",
            "Flow runs ended, by flow and outcome (completed, failed, cancelled, paused)",
            flow_runs.clone(),
        );
        let flow_duration = HistogramFamily::<FlowLabel>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "flowhost_flow_duration_seconds",
            "Wall time of finished flow runs, by flow",
            flow_duration.clone(),
        );
        let step_runs = Family::<StepOutcome, Counter>::default();
        registry.register(
            "flowhost_step_runs",
            "Step attempts ended, by flow, step, plugin and outcome (completed, failed, interrupted)",
            step_runs.clone(),
        );
        let step_duration = HistogramFamily::<StepLabel>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "flowhost_step_duration_seconds",
            "Wall time of step attempts, plugin call included, by flow, step and plugin",
            step_duration.clone(),
        );
        let step_retries = Family::<StepLabel, Counter>::default();
        registry.register(
            "flowhost_step_retries",
            "Step attempts that failed and were retried after a backoff, by flow, step and plugin",
            step_retries.clone(),
        );
        let cache_hits = Family::<PluginLabel, Counter>::default();
        registry.register(
            "flowhost_cache_hits",
            "Steps served from the result cache without running their plugin, by plugin",
            cache_hits.clone(),
        );
        let cache_misses = Family::<PluginLabel, Counter>::default();
        registry.register(
            "flowhost_cache_misses",
            "Cacheable steps whose result was not in the cache, by plugin",
            cache_misses.clone(),
        );
        let cache_stores = Family::<PluginLabel, Counter>::default();
        registry.register(
            "flowhost_cache_stores",
            "Step results written to the cache, by plugin",
            cache_stores.clone(),
        );
        let cache_single_flight_waits = Family::<PluginLabel, Counter>::default();
        registry.register(
            "flowhost_cache_single_flight_waits",
            "Steps that waited for another flow computing the same cache key, by plugin",
            cache_single_flight_waits.clone(),
        );
        let cache_invalidations = Family::<ByLabel, Counter>::default();
        registry.register(
            "flowhost_cache_invalidations",
            "Cache entries removed on request, by what selected them (key, plugin, flow)",
            cache_invalidations.clone(),
        );
        let cache_errors = Counter::default();
        registry.register(
            "flowhost_cache_errors",
            "Cache reads and writes that failed; the step ran without the cache",
            cache_errors.clone(),
        );
        let flow_cache_hits = Family::<FlowLabel, Counter>::default();
        registry.register(
            "flowhost_flow_cache_hits",
            "Flow runs answered from the whole-flow result cache, by flow",
            flow_cache_hits.clone(),
        );
        let flow_cache_misses = Family::<FlowLabel, Counter>::default();
        registry.register(
            "flowhost_flow_cache_misses",
            "Flow runs with the whole-flow cache on that found no stored result, by flow",
            flow_cache_misses.clone(),
        );
        let flows_in_flight = Gauge::default();
        registry.register(
            "flowhost_flows_in_flight",
            "Flow runs executing in this host now",
            flows_in_flight.clone(),
        );
        let plugin_compile = HistogramFamily::<PluginLabel>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "flowhost_plugin_compile_seconds",
            "Time to compile and validate a plugin component at load, by plugin",
            plugin_compile.clone(),
        );
        let plugin_instantiate = HistogramFamily::<PluginLabel>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "flowhost_plugin_instantiate_seconds",
            "Time to create a fresh sandbox and instance for one step, by plugin",
            plugin_instantiate.clone(),
        );
        let plugin_traps = Family::<TrapLabel, Counter>::default();
        registry.register(
            "flowhost_plugin_traps",
            "Plugin calls stopped by the host, by plugin and kind (wasm trap code, timed_out, interrupted, invalid_output, instantiate)",
            plugin_traps.clone(),
        );
        let redis_duration = HistogramFamily::<OpLabel>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "flowhost_redis_command_duration_seconds",
            "Latency of state and cache operations sent to Redis (one pipeline each), by operation",
            redis_duration.clone(),
        );
        let redis_errors = Family::<OpLabel, Counter>::default();
        registry.register(
            "flowhost_redis_errors",
            "State and cache operations that failed in Redis, by operation",
            redis_errors.clone(),
        );
        let plugins_loaded = Gauge::default();
        registry.register(
            "flowhost_plugins_loaded",
            "Plugins loaded from the plugins folder",
            plugins_loaded.clone(),
        );
        let plugins_skipped = Gauge::default();
        registry.register(
            "flowhost_plugins_skipped",
            "Files in the plugins folder that were not loaded (see GET /api/v1/plugins)",
            plugins_skipped.clone(),
        );
        let state_write_errors = Counter::default();
        registry.register(
            "flowhost_state_write_errors",
            "State writes that failed; each try of a write held while Redis is away counts",
            state_write_errors.clone(),
        );
        let degraded = Gauge::default();
        registry.register(
            "flowhost_degraded",
            "1 while Redis is configured but unreachable and new flows run on memory",
            degraded.clone(),
        );
        let fenced_writes = Counter::default();
        registry.register(
            "flowhost_state_fenced_writes",
            "State writes refused because another host had taken the flow's lease",
            fenced_writes.clone(),
        );
        let offloaded_values = Counter::default();
        registry.register(
            "flowhost_state_offloaded_values",
            "Large values of flow state stored as blobs and referred to",
            offloaded_values.clone(),
        );
        let offloaded_bytes = Counter::default();
        registry.register(
            "flowhost_state_offloaded_bytes",
            "Bytes of flow state stored as blobs instead of inline",
            offloaded_bytes.clone(),
        );
        let leases_lost = Counter::default();
        registry.register(
            "flowhost_leases_lost",
            "Flows this host stopped running because its lease on them was lost",
            leases_lost.clone(),
        );
        let flows_reclaimed = Counter::default();
        registry.register(
            "flowhost_flows_reclaimed",
            "Flows this host took over from a host that died or shut down",
            flows_reclaimed.clone(),
        );
        Metrics {
            registry,
            flows_started,
            flow_runs,
            flow_duration,
            step_runs,
            step_duration,
            step_retries,
            cache_hits,
            cache_misses,
            cache_stores,
            cache_single_flight_waits,
            cache_invalidations,
            cache_errors,
            flow_cache_hits,
            flow_cache_misses,
            flows_in_flight,
            plugin_compile,
            plugin_instantiate,
            plugin_traps,
            redis_duration,
            redis_errors,
            plugins_loaded,
            plugins_skipped,
            state_write_errors,
            degraded,
            fenced_writes,
            offloaded_values,
            offloaded_bytes,
            leases_lost,
            flows_reclaimed,
        }
    }

    /// Every metric in the Prometheus text format (0.0.4), which Prometheus
    /// and promtool read as is. The client library writes OpenMetrics, where a
    /// counter's family is named without `_total` and the samples with it;
    /// the classic format wants both named alike, so counter families are
    /// renamed, and the OpenMetrics `# EOF` is dropped.
    pub fn render(&self) -> String {
        let mut open = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut open, &self.registry);
        let counters: std::collections::HashSet<&str> = open
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{prefix}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }

    /// The name and type of every metric family flowhost registers, in the
    /// names Prometheus stores (counters with `_total`). Families appear in
    /// `/metrics` once they have a sample.
    pub fn catalog() -> Vec<(String, String)> {
        let m = Metrics::new();
        // A sample in every labelled family makes each one show.
        let _ = m.flows_started.get_or_create(&Default::default());
        let _ = m.flow_runs.get_or_create(&Default::default());
        let _ = m.flow_duration.get_or_create(&Default::default());
        let _ = m.step_runs.get_or_create(&Default::default());
        let _ = m.step_duration.get_or_create(&Default::default());
        let _ = m.step_retries.get_or_create(&Default::default());
        let _ = m.cache_hits.get_or_create(&Default::default());
        let _ = m.cache_misses.get_or_create(&Default::default());
        let _ = m.cache_stores.get_or_create(&Default::default());
        let _ = m
            .cache_single_flight_waits
            .get_or_create(&Default::default());
        let _ = m.cache_invalidations.get_or_create(&Default::default());
        let _ = m.flow_cache_hits.get_or_create(&Default::default());
        let _ = m.flow_cache_misses.get_or_create(&Default::default());
        let _ = m.plugin_compile.get_or_create(&Default::default());
        let _ = m.plugin_instantiate.get_or_create(&Default::default());
        let _ = m.plugin_traps.get_or_create(&Default::default());
        let _ = m.redis_duration.get_or_create(&Default::default());
        let _ = m.redis_errors.get_or_create(&Default::default());
        m.render()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
            .collect()
    }
}

fn plugin(name: &str) -> PluginLabel {
    PluginLabel {
        plugin: name.to_owned(),
    }
}

fn flow(name: &str) -> FlowLabel {
    FlowLabel {
        flow: name.to_owned(),
    }
}

fn step(flow: &str, step: &str, plugin: &str) -> StepLabel {
    StepLabel {
        flow: flow.to_owned(),
        step: step.to_owned(),
        plugin: plugin.to_owned(),
    }
}

impl Observer for Metrics {
    // One arm per event, in one match: the whole mapping from what happened
    // to what is counted, readable at a glance.
    fn record(&self, event: Event<'_>) {
        match event {
            Event::FlowStarted { flow: f } => {
                self.flows_in_flight.inc();
                self.flows_started.get_or_create(&flow(f)).inc();
            }
            Event::FlowLeft => {
                self.flows_in_flight.dec();
            }
            Event::FlowEnded {
                flow: f,
                status,
                seconds,
            } => {
                let outcome = FlowOutcome {
                    flow: f.to_owned(),
                    outcome: status.to_string(),
                };
                self.flow_runs.get_or_create(&outcome).inc();
                if matches!(status, FlowStatus::Completed | FlowStatus::Failed) {
                    self.flow_duration.get_or_create(&flow(f)).observe(seconds);
                }
            }
            Event::FlowCacheHit { flow: f } => {
                self.flow_cache_hits.get_or_create(&flow(f)).inc();
            }
            Event::FlowCacheMiss { flow: f } => {
                self.flow_cache_misses.get_or_create(&flow(f)).inc();
            }
            Event::StepAttempted {
                flow: f,
                step: s,
                plugin: p,
                outcome,
                seconds,
            } => {
                let label = StepOutcome {
                    flow: f.to_owned(),
                    step: s.to_owned(),
                    plugin: p.to_owned(),
                    outcome: outcome.to_owned(),
                };
                self.step_runs.get_or_create(&label).inc();
                self.step_duration
                    .get_or_create(&step(f, s, p))
                    .observe(seconds);
            }
            Event::StepRetried {
                flow: f,
                step: s,
                plugin: p,
            } => {
                self.step_retries.get_or_create(&step(f, s, p)).inc();
            }
            Event::PluginTrapped { plugin: p, kind } => {
                let label = TrapLabel {
                    plugin: p.to_owned(),
                    kind: kind.to_owned(),
                };
                self.plugin_traps.get_or_create(&label).inc();
            }
            Event::CacheHit { plugin: p } => {
                self.cache_hits.get_or_create(&plugin(p)).inc();
            }
            Event::CacheMiss { plugin: p } => {
                self.cache_misses.get_or_create(&plugin(p)).inc();
            }
            Event::CacheWaited { plugin: p } => {
                self.cache_single_flight_waits
                    .get_or_create(&plugin(p))
                    .inc();
            }
            Event::CacheStored { plugin: p } => {
                self.cache_stores.get_or_create(&plugin(p)).inc();
            }
            Event::CacheFailed => {
                self.cache_errors.inc();
            }
            Event::CacheInvalidated { by, removed } => {
                let label = ByLabel { by: by.to_owned() };
                self.cache_invalidations
                    .get_or_create(&label)
                    .inc_by(removed);
            }
            Event::StateWriteFailed => {
                self.state_write_errors.inc();
            }
            Event::WriteFenced => {
                self.fenced_writes.inc();
            }
            Event::ValueOffloaded { bytes } => {
                self.offloaded_values.inc();
                self.offloaded_bytes.inc_by(bytes as u64);
            }
            Event::LeaseLost => {
                self.leases_lost.inc();
            }
            Event::FlowReclaimed => {
                self.flows_reclaimed.inc();
            }
            Event::Degraded(on) => {
                self.degraded.set(i64::from(on));
            }
            Event::PluginCompiled { plugin: p, seconds } => {
                self.plugin_compile
                    .get_or_create(&plugin(p))
                    .observe(seconds);
            }
            Event::PluginInstantiated { plugin: p, seconds } => {
                self.plugin_instantiate
                    .get_or_create(&plugin(p))
                    .observe(seconds);
            }
            Event::StoreCall {
                op,
                seconds,
                failed,
            } => {
                let label = OpLabel { op: op.to_owned() };
                if failed {
                    self.redis_errors.get_or_create(&label).inc();
                } else {
                    self.redis_duration.get_or_create(&label).observe(seconds);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn the_catalog_lists_every_registered_family() {
        let registered = include_str!("metrics.rs")
            .matches(concat!("registry", ".register("))
            .count();
        let catalog = Metrics::catalog();
        assert_eq!(catalog.len(), registered, "{catalog:?}");
        assert!(
            catalog
                .iter()
                .all(|(name, _)| name.starts_with("flowhost_"))
        );
        for (name, kind) in &catalog {
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name} {kind}");
        }
    }
}
