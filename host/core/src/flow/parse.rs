//! Flow files → `FlowDefinition`: the YAML as written (`Raw*`), and its
//! validation, which reports every problem with the file and step it is in:
//! unknown plugin, reference to a missing step or input, duplicate step name,
//! bad retry or timeout, cycle.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    CacheSpec, FlowCacheSpec, FlowDefinition, FlowError, InputSpec, RetrySpec, Source, StepDef,
    Template,
};

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

/// What a step's validation needs to know of the rest of the file.
struct Context<'a> {
    raw: &'a RawFlow,
    step_names: BTreeSet<&'a str>,
    plugin_exists: &'a dyn Fn(&str) -> bool,
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
        let mut errors: Vec<FlowError> = header_problems(&raw)
            .into_iter()
            .map(|m| err(None, m))
            .collect();
        let cx = Context {
            raw: &raw,
            step_names: raw.steps.iter().map(|s| s.name.as_str()).collect(),
            plugin_exists,
        };
        let mut seen = BTreeSet::new();
        let mut steps = Vec::new();
        for raw_step in &raw.steps {
            let mut problems = Vec::new();
            if !is_name(&raw_step.name) {
                problems.push("step name must be letters, digits, '-' or '_'".into());
            }
            if !seen.insert(raw_step.name.as_str()) {
                problems.push("duplicate step name".into());
            }
            steps.push(parse_step(&cx, raw_step, &mut problems));
            errors.extend(problems.into_iter().map(|m| err(Some(&raw_step.name), m)));
        }
        let (outputs, problems) = parse_outputs(&cx);
        errors.extend(problems.into_iter().map(|m| err(None, m)));
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
}

/// What is wrong with the flow's name, steps list and input defaults.
fn header_problems(raw: &RawFlow) -> Vec<String> {
    let mut problems = Vec::new();
    if !is_name(&raw.name) {
        problems.push(format!(
            "flow name {:?} must be letters, digits, '-' or '_'",
            raw.name
        ));
    }
    if raw.steps.is_empty() {
        problems.push("a flow needs at least one step".into());
    }
    for (name, spec) in &raw.inputs {
        if let Some(default) = &spec.default
            && !spec.ty.accepts(default)
        {
            problems.push(format!(
                "input `{name}`: default {default} is not of type {:?}",
                spec.ty
            ));
        }
    }
    problems
}

/// One step as validated; its problems are added to `problems`.
fn parse_step(cx: &Context<'_>, raw_step: &RawStep, problems: &mut Vec<String>) -> StepDef {
    if !(cx.plugin_exists)(&raw_step.plugin) {
        problems.push(format!(
            "unknown plugin `{}`: no {}.wasm in the plugins folder",
            raw_step.plugin, raw_step.plugin
        ));
    }
    let config = match raw_step.config.clone().unwrap_or(Value::Object(Map::new())) {
        Value::Object(m) => Value::Object(m),
        Value::Null => Value::Object(Map::new()),
        other => {
            problems.push(format!("config must be a mapping, not {other}"));
            Value::Null
        }
    };
    let empty = Value::Object(Map::new());
    let input = match Template::parse(raw_step.input.as_ref().unwrap_or(&empty)) {
        Ok(t) => t,
        Err(m) => {
            problems.push(format!("input: {m}"));
            Template::Value(Value::Null)
        }
    };
    let depends_on = dependencies(cx, raw_step, &input, problems);
    let retry = raw_step.retry.clone().unwrap_or_default();
    if retry.max_attempts == Some(0)
        || retry.factor.is_some_and(|f| f < 1.0)
        || retry.jitter.is_some_and(|j| !(0.0..=1.0).contains(&j))
    {
        problems.push(
            "retry: max_attempts must be at least 1, factor at least 1.0, jitter in [0, 1]".into(),
        );
    }
    if raw_step.timeout_ms == Some(0) {
        problems.push("timeout_ms must be above 0".into());
    }
    StepDef {
        name: raw_step.name.clone(),
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
    }
}

/// The steps a step waits for: those its input refers to, and its
/// `depends_on`; references to nothing are problems.
fn dependencies(
    cx: &Context<'_>,
    raw_step: &RawStep,
    input: &Template,
    problems: &mut Vec<String>,
) -> BTreeSet<String> {
    let name = raw_step.name.as_str();
    let mut depends_on = BTreeSet::new();
    for r in input.references() {
        match &r.source {
            Source::Input(i) if !cx.raw.inputs.contains_key(i) => problems.push(format!(
                "input refers to {r}, but the flow declares no input `{i}`"
            )),
            Source::Step(s) if s == name => problems.push(format!(
                "input refers to {r}: a step cannot use its own output"
            )),
            Source::Step(s) if !cx.step_names.contains(s.as_str()) => {
                problems.push(format!("input refers to {r}, but there is no step `{s}`"))
            }
            Source::Step(s) => {
                depends_on.insert(s.clone());
            }
            Source::Input(_) => {}
        }
    }
    for d in &raw_step.depends_on {
        if !cx.step_names.contains(d.as_str()) || d == name {
            problems.push(format!("depends_on names `{d}`, which is not another step"));
        } else {
            depends_on.insert(d.clone());
        }
    }
    depends_on
}

/// The flow's outputs template, and what is wrong with its references.
fn parse_outputs(cx: &Context<'_>) -> (Template, Vec<String>) {
    let mut problems = Vec::new();
    let outputs = match Template::parse(&Value::Object(cx.raw.outputs.clone())) {
        Ok(t) => t,
        Err(m) => {
            problems.push(format!("outputs: {m}"));
            Template::Value(Value::Null)
        }
    };
    for r in outputs.references() {
        match &r.source {
            Source::Input(i) if !cx.raw.inputs.contains_key(i) => problems.push(format!(
                "outputs refer to {r}, but the flow declares no input `{i}`"
            )),
            Source::Step(s) if !cx.step_names.contains(s.as_str()) => {
                problems.push(format!("outputs refer to {r}, but there is no step `{s}`"))
            }
            _ => {}
        }
    }
    (outputs, problems)
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
