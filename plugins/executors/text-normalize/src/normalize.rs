//! Text normalisation: the options read from a step's config, the transform
//! itself, and `run`, which turns a step's config and input into its output.

use serde_json::json;
use textkit::params;

pub const INPUT_SCHEMA: &str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["text"],"properties":{"text":{"type":"string"}}}"#;

pub const OUTPUT_SCHEMA: &str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["text","changed","characters"],"properties":{"text":{"type":"string"},"changed":{"type":"boolean"},"characters":{"type":"integer","minimum":0}}}"#;

/// What to do to the text; each step is applied in field order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub strip_punctuation: bool,
    pub lowercase: bool,
    pub collapse_whitespace: bool,
    pub trim: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            strip_punctuation: false,
            lowercase: true,
            collapse_whitespace: true,
            trim: true,
        }
    }
}

impl Options {
    /// Reads the options from a step's config, keeping the default of each one absent.
    pub fn from_config(config: &str) -> Result<Self, String> {
        let config = params::parse_config(
            config,
            &[
                "lowercase",
                "collapse_whitespace",
                "strip_punctuation",
                "trim",
            ],
        )?;
        let default = Self::default();
        Ok(Self {
            strip_punctuation: params::get_bool(
                &config,
                "strip_punctuation",
                default.strip_punctuation,
            )?,
            lowercase: params::get_bool(&config, "lowercase", default.lowercase)?,
            collapse_whitespace: params::get_bool(
                &config,
                "collapse_whitespace",
                default.collapse_whitespace,
            )?,
            trim: params::get_bool(&config, "trim", default.trim)?,
        })
    }
}

/// Whether `c` is punctuation: ASCII punctuation and symbols, and the
/// general and CJK punctuation blocks, guillemets and inverted marks.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            c,
            '\u{a1}' | '\u{a7}' | '\u{ab}' | '\u{b6}' | '\u{b7}' | '\u{bb}' | '\u{bf}'
                | '\u{2010}'..='\u{2027}'
                | '\u{2030}'..='\u{205e}'
                | '\u{3001}'..='\u{3003}'
                | '\u{3008}'..='\u{3011}'
                | '\u{ff01}'..='\u{ff0f}'
        )
}

/// Replaces each run of whitespace with one space.
fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out
}

/// Applies `options` to `text`.
pub fn normalize(text: &str, options: Options) -> String {
    let mut out = if options.strip_punctuation {
        text.chars().filter(|&c| !is_punctuation(c)).collect()
    } else {
        text.to_string()
    };
    if options.lowercase {
        out = out.to_lowercase();
    }
    if options.collapse_whitespace {
        out = collapse_whitespace(&out);
    }
    if options.trim {
        out = out.trim().to_string();
    }
    out
}

/// Runs one step: returns the output JSON and a line for the log.
pub fn run(config: &str, input: &str) -> Result<(String, String), String> {
    let options = Options::from_config(config)?;
    let input = params::parse_input(input)?;
    let text = params::text_field(&input)?;
    let normalized = normalize(text, options);
    let characters = normalized.chars().count();
    let note = format!(
        "text-normalize: {} -> {characters} characters",
        text.chars().count()
    );
    let output = json!({
        "text": normalized,
        "changed": normalized != text,
        "characters": characters,
    });
    Ok((output.to_string(), note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn default_lowercases_collapses_and_trims() {
        let out = normalize("  Hello,\n\tWORLD!  ", Options::default());
        assert_eq!(out, "hello, world!");
    }

    #[test]
    fn strips_punctuation() {
        let options = Options {
            strip_punctuation: true,
            ..Options::default()
        };
        assert_eq!(
            normalize("Don't — stop! «Now» (ok)?", options),
            "dont stop now ok"
        );
    }

    #[test]
    fn can_do_nothing() {
        let options = Options {
            strip_punctuation: false,
            lowercase: false,
            collapse_whitespace: false,
            trim: false,
        };
        assert_eq!(normalize("  A  b ", options), "  A  b ");
        let collapse_only = Options {
            collapse_whitespace: true,
            ..options
        };
        assert_eq!(normalize("  A  b ", collapse_only), " A b ");
    }

    #[test]
    fn runs_a_step() {
        let (output, _) = run(r#"{"lowercase": false}"#, r#"{"text": " Ünïcode  Ok "}"#).unwrap();
        let output: Value = serde_json::from_str(&output).unwrap();
        assert_eq!(output["text"], "Ünïcode Ok");
        assert_eq!(output["changed"], true);
        assert_eq!(output["characters"], 10);
        let (output, _) = run("{}", r#"{"text": "same"}"#).unwrap();
        assert!(output.contains("\"changed\":false"));
    }

    #[test]
    fn rejects_bad_requests() {
        assert!(run("{}", "{}").unwrap_err().contains("missing \"text\""));
        assert!(
            run(r#"{"trim": 1}"#, r#"{"text": ""}"#)
                .unwrap_err()
                .contains("\"trim\"")
        );
        assert!(
            run("{}", "not json")
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn schemas_are_json() {
        for schema in [INPUT_SCHEMA, OUTPUT_SCHEMA] {
            assert!(serde_json::from_str::<Value>(schema).unwrap().is_object());
        }
    }
}
