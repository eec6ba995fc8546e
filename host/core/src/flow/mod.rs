//! Flow definitions: YAML files parsed into a validated `FlowDefinition`.
//!
//! Validation reports every problem with the file and step it is in: unknown
//! plugin, reference to a missing step or input, duplicate step name, cycle.
//! A `FlowDefinition` that exists is valid: its steps form a DAG over known
//! plugins. This module knows nothing of wasmtime, Redis or HTTP.

mod catalog;
mod parse;
mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use catalog::{FlowCatalog, FlowSet, PluginAvailability, WaitingFlow};
pub use template::{Reference, Scope, Source, Template};

/// One problem in one flow file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowError {
    pub file: PathBuf,
    pub step: Option<String>,
    pub message: String,
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(step) = &self.step {
            write!(f, ": step `{step}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for FlowError {}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
    #[default]
    Any,
}

impl InputType {
    fn accepts(self, v: &Value) -> bool {
        match self {
            InputType::String => v.is_string(),
            InputType::Integer => v.is_i64() || v.is_u64(),
            InputType::Number => v.is_number(),
            InputType::Boolean => v.is_boolean(),
            InputType::Object => v.is_object(),
            InputType::Array => v.is_array(),
            InputType::Any => true,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    #[serde(rename = "type", default)]
    pub ty: InputType,
    /// Required unless it has a default; `required: false` makes it optional.
    #[serde(default)]
    pub required: Option<bool>,
    #[serde(default)]
    pub default: Option<Value>,
    #[serde(default)]
    pub description: Option<String>,
}

impl InputSpec {
    pub fn is_required(&self) -> bool {
        self.required.unwrap_or(self.default.is_none())
    }
}

/// A flow's cache settings: defaults for its steps, and whether a repeat run
/// with the same inputs returns the stored result of the whole flow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowCacheSpec {
    /// `false` turns caching off for every step of the flow.
    pub enabled: Option<bool>,
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub flow_result: bool,
}

/// A step's cache settings: `cache: false`, or `cache: {ttl_seconds, force}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    pub enabled: Option<bool>,
    pub ttl_seconds: Option<u64>,
    /// Cache even though the plugin says it is not deterministic.
    #[serde(default)]
    pub force: bool,
}

/// A step's retry policy as written in the flow file; keys left out take the
/// defaults from the configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    pub max_attempts: Option<u32>,
    pub initial_delay_ms: Option<u64>,
    pub factor: Option<f64>,
    pub max_delay_ms: Option<u64>,
    pub jitter: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct StepDef {
    pub name: String,
    pub plugin: String,
    pub input: Template,
    /// Always a JSON object.
    pub config: Value,
    /// Steps that must complete first: the referenced ones and `depends_on`.
    pub depends_on: BTreeSet<String>,
    pub timeout: Option<Duration>,
    pub retry: RetrySpec,
    pub cache: CacheSpec,
}

/// A validated flow: its steps form a DAG over plugins that exist.
#[derive(Clone, Debug)]
pub struct FlowDefinition {
    pub name: String,
    pub description: String,
    pub inputs: BTreeMap<String, InputSpec>,
    /// In file order.
    pub steps: Vec<StepDef>,
    pub outputs: Template,
    pub cache: FlowCacheSpec,
    /// blake3 of the file's bytes, hex.
    pub hash: String,
    pub file: PathBuf,
}

impl FlowDefinition {
    pub fn step(&self, name: &str) -> Option<&StepDef> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Checks the inputs of a run against the declared ones and fills in
    /// defaults. Every problem is listed, each saying what to fix.
    pub fn resolve_inputs(
        &self,
        given: Map<String, Value>,
    ) -> Result<Map<String, Value>, Vec<String>> {
        let mut problems = Vec::new();
        for key in given.keys() {
            if !self.inputs.contains_key(key) {
                let known: Vec<&str> = self.inputs.keys().map(String::as_str).collect();
                problems.push(format!(
                    "unknown input `{key}`: flow `{}` takes [{}]",
                    self.name,
                    known.join(", ")
                ));
            }
        }
        let mut resolved = Map::new();
        for (name, spec) in &self.inputs {
            match given.get(name).filter(|v| !v.is_null()) {
                Some(v) if !spec.ty.accepts(v) => problems.push(format!(
                    "input `{name}` must be of type {}, got {}",
                    serde_json::to_value(spec.ty)
                        .unwrap_or_default()
                        .as_str()
                        .unwrap_or("any"),
                    type_name(v)
                )),
                Some(v) => {
                    resolved.insert(name.clone(), v.clone());
                }
                None => match &spec.default {
                    Some(d) => {
                        resolved.insert(name.clone(), d.clone());
                    }
                    None if spec.is_required() => {
                        problems.push(format!("missing required input `{name}`"))
                    }
                    None => {}
                },
            }
        }
        if problems.is_empty() {
            Ok(resolved)
        } else {
            Err(problems)
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn parse(text: &str) -> Result<FlowDefinition, Vec<FlowError>> {
        FlowDefinition::parse(Path::new("flows/t.yaml"), text, &|p| {
            p == "upper" || p == "count"
        })
    }

    fn messages(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_valid_flow_records_dependencies_from_references() {
        let def = parse(
            "name: t\ninputs:\n  text: {type: string}\nsteps:\n  - name: a\n    plugin: upper\n    input: {text: '${inputs.text}'}\n  - name: b\n    plugin: count\n    input: {text: '${steps.a.output.text}'}\noutputs:\n  n: '${steps.b.output}'\n",
        )
        .unwrap();
        assert_eq!(def.steps[1].depends_on, BTreeSet::from(["a".to_owned()]));
        assert!(def.steps[0].depends_on.is_empty());
        assert_eq!(def.steps[0].config, json!({}));
    }

    #[test]
    fn errors_name_the_file_and_step() {
        let m = messages(
            "name: t\nsteps:\n  - name: a\n    plugin: nope\n  - name: a\n    plugin: upper\n    input: '${inputs.x}'\n  - name: c\n    plugin: upper\n    input: '${steps.zz.output}'\n",
        );
        assert_eq!(
            m,
            vec![
                "flows/t.yaml: step `a`: unknown plugin `nope`: no nope.wasm in the plugins folder",
                "flows/t.yaml: step `a`: duplicate step name",
                "flows/t.yaml: step `a`: input refers to ${inputs.x}, but the flow declares no input `x`",
                "flows/t.yaml: step `c`: input refers to ${steps.zz.output}, but there is no step `zz`",
            ]
        );
    }

    #[test]
    fn cycles_are_reported_with_their_path() {
        let m = messages(
            "name: t\nsteps:\n  - name: a\n    plugin: upper\n    input: '${steps.c.output}'\n  - name: b\n    plugin: upper\n    input: '${steps.a.output}'\n  - name: c\n    plugin: upper\n    depends_on: [b]\n",
        );
        assert_eq!(
            m,
            vec!["flows/t.yaml: step `a`: steps form a cycle: a → c → b → a"]
        );
    }

    #[test]
    fn yaml_errors_and_unknown_keys_are_reported() {
        assert!(messages("name: [")[0].starts_with("flows/t.yaml: invalid YAML"));
        let m = messages("name: t\nsteps:\n  - name: a\n    plugin: upper\n    inptu: {}\n");
        assert!(m[0].contains("inptu"), "{m:?}");
    }

    #[test]
    fn cache_settings_accept_a_switch_or_a_mapping() {
        let def = parse("name: t\ncache: {ttl_seconds: 60, flow_result: true}\nsteps:\n  - name: a\n    plugin: upper\n    cache: false\n  - name: b\n    plugin: upper\n    cache: {ttl_seconds: 5, force: true}\n  - name: c\n    plugin: upper\n").unwrap();
        assert_eq!(
            def.cache,
            FlowCacheSpec {
                enabled: None,
                ttl_seconds: Some(60),
                flow_result: true
            }
        );
        assert_eq!(def.steps[0].cache.enabled, Some(false));
        assert_eq!(
            def.steps[1].cache,
            CacheSpec {
                enabled: None,
                ttl_seconds: Some(5),
                force: true
            }
        );
        assert_eq!(def.steps[2].cache, CacheSpec::default());
        assert!(
            parse("name: t\nsteps:\n  - name: a\n    plugin: upper\n    cache: {ttl: 5}\n")
                .is_err()
        );
    }

    #[test]
    fn inputs_are_checked_and_defaulted() {
        let def = parse("name: t\ninputs:\n  text: {type: string}\n  n: {type: integer, default: 3}\nsteps:\n  - name: a\n    plugin: upper\n").unwrap();
        let ok = def
            .resolve_inputs(json!({"text": "x"}).as_object().unwrap().clone())
            .unwrap();
        assert_eq!(Value::Object(ok), json!({"text": "x", "n": 3}));
        let err = def
            .resolve_inputs(json!({"n": "3", "extra": 1}).as_object().unwrap().clone())
            .unwrap_err();
        assert_eq!(
            err,
            vec![
                "unknown input `extra`: flow `t` takes [n, text]",
                "input `n` must be of type integer, got string",
                "missing required input `text`",
            ]
        );
    }
}
