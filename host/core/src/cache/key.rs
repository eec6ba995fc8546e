//! Cache keys: blake3 over the plugin component's own hash, the contract
//! version, and the step's config and input in canonical JSON (sorted keys,
//! one number form), each length-prefixed. A rebuilt plugin with other bytes
//! never shares a key.

use serde_json::Value;

/// The key of one step's result.
pub fn step_key(plugin_hash: &str, contract: &str, config: &Value, input: &Value) -> String {
    let mut h = blake3::Hasher::new();
    field(&mut h, b"flowhost step result");
    field(&mut h, plugin_hash.as_bytes());
    field(&mut h, contract.as_bytes());
    field(&mut h, canonical_json(config).as_bytes());
    field(&mut h, canonical_json(input).as_bytes());
    h.finalize().to_hex().to_string()
}

/// The key of a whole flow's result: the definition's hash, the hashes of the
/// plugins its steps use (by step name), and the inputs.
pub fn flow_key(flow_hash: &str, plugin_hashes: &[(&str, &str)], inputs: &Value) -> String {
    let mut h = blake3::Hasher::new();
    field(&mut h, b"flowhost flow result");
    field(&mut h, flow_hash.as_bytes());
    let mut plugins = plugin_hashes.to_vec();
    plugins.sort();
    for (step, hash) in plugins {
        field(&mut h, step.as_bytes());
        field(&mut h, hash.as_bytes());
    }
    field(&mut h, canonical_json(inputs).as_bytes());
    h.finalize().to_hex().to_string()
}

fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// JSON text in one form per value: object keys sorted by their bytes, no
/// whitespace, and a number with an integral value (within ±2^53) written as
/// an integer, so `1`, `1.0` and `1e0` agree.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null | Value::Bool(_) | Value::String(_) => out.push_str(&v.to_string()),
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                out.push_str(&n.to_string());
            } else {
                let f = n.as_f64().unwrap_or(0.0);
                const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
                if f.fract() == 0.0 && f.abs() <= EXACT {
                    out.push_str(&(f as i64).to_string());
                } else {
                    out.push_str(&n.to_string());
                }
            }
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(val, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_and_unifies_numbers() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1.0, 2.5, {"z": 1, "y": null}], "a": 1e0}"#).unwrap();
        assert_eq!(
            canonical_json(&a),
            r#"{"a":1,"b":[1,2.5,{"y":null,"z":1}]}"#
        );
        assert_eq!(canonical_json(&json!(-0.0)), "0");
        assert_eq!(canonical_json(&json!(1e300)), "1e+300");
        assert_eq!(canonical_json(&json!("é\n")), r#""é\n""#);
    }

    #[test]
    fn keys_ignore_key_order_and_see_every_part() {
        let cfg = json!({"top_n": 3});
        let k = step_key("h1", "c", &cfg, &json!({"a": 1, "b": 2}));
        assert_eq!(k, step_key("h1", "c", &cfg, &json!({"b": 2, "a": 1.0})));
        assert_ne!(k, step_key("h2", "c", &cfg, &json!({"a": 1, "b": 2})));
        assert_ne!(k, step_key("h1", "c2", &cfg, &json!({"a": 1, "b": 2})));
        assert_ne!(
            k,
            step_key("h1", "c", &json!({"top_n": 4}), &json!({"a": 1, "b": 2}))
        );
        assert_ne!(k, step_key("h1", "c", &cfg, &json!({"a": 1, "b": 3})));
        // Length prefixes keep fields apart: moving bytes between them differs.
        assert_ne!(
            step_key("ab", "c", &cfg, &json!(1)),
            step_key("a", "bc", &cfg, &json!(1))
        );
        assert_eq!(k.len(), 64);
    }

    #[test]
    fn flow_keys_depend_on_every_plugin() {
        let inputs = json!({"text": "x"});
        let k = flow_key("f", &[("a", "h1"), ("b", "h2")], &inputs);
        assert_eq!(k, flow_key("f", &[("b", "h2"), ("a", "h1")], &inputs));
        assert_ne!(k, flow_key("f", &[("a", "h1"), ("b", "h3")], &inputs));
        assert_ne!(k, flow_key("g", &[("a", "h1"), ("b", "h2")], &inputs));
    }
}
