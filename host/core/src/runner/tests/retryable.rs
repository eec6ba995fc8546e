//! The runner's tests: which failures are retried.

use super::*;

#[tokio::test(start_paused = true)]
async fn timeouts_traps_and_panics_are_retried_limits_and_verdicts_are_not() {
    use std::time::Duration as D;
    /// A failure's kind, how to make one, and whether it is retried.
    type Kind = (&'static str, fn() -> PluginError, bool);
    let kinds: Vec<Kind> = vec![
        ("retryable", || PluginError::Retryable("busy".into()), true),
        ("timed_out", || PluginError::TimedOut(D::from_secs(1)), true),
        (
            "trapped",
            || PluginError::Trapped {
                kind: "integer_divide_by_zero".into(),
                message: "divide by zero".into(),
            },
            true,
        ),
        ("panicked", || PluginError::Panicked("boom".into()), true),
        (
            "instantiate",
            || PluginError::Instantiate("busy".into()),
            true,
        ),
        (
            "invalid_input",
            || PluginError::InvalidInput("no".into()),
            false,
        ),
        ("failed", || PluginError::Failed("no".into()), false),
        (
            "invalid_output",
            || PluginError::InvalidOutput("x".into()),
            false,
        ),
        (
            "out_of_memory",
            || PluginError::OutOfMemory {
                wanted: 2,
                limit: 1,
            },
            false,
        ),
        ("stack_exhausted", || PluginError::StackExhausted, false),
        ("fuel_exhausted", || PluginError::FuelExhausted(10), false),
        (
            "input_too_large",
            || PluginError::InputTooLarge { size: 2, limit: 1 },
            false,
        ),
        (
            "output_too_large",
            || PluginError::OutputTooLarge { size: 2, limit: 1 },
            false,
        ),
        (
            "capability_denied",
            || PluginError::CapabilityDenied {
                capability: "http",
                detail: "example.com".into(),
                plugin_said: "refused".into(),
            },
            false,
        ),
    ];
    let mut exec = FakeExecutor::new();
    let mut yaml = String::from("name: kinds\nsteps:\n");
    for (kind, error, _) in &kinds {
        exec = exec.with(kind, false, fail(*error));
        yaml.push_str(&format!(
            "  - name: {kind}\n    plugin: {kind}\n    retry: {{max_attempts: 2, initial_delay_ms: 1}}\n"
        ));
    }
    let h = Harness::new(exec, &[yaml.as_str()]);
    let end = h.run("kinds", json!({})).await;
    let stored = h.stored(end.flow_id).await;
    for (kind, _, retried) in &kinds {
        let step = &stored.steps[*kind];
        assert_eq!(step.error_kind.as_deref(), Some(*kind));
        let calls = h.exec.calls(kind);
        assert_eq!(
            (calls, step.attempt),
            if *retried { (2, 2) } else { (1, 1) },
            "`{kind}` is {}retried",
            if *retried { "" } else { "not " }
        );
    }
}
