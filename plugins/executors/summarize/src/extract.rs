//! Extractive summarisation: scoring a text's sentences by the frequency of
//! their words, and `run`, which turns a step's config and input into its
//! output.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};
use textkit::{params, text};

pub const INPUT_SCHEMA: &str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["text"],"properties":{"text":{"type":"string"},"keywords":{"type":"array","items":{"oneOf":[{"type":"string"},{"type":"object","required":["word"],"properties":{"word":{"type":"string"}}}]}}}}"#;

pub const OUTPUT_SCHEMA: &str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["summary","sentences","sentence_count"],"properties":{"summary":{"type":"string"},"sentences":{"type":"array","items":{"type":"string"}},"sentence_count":{"type":"integer","minimum":0}}}"#;

/// Sentences kept when the config sets no `max_sentences`.
pub const DEFAULT_MAX_SENTENCES: u64 = 3;

/// How much each distinct keyword found in a sentence adds to its score, as
/// a fraction of the score.
const KEYWORD_BOOST: f64 = 0.5;

/// The score of each sentence of `sentences`: the sum of the frequencies of
/// its content words (relative to the most frequent word of the text),
/// divided by its number of words, and raised by half for each distinct
/// keyword in it.
pub fn score_sentences(sentences: &[&str], keywords: &HashSet<String>) -> Vec<f64> {
    let tokens: Vec<Vec<String>> = sentences
        .iter()
        .map(|s| text::words(s).map(text::normalize_word).collect())
        .collect();
    let mut frequency: HashMap<&str, f64> = HashMap::new();
    for word in tokens.iter().flatten() {
        if text::is_content_word(word) {
            *frequency.entry(word).or_default() += 1.0;
        }
    }
    let top = frequency.values().copied().fold(1.0, f64::max);
    tokens
        .iter()
        .map(|words| {
            if words.is_empty() {
                return 0.0;
            }
            let sum: f64 = words
                .iter()
                .filter_map(|w| frequency.get(w.as_str()))
                .map(|f| f / top)
                .sum();
            let matched = words
                .iter()
                .filter(|w| keywords.contains(*w))
                .collect::<HashSet<_>>()
                .len();
            sum / words.len() as f64 * (1.0 + KEYWORD_BOOST * matched as f64)
        })
        .collect()
}

/// The `max_sentences` best sentences of `text`, in their original order,
/// each with its whitespace collapsed. Ties go to the earlier sentence.
pub fn summarize(text: &str, max_sentences: usize, keywords: &HashSet<String>) -> Vec<String> {
    let sentences = text::sentences(text);
    let scores = score_sentences(&sentences, keywords);
    let mut order: Vec<usize> = (0..sentences.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(max_sentences);
    order.sort_unstable();
    order
        .into_iter()
        .map(|i| text::squash_whitespace(sentences[i]))
        .collect()
}

/// The optional `keywords` of an input, in their normal form: an array of
/// words or of `{"word": ...}` objects (the `keywords` executor's items), or
/// that executor's whole output.
pub fn input_keywords(input: &Value) -> Result<HashSet<String>, String> {
    const EXPECTED: &str = "input \"keywords\" must be an array of words or of {\"word\": ...} \
                            objects, as the keywords executor produces";
    let items = match input.get("keywords") {
        None | Some(Value::Null) => return Ok(HashSet::new()),
        Some(Value::Array(items)) => items,
        Some(Value::Object(output)) => match output.get("keywords") {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(format!(
                    "{EXPECTED}, got an object without a \"keywords\" array"
                ));
            }
        },
        Some(other) => return Err(format!("{EXPECTED}, got {}", params::type_name(other))),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.get("word").unwrap_or(item) {
            Value::String(word) => Ok(text::normalize_word(word.trim())),
            other => Err(format!(
                "{EXPECTED}; item {i} is {}",
                params::type_name(other)
            )),
        })
        .collect()
}

/// Runs one step: returns the output JSON and a line for the log.
pub fn run(config: &str, input: &str) -> Result<(String, String), String> {
    let config = params::parse_config(config, &["max_sentences"])?;
    let max_sentences = params::get_count(&config, "max_sentences", DEFAULT_MAX_SENTENCES, 1)?;
    let input = params::parse_input(input)?;
    let text = params::text_field(&input)?;
    let keywords = input_keywords(&input)?;
    let max_sentences = usize::try_from(max_sentences).unwrap_or(usize::MAX);
    let summary = summarize(text, max_sentences, &keywords);
    let note = format!(
        "summarize: kept {} of {} sentences",
        summary.len(),
        text::sentences(text).len()
    );
    let output = json!({
        "summary": summary.join(" "),
        "sentence_count": summary.len(),
        "sentences": summary,
    });
    Ok((output.to_string(), note))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "Rust plugins run inside the host. \
        The weather was pleasant yesterday. \
        Each plugin is a WebAssembly component that the host loads. \
        Lunch was late.\n\nThe host runs plugins in a sandbox, so plugins cannot harm the host.";

    fn none() -> HashSet<String> {
        HashSet::new()
    }

    #[test]
    fn keeps_best_sentences_in_order() {
        let summary = summarize(TEXT, 2, &none());
        assert_eq!(
            summary,
            [
                "Rust plugins run inside the host.",
                "The host runs plugins in a sandbox, so plugins cannot harm the host.",
            ]
        );
    }

    #[test]
    fn keywords_boost_sentences() {
        let plain = summarize(TEXT, 3, &none());
        assert_eq!(
            plain[1],
            "Each plugin is a WebAssembly component that the host loads."
        );
        let keywords: HashSet<String> = ["lunch".to_string()].into();
        let boosted = summarize(TEXT, 3, &keywords);
        assert_eq!(boosted[1], "Lunch was late.");
    }

    #[test]
    fn short_texts_are_kept_whole() {
        assert_eq!(
            summarize("Only one\n sentence", 3, &none()),
            ["Only one sentence"]
        );
        assert!(summarize("", 3, &none()).is_empty());
    }

    #[test]
    fn reads_keywords_in_every_form() {
        let words = |v: Value| {
            let mut found: Vec<_> = input_keywords(&v).unwrap().into_iter().collect();
            found.sort();
            found
        };
        assert_eq!(
            words(json!({"keywords": ["Host", "rust"]})),
            ["host", "rust"]
        );
        assert_eq!(
            words(json!({"keywords": [{"word": "host", "count": 2}]})),
            ["host"]
        );
        assert_eq!(
            words(json!({"keywords": {"keywords": [{"word": "a"}]}})),
            ["a"]
        );
        assert!(words(json!({})).is_empty());
        assert!(
            input_keywords(&json!({"keywords": [1]}))
                .unwrap_err()
                .contains("item 0")
        );
        assert!(
            input_keywords(&json!({"keywords": "x"}))
                .unwrap_err()
                .contains("a string")
        );
    }

    #[test]
    fn runs_a_step() {
        let input = json!({"text": TEXT}).to_string();
        let (output, _) = run(r#"{"max_sentences": 1}"#, &input).unwrap();
        let output: Value = serde_json::from_str(&output).unwrap();
        assert_eq!(output["sentence_count"], 1);
        assert_eq!(output["summary"], output["sentences"][0]);
        let bad = run(r#"{"max_sentences": 0}"#, &input).unwrap_err();
        assert!(bad.contains("at least 1"));
    }

    #[test]
    fn schemas_are_json() {
        for schema in [INPUT_SCHEMA, OUTPUT_SCHEMA] {
            assert!(serde_json::from_str::<Value>(schema).unwrap().is_object());
        }
    }
}
