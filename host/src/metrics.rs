//! Every Prometheus metric flowhost exports, named in this one place.
//!
//! Labels are bounded: flow, step and plugin names come from the loaded
//! definitions, outcomes from fixed sets; never a flow id or an error text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowOutcome {
    pub flow: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabel {
    pub flow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepOutcome {
    pub flow: String,
    pub step: String,
    pub plugin: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrapLabel {
    pub plugin: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByLabel {
    pub by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
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
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Family::<PluginLabel, Counter>::default();
            registry.register(name, help, c.clone());
            c
        };
        let cache_hits = counter(
            &mut registry,
            "flowhost_cache_hits",
            "Steps served from the result cache without running their plugin, by plugin",
        );
        let cache_misses = counter(
            &mut registry,
            "flowhost_cache_misses",
            "Cacheable steps whose result was not in the cache, by plugin",
        );
        let cache_stores = counter(
            &mut registry,
            "flowhost_cache_stores",
            "Step results written to the cache, by plugin",
        );
        let cache_single_flight_waits = counter(
            &mut registry,
            "flowhost_cache_single_flight_waits",
            "Steps that waited for another flow computing the same cache key, by plugin",
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
            "State writes that failed; the flow went on without them",
            state_write_errors.clone(),
        );
        let degraded = Gauge::default();
        registry.register(
            "flowhost_degraded",
            "1 while Redis is configured but unreachable and new flows run on memory",
            degraded.clone(),
        );
        Metrics {
            registry,
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
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
