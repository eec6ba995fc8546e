//! Flow definitions: YAML files parsed into a validated `FlowDefinition`.
//!
//! Validation reports every problem with the file and step it is in: unknown
//! plugin, reference to a missing step or input, duplicate step name, cycle.
//! A `FlowDefinition` that exists is valid: its steps form a DAG over known
//! plugins. This module knows nothing of wasmtime, Redis or HTTP.

mod template;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlow {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    inputs: BTreeMap<String, InputSpec>,
    steps: Vec<RawStep>,
    #[serde(default)]
    outputs: Map<String, Value>,
    #[serde(default)]
    cache: FlowCacheSpec,
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

#[derive(Deserialize)]
#[serde(untagged)]
enum RawCache {
    Switch(bool),
    Spec(CacheSpec),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    plugin: String,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    retry: Option<RetrySpec>,
    #[serde(default)]
    cache: Option<RawCache>,
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
    /// Parses and validates one file's text. `plugin_exists` tells which
    /// plugin names are loaded.
    pub fn parse(
        file: &Path,
        text: &str,
        plugin_exists: &dyn Fn(&str) -> bool,
    ) -> Result<FlowDefinition, Vec<FlowError>> {
        let err = |step: Option<&str>, message: String| FlowError {
            file: file.to_owned(),
            step: step.map(str::to_owned),
            message,
        };
        let raw: RawFlow = serde_saphyr::from_str(text)
            .map_err(|e| vec![err(None, format!("invalid YAML: {e}"))])?;
        let mut errors = Vec::new();
        if !is_name(&raw.name) {
            errors.push(err(
                None,
                format!(
                    "flow name {:?} must be letters, digits, '-' or '_'",
                    raw.name
                ),
            ));
        }
        if raw.steps.is_empty() {
            errors.push(err(None, "a flow needs at least one step".into()));
        }
        for (name, spec) in &raw.inputs {
            if let Some(default) = &spec.default
                && !spec.ty.accepts(default)
            {
                errors.push(err(
                    None,
                    format!(
                        "input `{name}`: default {default} is not of type {:?}",
                        spec.ty
                    ),
                ));
            }
        }
        let step_names: BTreeSet<&str> = raw.steps.iter().map(|s| s.name.as_str()).collect();
        let mut seen = BTreeSet::new();
        let mut steps = Vec::new();
        for raw_step in &raw.steps {
            let name = raw_step.name.as_str();
            let mut step_err = |m: String| errors.push(err(Some(name), m));
            if !is_name(name) {
                step_err("step name must be letters, digits, '-' or '_'".into());
            }
            if !seen.insert(name) {
                step_err("duplicate step name".into());
            }
            if !plugin_exists(&raw_step.plugin) {
                step_err(format!(
                    "unknown plugin `{}`: no {}.wasm in the plugins folder",
                    raw_step.plugin, raw_step.plugin
                ));
            }
            let config = match raw_step.config.clone().unwrap_or(Value::Object(Map::new())) {
                Value::Object(m) => Value::Object(m),
                Value::Null => Value::Object(Map::new()),
                other => {
                    step_err(format!("config must be a mapping, not {other}"));
                    Value::Null
                }
            };
            let input = match Template::parse(
                raw_step
                    .input
                    .as_ref()
                    .unwrap_or(&Value::Object(Map::new())),
            ) {
                Ok(t) => t,
                Err(m) => {
                    step_err(format!("input: {m}"));
                    Template::Value(Value::Null)
                }
            };
            let mut depends_on = BTreeSet::new();
            for r in input.references() {
                match &r.source {
                    Source::Input(i) if !raw.inputs.contains_key(i) => step_err(format!(
                        "input refers to {r}, but the flow declares no input `{i}`"
                    )),
                    Source::Step(s) if s == name => step_err(format!(
                        "input refers to {r}: a step cannot use its own output"
                    )),
                    Source::Step(s) if !step_names.contains(s.as_str()) => {
                        step_err(format!("input refers to {r}, but there is no step `{s}`"))
                    }
                    Source::Step(s) => {
                        depends_on.insert(s.clone());
                    }
                    Source::Input(_) => {}
                }
            }
            for d in &raw_step.depends_on {
                if !step_names.contains(d.as_str()) || d == name {
                    step_err(format!("depends_on names `{d}`, which is not another step"));
                } else {
                    depends_on.insert(d.clone());
                }
            }
            let retry = raw_step.retry.clone().unwrap_or_default();
            if retry.max_attempts == Some(0)
                || retry.factor.is_some_and(|f| f < 1.0)
                || retry.jitter.is_some_and(|j| !(0.0..=1.0).contains(&j))
            {
                step_err(
                    "retry: max_attempts must be at least 1, factor at least 1.0, jitter in [0, 1]"
                        .into(),
                );
            }
            if raw_step.timeout_ms == Some(0) {
                step_err("timeout_ms must be above 0".into());
            }
            steps.push(StepDef {
                name: name.to_owned(),
                plugin: raw_step.plugin.clone(),
                input,
                config,
                depends_on,
                timeout: raw_step.timeout_ms.map(Duration::from_millis),
                retry,
                cache: match &raw_step.cache {
                    None => CacheSpec::default(),
                    Some(RawCache::Switch(on)) => CacheSpec {
                        enabled: Some(*on),
                        ..CacheSpec::default()
                    },
                    Some(RawCache::Spec(spec)) => spec.clone(),
                },
            });
        }
        let outputs = match Template::parse(&Value::Object(raw.outputs.clone())) {
            Ok(t) => t,
            Err(m) => {
                errors.push(err(None, format!("outputs: {m}")));
                Template::Value(Value::Null)
            }
        };
        for r in outputs.references() {
            match &r.source {
                Source::Input(i) if !raw.inputs.contains_key(i) => errors.push(err(
                    None,
                    format!("outputs refer to {r}, but the flow declares no input `{i}`"),
                )),
                Source::Step(s) if !step_names.contains(s.as_str()) => errors.push(err(
                    None,
                    format!("outputs refer to {r}, but there is no step `{s}`"),
                )),
                _ => {}
            }
        }
        if errors.is_empty()
            && let Some(cycle) = find_cycle(&steps)
        {
            errors.push(err(
                Some(&cycle[0]),
                format!("steps form a cycle: {}", cycle.join(" → ")),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(FlowDefinition {
            name: raw.name,
            description: raw.description,
            inputs: raw.inputs,
            steps,
            outputs,
            cache: raw.cache,
            hash: blake3::hash(text.as_bytes()).to_hex().to_string(),
            file: file.to_owned(),
        })
    }

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

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A cycle among the steps, as the names along it with the first repeated at
/// the end; `None` for a DAG.
fn find_cycle(steps: &[StepDef]) -> Option<Vec<String>> {
    let deps: HashMap<&str, &BTreeSet<String>> = steps
        .iter()
        .map(|s| (s.name.as_str(), &s.depends_on))
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut mark: HashMap<&str, u8> = HashMap::new();
    fn visit<'a>(
        node: &'a str,
        deps: &HashMap<&'a str, &'a BTreeSet<String>>,
        mark: &mut HashMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match mark.get(node) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle: Vec<String> =
                    path[start..].iter().map(|s| (*s).to_owned()).collect();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        mark.insert(node, 1);
        path.push(node);
        for d in deps.get(node).into_iter().flat_map(|s| s.iter()) {
            if let Some(c) = visit(d.as_str(), deps, mark, path) {
                return Some(c);
            }
        }
        path.pop();
        mark.insert(node, 2);
        None
    }
    for s in steps {
        if let Some(c) = visit(&s.name, &deps, &mut mark, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

/// The flows loaded from the flows folder, by name, and the files rejected.
#[derive(Default)]
pub struct FlowCatalog {
    flows: BTreeMap<String, Arc<FlowDefinition>>,
    errors: Vec<FlowError>,
}

impl FlowCatalog {
    /// Loads every `*.yaml` / `*.yml` in `dir`. Invalid files are reported in
    /// `errors` and left out; they never stop the host.
    pub fn load_dir(dir: &Path, plugin_exists: &dyn Fn(&str) -> bool) -> FlowCatalog {
        let mut catalog = FlowCatalog::default();
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect(),
            Err(e) => {
                catalog.errors.push(FlowError {
                    file: dir.to_owned(),
                    step: None,
                    message: format!("cannot read the flows folder: {e}"),
                });
                return catalog;
            }
        };
        paths.sort();
        for path in paths {
            catalog.load_file(&path, plugin_exists);
        }
        catalog
    }

    pub fn load_file(&mut self, path: &Path, plugin_exists: &dyn Fn(&str) -> bool) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.errors.push(FlowError {
                    file: path.to_owned(),
                    step: None,
                    message: format!("cannot read file: {e}"),
                });
                return;
            }
        };
        match FlowDefinition::parse(path, &text, plugin_exists) {
            Ok(def) => {
                if let Some(other) = self.flows.get(&def.name) {
                    self.errors.push(FlowError {
                        file: path.to_owned(),
                        step: None,
                        message: format!(
                            "flow name `{}` is already used by {}",
                            def.name,
                            other.file.display()
                        ),
                    });
                } else {
                    self.flows.insert(def.name.clone(), Arc::new(def));
                }
            }
            Err(errors) => self.errors.extend(errors),
        }
    }

    /// Adds a definition parsed elsewhere (tests, flows built in code),
    /// replacing any of the same name; returns it as the catalog holds it.
    pub fn insert(&mut self, def: FlowDefinition) -> Arc<FlowDefinition> {
        let def = Arc::new(def);
        self.flows.insert(def.name.clone(), def.clone());
        def
    }

    pub fn get(&self, name: &str) -> Option<&Arc<FlowDefinition>> {
        self.flows.get(name)
    }

    pub fn flows(&self) -> impl Iterator<Item = &Arc<FlowDefinition>> {
        self.flows.values()
    }

    pub fn errors(&self) -> &[FlowError] {
        &self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
