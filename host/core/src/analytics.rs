//! Flow analytics computed from stored runs: runs by status, flow duration
//! percentiles, per-step durations and failure reasons, cache hit rate.
//! Pure: the caller fetches the runs; nothing here does I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::state::{FlowState, FlowStatus, StepStatus};

/// `30s`, `15m`, `1h`, `7d`.
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let bad = || format!("window {text:?}: write a number and a unit, such as 30s, 15m, 1h or 7d");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: u64 = text[..split].parse().map_err(|_| bad())?;
    let unit = match &text[split..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    if n == 0 || n > 366 * 86_400 / unit {
        return Err(format!("window {text:?} must be between 1s and 366d"));
    }
    Ok(Duration::from_secs(n * unit))
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
}

impl Percentiles {
    /// Nearest-rank percentiles.
    pub fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let rank =
            |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Percentiles {
            p50: Some(rank(0.50)),
            p95: Some(rank(0.95)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reason {
    pub reason: String,
    pub count: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepStats {
    pub step: String,
    pub completed: usize,
    pub failed: usize,
    pub cached: usize,
    /// Seconds, over completed steps that ran (cache hits excluded).
    pub duration_seconds: Percentiles,
    /// The most frequent errors, most frequent first (at most 10).
    pub failure_reasons: Vec<Reason>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CacheStats {
    /// Steps that used the cache (hit or stored).
    pub cacheable_steps: usize,
    pub hits: usize,
    pub hit_rate: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowAnalytics {
    pub flow: String,
    pub window_seconds: u64,
    /// Runs examined.
    pub runs: usize,
    pub runs_by_status: BTreeMap<String, usize>,
    /// Seconds, over completed and failed runs.
    pub duration_seconds: Percentiles,
    pub steps: Vec<StepStats>,
    pub cache: CacheStats,
}

/// Computes the analytics of `runs` of the flow whose steps are `steps`.
pub fn compute(
    flow: &str,
    window: Duration,
    steps: &[String],
    runs: &[FlowState],
) -> FlowAnalytics {
    let mut by_status = BTreeMap::new();
    let mut durations = Vec::new();
    for run in runs {
        *by_status.entry(run.status.to_string()).or_insert(0) += 1;
        if matches!(run.status, FlowStatus::Completed | FlowStatus::Failed)
            && let Some(t) = run.total_execution_time
        {
            durations.push(t);
        }
    }
    let mut cache = CacheStats {
        cacheable_steps: 0,
        hits: 0,
        hit_rate: None,
    };
    let step_stats = steps
        .iter()
        .map(|name| step_stats(name, runs, &mut cache))
        .collect();
    cache.hit_rate =
        (cache.cacheable_steps > 0).then(|| cache.hits as f64 / cache.cacheable_steps as f64);
    FlowAnalytics {
        flow: flow.to_owned(),
        window_seconds: window.as_secs(),
        runs: runs.len(),
        runs_by_status: by_status,
        duration_seconds: Percentiles::of(durations),
        steps: step_stats,
        cache,
    }
}

/// One step's counts, durations and failure reasons over `runs`; its
/// cacheable executions and hits are added to `cache`.
fn step_stats(name: &str, runs: &[FlowState], cache: &mut CacheStats) -> StepStats {
    let (mut completed, mut failed, mut cached) = (0, 0, 0);
    let mut times = Vec::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for st in runs.iter().filter_map(|r| r.steps.get(name)) {
        if st.cache_key.is_some() {
            cache.cacheable_steps += 1;
        }
        match st.status {
            StepStatus::Completed if st.cached => {
                completed += 1;
                cached += 1;
                cache.hits += 1;
            }
            StepStatus::Completed => {
                completed += 1;
                times.extend(st.execution_time);
            }
            StepStatus::Failed => {
                failed += 1;
                let reason: String = st
                    .error
                    .as_deref()
                    .unwrap_or("unknown")
                    .chars()
                    .take(200)
                    .collect();
                *reasons.entry(reason).or_insert(0) += 1;
            }
            StepStatus::Pending | StepStatus::Running | StepStatus::Cancelled => {}
        }
    }
    let mut failure_reasons: Vec<Reason> = reasons
        .into_iter()
        .map(|(reason, count)| Reason { reason, count })
        .collect();
    failure_reasons.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    failure_reasons.truncate(10);
    StepStats {
        step: name.to_owned(),
        completed,
        failed,
        cached,
        duration_seconds: Percentiles::of(times),
        failure_reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_with_units_and_say_what_to_write() {
        assert_eq!(parse_window("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_window("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_window("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_window("1w").unwrap_err().contains("such as 30s"));
        assert!(parse_window("h").is_err());
        assert!(parse_window("0m").is_err());
        assert!(parse_window("999999999999999999999d").is_err());
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let p = Percentiles::of((1..=20).map(f64::from).collect());
        assert_eq!((p.p50, p.p95), (Some(10.0), Some(19.0)));
        assert_eq!(Percentiles::of(vec![]), Percentiles::default());
        assert_eq!(Percentiles::of(vec![3.0]).p95, Some(3.0));
    }
}
