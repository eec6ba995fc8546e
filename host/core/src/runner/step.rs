//! One step, from its first attempt's `running` state (recorded by the
//! scheduler) to its final state, which it returns for the scheduler to
//! record: a cache lookup, then attempts under the step's retry policy, each
//! ending in an `Attempt`. Only what happens between attempts is written here,
//! held like the scheduler's writes: a retry whose start cannot be recorded
//! is not made.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use super::FlowRunner;
use super::active::Active;
use super::caching::CachePlan;
use super::hold::Hold;
use super::schedule::Finished;
use crate::cache::Leader;
use crate::executor::{Call, Execution, PluginError};
use crate::flow::{FlowDefinition, StepDef};
use crate::observe::Event;
use crate::state::{FlowId, FlowPatch, FlowStepState, StepStatus};

/// How one attempt of a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Attempt {
    Completed,
    /// Stopped from outside: a cancel, a shutdown, a lost lease.
    Interrupted,
    /// Failed, and the policy allows another attempt.
    Retry,
    /// Failed for good.
    Failed,
}

impl Attempt {
    /// The `outcome` label of the step-attempt metric.
    fn label(self) -> &'static str {
        match self {
            Attempt::Completed => "completed",
            Attempt::Interrupted => "interrupted",
            Attempt::Retry | Attempt::Failed => "failed",
        }
    }
}

impl FlowRunner {
    /// Runs step `index` of `def` from `st` (recorded running) to its final
    /// state: served from the cache, or attempted until it completes, fails
    /// for good or is interrupted.
    pub(super) async fn run_step(
        &self,
        flow_id: FlowId,
        def: &FlowDefinition,
        index: usize,
        (mut st, input): (FlowStepState, Value),
        active: &Active,
    ) -> Finished {
        if active.stop.is_cancelled() {
            // Stopped (a cancel, a shutdown, a lost lease) between being
            // recorded running and starting: the plugin is not called, and
            // the attempt stays due unless the flow was cancelled.
            st.status = if active.is_cancelled() {
                StepStatus::Cancelled
            } else {
                StepStatus::Pending
            };
            return (st, None);
        }
        let step = &def.steps[index];
        // The key covers the input as recorded: an offloaded value by its
        // reference, whose id is the hash of the value.
        let recorded = st.inputs.clone().unwrap_or(Value::Null);
        let plan = self
            .inner
            .executor
            .plugin(&step.plugin)
            .and_then(|p| self.cache_plan(def, step, &p, &recorded));
        let mut lead = None;
        if let Some(plan) = &plan {
            st.cache_key = Some(plan.key.clone());
            let clock = Instant::now();
            match self.cache_lookup(plan, &step.plugin).await {
                Ok(output) => match self.expand(&output).await {
                    Ok(whole) => {
                        st.status = StepStatus::Completed;
                        st.cached = true;
                        st.outputs = Some(output);
                        st.completed_at = Some(Utc::now());
                        st.execution_time = Some(clock.elapsed().as_secs_f64());
                        return (st, Some(whole));
                    }
                    // A cached value whose blob is gone: computed afresh.
                    Err(e) => {
                        tracing::warn!(error = %e, "cached output unreadable; running the step")
                    }
                },
                Err(l) => lead = l,
            }
        }
        let across = lead.as_ref().is_some_and(|l| l.across);
        let leader = lead.map(|l| l.local);
        let done = self
            .attempts(
                flow_id,
                (def, step),
                (st, &input),
                active,
                (plan.as_ref(), leader),
            )
            .await;
        if let (true, Some(plan)) = (across, &plan) {
            // Stored or not, the other hosts need not wait any longer.
            self.end_lead(&plan.key).await;
        }
        done
    }

    /// The attempts of a step under its retry policy, from `st` (recorded
    /// running) until one completes (its result then stored under `plan`,
    /// for the steps `leader` keeps waiting), fails for good, or the flow
    /// is stopped.
    async fn attempts(
        &self,
        flow_id: FlowId,
        (def, step): (&FlowDefinition, &StepDef),
        (mut st, input): (FlowStepState, &Value),
        active: &Active,
        (plan, mut leader): (Option<&CachePlan>, Option<Leader>),
    ) -> Finished {
        let policy = self.inner.config.retry.with_overrides(&step.retry);
        let mut tries = 0;
        loop {
            tries += 1;
            if tries > 1
                && !self
                    .record_retry_start(flow_id, step, &mut st, active)
                    .await
            {
                // Not recorded running, so not made: the attempt stays due.
                st.status = if active.is_cancelled() {
                    StepStatus::Cancelled
                } else {
                    StepStatus::Pending
                };
                return (st, None);
            }
            let attempt = self
                .attempt(
                    flow_id,
                    step,
                    (&mut st, input),
                    active,
                    tries < policy.max_attempts,
                )
                .await;
            self.observe(Event::StepAttempted {
                flow: &def.name,
                step: &step.name,
                plugin: &step.plugin,
                outcome: attempt.label(),
                seconds: st.execution_time.unwrap_or(0.0),
            });
            match attempt {
                Attempt::Completed => {
                    let whole = st.outputs.take().unwrap_or(Value::Null);
                    let kept = self.keep(flow_id, whole.clone()).await;
                    if let Some(plan) = plan {
                        self.store_step_result((def, step), plan, &kept, leader.take())
                            .await;
                    }
                    st.outputs = Some(kept);
                    return (st, Some(whole));
                }
                Attempt::Interrupted | Attempt::Failed => return (st, None),
                Attempt::Retry => {}
            }
            let delay = policy.delay(tries, fastrand::f64());
            if self
                .before_retry((def, step), flow_id, &mut st, active, delay)
                .await
            {
                return (st, None);
            }
            st.attempt += 1;
        }
    }

    /// Between two attempts: records the failed one (held while the store
    /// is away), then waits out the backoff. True when the flow was stopped
    /// meanwhile (`st` is then cancelled, or left due for a resume).
    async fn before_retry(
        &self,
        (def, step): (&FlowDefinition, &StepDef),
        flow_id: FlowId,
        st: &mut FlowStepState,
        active: &Active,
        delay: Duration,
    ) -> bool {
        let patch = FlowPatch::default();
        let recorded = self
            .save_held(flow_id, &[&*st], &patch, active, Hold::UntilStopped)
            .await;
        let waited = recorded && {
            self.observe(Event::StepRetried {
                flow: &def.name,
                step: &step.name,
                plugin: &step.plugin,
            });
            tokio::select! {
                () = tokio::time::sleep(delay) => true,
                () = active.stop.cancelled() => false,
            }
        };
        if waited {
            return false;
        }
        if active.is_cancelled() {
            st.status = StepStatus::Cancelled;
        } else {
            // Stopped between attempts (a shutdown, a lost lease): the next
            // attempt is due and runs on resume.
            st.status = StepStatus::Pending;
            st.attempt += 1;
        }
        true
    }

    /// Records a retry's attempt running before its plugin is called (held
    /// while the store is away); false when it could not be.
    async fn record_retry_start(
        &self,
        flow_id: FlowId,
        step: &StepDef,
        st: &mut FlowStepState,
        active: &Active,
    ) -> bool {
        st.status = StepStatus::Running;
        st.started_at = Some(Utc::now());
        st.completed_at = None;
        st.execution_time = None;
        let patch = FlowPatch {
            current_step: Some(step.name.clone()),
            ..FlowPatch::default()
        };
        self.save_held(flow_id, &[&*st], &patch, active, Hold::UntilStopped)
            .await
    }

    /// One call of the step's plugin with the whole `input`, its result
    /// (the whole output) written into `st`. An input that refers to a
    /// blob the store does not have fails without a call.
    async fn attempt(
        &self,
        flow_id: FlowId,
        step: &StepDef,
        (st, input): (&mut FlowStepState, &Value),
        active: &Active,
        may_retry: bool,
    ) -> Attempt {
        let clock = Instant::now();
        let id = flow_id.to_string();
        let call = Call {
            flow_id: &id,
            step: &step.name,
            attempt: st.attempt,
            config: &step.config,
            input,
            timeout: step.timeout,
            stop: &active.stop,
        };
        let execution = match self.missing_blob(input).await {
            Some(why) => Execution::failed(PluginError::InvalidInput(why)),
            None => self.inner.executor.execute(&step.plugin, &call).await,
        };
        st.stdout = execution.stdout;
        st.stderr = execution.stderr;
        st.completed_at = Some(Utc::now());
        st.execution_time = Some(clock.elapsed().as_secs_f64());
        match execution.result {
            Ok(output) => {
                st.status = StepStatus::Completed;
                st.outputs = Some(output);
                st.error = None;
                st.error_kind = None;
                Attempt::Completed
            }
            Err(PluginError::Interrupted) => {
                let (status, why) = if active.is_cancelled() {
                    (StepStatus::Cancelled, "cancelled while running")
                } else if active.is_unrecorded() {
                    // The store did not take the flow's state: it stopped
                    // here, and nothing is recorded.
                    (StepStatus::Pending, "interrupted: state store unreachable")
                } else if active.lost.load(Ordering::SeqCst) {
                    // Another host runs the flow now; nothing is recorded.
                    (StepStatus::Pending, "interrupted: lease lost")
                } else {
                    // Shutdown: this attempt runs again on resume.
                    (StepStatus::Pending, "interrupted by shutdown")
                };
                st.status = status;
                st.error = Some(why.into());
                Attempt::Interrupted
            }
            Err(e) => {
                if let Some(kind) = e.trap_kind() {
                    self.observe(Event::PluginTrapped {
                        plugin: &step.plugin,
                        kind,
                    });
                }
                tracing::warn!(flow_id = %flow_id, step = %step.name, plugin = %step.plugin, attempt = st.attempt, error = %e, "step attempt failed");
                st.status = StepStatus::Failed;
                st.error = Some(e.to_string());
                st.error_kind = Some(e.kind().to_owned());
                if e.is_retryable() && may_retry {
                    Attempt::Retry
                } else {
                    Attempt::Failed
                }
            }
        }
    }
}
