//! Step inputs and flow outputs as templates: JSON in which a string may refer
//! to a flow input or an earlier step's output, `${inputs.NAME.path}` or
//! `${steps.NAME.output.path}`. A string that is one reference takes the
//! referenced value whole (any JSON type); references inside longer text are
//! interpolated. `$${` writes a literal `${`.

use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum Template {
    Value(Value),
    Ref(Reference),
    Text(Vec<Part>),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Lit(String),
    Ref(Reference),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Input(String),
    Step(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub source: Source,
    /// Keys (or array indices) below the input or the step's output.
    pub path: Vec<String>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Input(n) => write!(f, "${{inputs.{n}")?,
            Source::Step(n) => write!(f, "${{steps.{n}.output")?,
        }
        for seg in &self.path {
            write!(f, ".{seg}")?;
        }
        f.write_str("}")
    }
}

/// What references resolve against while a flow runs.
pub struct Scope<'a> {
    pub inputs: &'a Map<String, Value>,
    pub outputs: &'a HashMap<String, Value>,
}

impl Template {
    /// Parses a JSON value from a flow file; errors name the bad reference.
    pub fn parse(value: &Value) -> Result<Template, String> {
        Ok(match value {
            Value::String(s) => parse_text(s)?,
            Value::Array(items) => Template::Array(
                items
                    .iter()
                    .map(Template::parse)
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Template::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Template::parse(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => Template::Value(other.clone()),
        })
    }

    /// Every reference in the template, in order.
    pub fn references(&self) -> Vec<&Reference> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Reference>) {
        match self {
            Template::Value(_) => {}
            Template::Ref(r) => out.push(r),
            Template::Text(parts) => out.extend(parts.iter().filter_map(|p| match p {
                Part::Ref(r) => Some(r),
                Part::Lit(_) => None,
            })),
            Template::Array(items) => items.iter().for_each(|t| t.collect(out)),
            Template::Object(fields) => fields.iter().for_each(|(_, t)| t.collect(out)),
        }
    }

    /// Builds the JSON value; fails when a path leads nowhere.
    pub fn resolve(&self, scope: &Scope<'_>) -> Result<Value, String> {
        Ok(match self {
            Template::Value(v) => v.clone(),
            Template::Ref(r) => r.resolve(scope)?.clone(),
            Template::Text(parts) => {
                let mut text = String::new();
                for part in parts {
                    match part {
                        Part::Lit(s) => text.push_str(s),
                        Part::Ref(r) => match r.resolve(scope)? {
                            Value::String(s) => text.push_str(s),
                            other => text.push_str(&other.to_string()),
                        },
                    }
                }
                Value::String(text)
            }
            Template::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.resolve(scope))
                    .collect::<Result<_, _>>()?,
            ),
            Template::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), t.resolve(scope)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
}

impl Reference {
    fn resolve<'a>(&self, scope: &'a Scope<'_>) -> Result<&'a Value, String> {
        let mut current = match &self.source {
            Source::Input(name) => scope
                .inputs
                .get(name)
                .ok_or_else(|| format!("{self}: flow input `{name}` was not given"))?,
            Source::Step(name) => scope
                .outputs
                .get(name)
                .ok_or_else(|| format!("{self}: step `{name}` has no output"))?,
        };
        for seg in &self.path {
            let next = match current {
                Value::Object(map) => map.get(seg),
                Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            current =
                next.ok_or_else(|| format!("{self}: no `{seg}` in {}", describe_value(current)))?;
        }
        Ok(current)
    }
}

fn describe_value(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let keys: Vec<&str> = map.keys().map(String::as_str).take(10).collect();
            format!("an object with keys [{}]", keys.join(", "))
        }
        Value::Array(items) => format!("an array of {} items", items.len()),
        Value::String(_) => "a string".into(),
        Value::Number(_) => "a number".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Null => "null".into(),
    }
}

fn parse_text(s: &str) -> Result<Template, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            lit.push_str(&rest[..pos - 1]);
            lit.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        lit.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed reference in {s:?}: add a `}}`"))?;
        if !lit.is_empty() {
            parts.push(Part::Lit(std::mem::take(&mut lit)));
        }
        parts.push(Part::Ref(parse_reference(after[..end].trim())?));
        rest = &after[end + 1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(match parts.as_slice() {
        [] => Template::Value(Value::String(String::new())),
        [Part::Lit(l)] => Template::Value(Value::String(l.clone())),
        [Part::Ref(r)] => Template::Ref(r.clone()),
        _ => Template::Text(parts),
    })
}

fn parse_reference(body: &str) -> Result<Reference, String> {
    let segs: Vec<&str> = body.split('.').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(format!(
            "bad reference `${{{body}}}`: empty name between dots"
        ));
    }
    match segs.as_slice() {
        ["inputs", name, path @ ..] => Ok(Reference {
            source: Source::Input((*name).to_owned()),
            path: path.iter().map(|s| (*s).to_owned()).collect(),
        }),
        ["steps", name, "output", path @ ..] => Ok(Reference {
            source: Source::Step((*name).to_owned()),
            path: path.iter().map(|s| (*s).to_owned()).collect(),
        }),
        _ => Err(format!(
            "bad reference `${{{body}}}`: write `${{inputs.NAME}}` or `${{steps.NAME.output}}`, \
             optionally followed by `.field` parts"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope_with<'a>(
        inputs: &'a Map<String, Value>,
        outputs: &'a HashMap<String, Value>,
    ) -> Scope<'a> {
        Scope { inputs, outputs }
    }

    #[test]
    fn whole_references_keep_their_type_and_text_interpolates() {
        let t = Template::parse(&json!({
            "n": "${inputs.n}",
            "words": "${steps.a.output.items.1}",
            "msg": "got ${inputs.n} and ${steps.a.output.name}",
            "lit": "costs $${price}",
        }))
        .unwrap();
        let inputs = json!({"n": 3}).as_object().unwrap().clone();
        let outputs = HashMap::from([("a".to_owned(), json!({"items": [1, [2, 3]], "name": "x"}))]);
        let v = t.resolve(&scope_with(&inputs, &outputs)).unwrap();
        assert_eq!(
            v,
            json!({"n": 3, "words": [2, 3], "msg": "got 3 and x", "lit": "costs ${price}"})
        );
        assert_eq!(t.references().len(), 4);
    }

    #[test]
    fn bad_references_say_what_to_write() {
        let err = Template::parse(&json!("${step.a}")).unwrap_err();
        assert!(err.contains("write `${inputs.NAME}`"), "{err}");
        let err = Template::parse(&json!("${inputs.a")).unwrap_err();
        assert!(err.contains("unclosed"), "{err}");
    }

    #[test]
    fn a_missing_field_names_what_is_there() {
        let t = Template::parse(&json!("${steps.a.output.nope}")).unwrap();
        let inputs = Map::new();
        let outputs = HashMap::from([("a".to_owned(), json!({"text": "x"}))]);
        let err = t.resolve(&scope_with(&inputs, &outputs)).unwrap_err();
        assert_eq!(
            err,
            "${steps.a.output.nope}: no `nope` in an object with keys [text]"
        );
    }
}
