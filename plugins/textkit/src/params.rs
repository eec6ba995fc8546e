//! Reading a step's JSON input and config. Every failure is a message that
//! says what to fix, for the executors to return as `invalid-input`.

use serde_json::{Map, Value};

/// A step's config: a JSON object.
pub type Config = Map<String, Value>;

/// Names the JSON type of `value`, as error messages show it.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Shows `value` in an error message: a number as itself, anything else by type.
fn shown(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        other => type_name(other).to_string(),
    }
}

/// Parses a step's input.
pub fn parse_input(input: &str) -> Result<Value, String> {
    serde_json::from_str(input).map_err(|e| {
        format!("input is not valid JSON ({e}); pass a JSON object such as {{\"text\": \"...\"}}")
    })
}

/// The `text` string of an input object.
pub fn text_field(input: &Value) -> Result<&str, String> {
    let object = input.as_object().ok_or_else(|| {
        format!(
            "input must be a JSON object such as {{\"text\": \"...\"}}, got {}",
            type_name(input)
        )
    })?;
    match object.get("text") {
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(format!(
            "input \"text\" must be a string, got {}",
            type_name(other)
        )),
        None => Err("input is missing \"text\": pass {\"text\": \"...\"}".to_string()),
    }
}

/// Parses a step's config, which must be a JSON object whose keys are all in
/// `known`. Empty text and `null` stand for an empty config.
pub fn parse_config(config: &str, known: &[&str]) -> Result<Config, String> {
    let config = config.trim();
    if config.is_empty() {
        return Ok(Config::new());
    }
    let value: Value =
        serde_json::from_str(config).map_err(|e| format!("config is not valid JSON ({e})"))?;
    let map = match value {
        Value::Null => Config::new(),
        Value::Object(map) => map,
        other => {
            return Err(format!(
                "config must be a JSON object, got {}",
                type_name(&other)
            ));
        }
    };
    if let Some(key) = map.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(if known.is_empty() {
            format!("config has unknown key \"{key}\"; this executor takes no config")
        } else {
            format!(
                "config has unknown key \"{key}\"; expected one of: {}",
                known.join(", ")
            )
        });
    }
    Ok(map)
}

/// A boolean setting; `default` when absent or null.
pub fn get_bool(config: &Config, key: &str, default: bool) -> Result<bool, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(value)) => Ok(*value),
        Some(other) => Err(format!(
            "config \"{key}\" must be true or false, got {}",
            type_name(other)
        )),
    }
}

/// A whole-number setting of at least `min`; `default` when absent or null.
pub fn get_count(config: &Config, key: &str, default: u64, min: u64) -> Result<u64, String> {
    let value = match config.get(key) {
        None | Some(Value::Null) => return Ok(default),
        Some(value) => value,
    };
    let whole = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(f))
            .map(|f| f as u64)
    });
    match whole {
        Some(n) if n >= min => Ok(n),
        _ => Err(format!(
            "config \"{key}\" must be a whole number of at least {min}, got {}",
            shown(value)
        )),
    }
}

/// A list-of-strings setting; empty when absent or null.
pub fn get_string_list(config: &Config, key: &str) -> Result<Vec<String>, String> {
    let items = match config.get(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(format!(
                "config \"{key}\" must be an array of strings, got {}",
                type_name(other)
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => Err(format!(
                "config \"{key}\" must be an array of strings, but item {i} is {}",
                type_name(other)
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_text() {
        let input = parse_input(r#"{"text": "hi", "other": 1}"#).unwrap();
        assert_eq!(text_field(&input).unwrap(), "hi");
    }

    #[test]
    fn explains_bad_input() {
        assert!(parse_input("{").unwrap_err().contains("not valid JSON"));
        assert!(
            text_field(&json!({}))
                .unwrap_err()
                .contains("missing \"text\"")
        );
        assert!(
            text_field(&json!({"text": 3}))
                .unwrap_err()
                .contains("a number")
        );
        assert!(
            text_field(&json!("hi"))
                .unwrap_err()
                .contains("JSON object")
        );
    }

    #[test]
    fn reads_config() {
        assert!(parse_config("", &[]).unwrap().is_empty());
        assert!(parse_config("null", &[]).unwrap().is_empty());
        let config = parse_config(
            r#"{"a": true, "n": 5, "f": 7.0, "l": ["x"]}"#,
            &["a", "n", "f", "l"],
        )
        .unwrap();
        assert!(get_bool(&config, "a", false).unwrap());
        assert!(get_bool(&config, "b", true).unwrap());
        assert_eq!(get_count(&config, "n", 1, 1).unwrap(), 5);
        assert_eq!(get_count(&config, "f", 1, 1).unwrap(), 7);
        assert_eq!(get_count(&config, "m", 9, 1).unwrap(), 9);
        assert_eq!(
            get_string_list(&config, "l").unwrap(),
            vec!["x".to_string()]
        );
    }

    #[test]
    fn explains_bad_config() {
        assert!(parse_config("[]", &[]).unwrap_err().contains("JSON object"));
        assert!(
            parse_config(r#"{"x": 1}"#, &["a"])
                .unwrap_err()
                .contains("unknown key \"x\"")
        );
        let config = parse_config(r#"{"a": "yes", "n": -2, "l": [1]}"#, &["a", "n", "l"]).unwrap();
        assert!(
            get_bool(&config, "a", false)
                .unwrap_err()
                .contains("true or false")
        );
        assert!(
            get_count(&config, "n", 1, 1)
                .unwrap_err()
                .contains("got -2")
        );
        assert!(
            get_string_list(&config, "l")
                .unwrap_err()
                .contains("item 0")
        );
    }
}
