//! A blob's reference in JSON: an object whose `$blob` member is the blob's
//! id, beside its `size` and `media_type`. A reference with `"offloaded":
//! true` stands for a JSON value the host moved out of a flow's state
//! because it was large; the runner puts the value back before a plugin sees
//! it. Any other reference reaches plugins as it is.

use serde_json::{Map, Value};

use super::BlobId;

/// The key that makes a JSON object a blob reference.
pub const BLOB_KEY: &str = "$blob";

/// A reference to a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    pub id: BlobId,
    /// 0 in a reference a caller wrote without it, until the runner fills it.
    pub size: u64,
    /// Empty in a reference a caller wrote without it.
    pub media_type: String,
    /// A JSON value moved out of the state (`media_type` is JSON).
    pub offloaded: bool,
}

/// A `$blob` object that is not a valid reference, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed blob reference at {path}: {reason}")]
pub struct MalformedRef {
    /// Where in the JSON: `inputs.image`, `[2].page`.
    pub path: String,
    pub reason: String,
}

impl BlobRef {
    pub fn new(id: BlobId, size: u64, media_type: impl Into<String>) -> Self {
        BlobRef {
            id,
            size,
            media_type: media_type.into(),
            offloaded: false,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert(BLOB_KEY.into(), Value::String(self.id.to_string()));
        m.insert("size".into(), Value::from(self.size));
        m.insert("media_type".into(), Value::String(self.media_type.clone()));
        if self.offloaded {
            m.insert("offloaded".into(), Value::Bool(true));
        }
        Value::Object(m)
    }

    /// `None` when `v` is not a `$blob` object; the reference, or why it is
    /// malformed, when it is.
    pub fn parse(v: &Value) -> Option<Result<BlobRef, String>> {
        let m = v.as_object()?;
        let id = m.get(BLOB_KEY)?;
        Some(Self::parse_members(id, m))
    }

    fn parse_members(id: &Value, m: &Map<String, Value>) -> Result<BlobRef, String> {
        let id: BlobId = id.as_str().ok_or("`$blob` must be a string")?.parse()?;
        let size = match m.get("size") {
            None => 0,
            Some(s) => s.as_u64().ok_or("`size` must be a whole number of bytes")?,
        };
        let media_type = match m.get("media_type") {
            None => String::new(),
            Some(t) => t
                .as_str()
                .ok_or("`media_type` must be a string")?
                .to_owned(),
        };
        let offloaded = match m.get("offloaded") {
            None => false,
            Some(o) => o.as_bool().ok_or("`offloaded` must be true or false")?,
        };
        if let Some(extra) = m
            .keys()
            .find(|k| !matches!(k.as_str(), BLOB_KEY | "size" | "media_type" | "offloaded"))
        {
            return Err(format!(
                "unexpected member `{extra}` (a reference has `$blob`, `size`, `media_type`)"
            ));
        }
        Ok(BlobRef {
            id,
            size,
            media_type,
            offloaded,
        })
    }
}

/// Every well-formed reference in `v`, depth first (malformed ones skipped).
pub fn refs_in(v: &Value) -> Vec<BlobRef> {
    let mut out = Vec::new();
    walk(v, &mut String::new(), &mut |_, r| {
        if let Ok(r) = r {
            out.push(r);
        }
        Ok(())
    })
    .expect("the visitor never fails");
    out
}

/// Every reference in `v`, or the first malformed one (its path starting at
/// `root`).
pub fn refs_in_strict(v: &Value, root: &str) -> Result<Vec<BlobRef>, MalformedRef> {
    let mut out = Vec::new();
    let mut path = root.to_owned();
    walk(v, &mut path, &mut |path, r| match r {
        Ok(r) => {
            out.push(r);
            Ok(())
        }
        Err(reason) => Err(MalformedRef {
            path: path.to_owned(),
            reason,
        }),
    })?;
    Ok(out)
}

type Visit<'a> = dyn FnMut(&str, Result<BlobRef, String>) -> Result<(), MalformedRef> + 'a;

fn walk(v: &Value, path: &mut String, visit: &mut Visit<'_>) -> Result<(), MalformedRef> {
    if let Some(r) = BlobRef::parse(v) {
        return visit(path, r);
    }
    let len = path.len();
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push_str(&format!("[{i}]"));
                walk(item, path, visit)?;
                path.truncate(len);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                walk(item, path, visit)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HEX: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn a_reference_round_trips_and_is_found_anywhere() {
        let r = BlobRef::new(format!("blake3:{HEX}").parse().unwrap(), 5, "image/png");
        let doc = json!({"a": [1, {"img": r.to_json()}], "b": "x"});
        assert_eq!(refs_in(&doc), vec![r.clone()]);
        assert_eq!(refs_in_strict(&doc, "inputs").unwrap(), vec![r]);
        assert_eq!(BlobId::of(b"").to_string(), format!("blake3:{HEX}"));
    }

    #[test]
    fn malformed_references_name_their_place() {
        for (bad, why) in [
            (json!({"$blob": "md5:00"}), "not a blob id"),
            (json!({"$blob": 7}), "must be a string"),
            (
                json!({"$blob": format!("blake3:{HEX}"), "size": -1}),
                "whole number",
            ),
            (
                json!({"$blob": format!("blake3:{HEX}"), "colour": "red"}),
                "unexpected member",
            ),
        ] {
            let doc = json!({"pages": [{"scan": bad}]});
            let e = refs_in_strict(&doc, "inputs").unwrap_err();
            assert_eq!(e.path, "inputs.pages[0].scan");
            assert!(e.reason.contains(why), "{}", e.reason);
            assert!(refs_in(&doc).is_empty());
        }
        // A caller may leave out size and media type.
        let bare = json!({"$blob": format!("blake3:{HEX}")});
        assert_eq!(refs_in_strict(&bare, "").unwrap()[0].size, 0);
    }
}
