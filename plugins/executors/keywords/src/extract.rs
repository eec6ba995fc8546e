//! Keyword extraction: counting a text's non-stopword words, and `run`,
//! which turns a step's config and input into its output.

use std::collections::{HashMap, HashSet};

use serde_json::json;
use textkit::{params, round_to, text};

pub const INPUT_SCHEMA: &str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["text"],"properties":{"text":{"type":"string"}}}"#;

pub const OUTPUT_SCHEMA: &str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["keywords"],"properties":{"keywords":{"type":"array","items":{"type":"object","required":["word","count","score"],"properties":{"word":{"type":"string"},"count":{"type":"integer","minimum":1},"score":{"type":"number","minimum":0,"maximum":1}}}}}}"#;

/// What to count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// How many keywords to return at most.
    pub top_n: usize,
    /// Shortest word, in characters, that is counted.
    pub min_length: usize,
    /// Words to leave out besides the built-in stopwords.
    pub extra_stopwords: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            top_n: 10,
            min_length: 3,
            extra_stopwords: Vec::new(),
        }
    }
}

impl Options {
    /// Reads the options from a step's config, keeping the default of each one absent.
    pub fn from_config(config: &str) -> Result<Self, String> {
        let config = params::parse_config(config, &["top_n", "min_length", "extra_stopwords"])?;
        let default = Self::default();
        Ok(Self {
            top_n: to_usize(params::get_count(
                &config,
                "top_n",
                default.top_n as u64,
                1,
            )?),
            min_length: to_usize(params::get_count(
                &config,
                "min_length",
                default.min_length as u64,
                1,
            )?),
            extra_stopwords: params::get_string_list(&config, "extra_stopwords")?,
        })
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// One keyword: how often it occurs, and its share of all counted words.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyword {
    pub word: String,
    pub count: u64,
    /// `count` divided by the number of counted words, to 4 decimals.
    pub score: f64,
}

/// The keywords of `text`, by count (highest first) then word.
///
/// Words are counted in their normal form (`text::normalize_word`); a word
/// counts when it is at least `min_length` characters long, has a letter,
/// and is neither a built-in nor an extra stopword.
pub fn keywords(text: &str, options: &Options) -> Vec<Keyword> {
    let extra: HashSet<String> = options
        .extra_stopwords
        .iter()
        .map(|w| text::normalize_word(w.trim()))
        .collect();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut total = 0u64;
    for word in text::words(text) {
        let word = text::normalize_word(word);
        if word.chars().count() >= options.min_length
            && text::is_content_word(&word)
            && !extra.contains(&word)
        {
            total += 1;
            *counts.entry(word).or_default() += 1;
        }
    }
    let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
    ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(options.top_n);
    ranked
        .into_iter()
        .map(|(word, count)| Keyword {
            word,
            count,
            score: round_to(count as f64 / total as f64, 4),
        })
        .collect()
}

/// Runs one step: returns the output JSON and a line for the log.
pub fn run(config: &str, input: &str) -> Result<(String, String), String> {
    let options = Options::from_config(config)?;
    let input = params::parse_input(input)?;
    let text = params::text_field(&input)?;
    let found = keywords(text, &options);
    let note = format!("keywords: found {} keywords", found.len());
    let list: Vec<_> = found
        .iter()
        .map(|k| json!({"word": k.word, "count": k.count, "score": k.score}))
        .collect();
    Ok((json!({ "keywords": list }).to_string(), note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn pairs(found: &[Keyword]) -> Vec<(&str, u64)> {
        found.iter().map(|k| (k.word.as_str(), k.count)).collect()
    }

    #[test]
    fn counts_and_orders() {
        let text = "Flows run steps. A flow's steps run plugins; plugins run in the host. \
                    The host runs 42 flows.";
        let found = keywords(text, &Options::default());
        assert_eq!(
            pairs(&found),
            [
                ("run", 3),
                ("flows", 2),
                ("host", 2),
                ("plugins", 2),
                ("steps", 2),
                ("flow", 1),
                ("runs", 1),
            ]
        );
        assert_eq!(found[0].score, 0.2308);
    }

    #[test]
    fn honours_options() {
        let options = Options {
            top_n: 2,
            min_length: 4,
            extra_stopwords: vec!["Host".to_string()],
        };
        let found = keywords("the host runs the host and cats run cats", &options);
        assert_eq!(pairs(&found), [("cats", 2), ("runs", 1)]);
        assert_eq!(found[0].score, 0.6667);
    }

    #[test]
    fn empty_text_has_no_keywords() {
        assert!(keywords("", &Options::default()).is_empty());
        assert!(keywords("the and of", &Options::default()).is_empty());
    }

    #[test]
    fn runs_a_step() {
        let (output, _) = run(r#"{"top_n": 1}"#, r#"{"text": "apple apple pear"}"#).unwrap();
        let output: Value = serde_json::from_str(&output).unwrap();
        assert_eq!(
            output,
            serde_json::json!({"keywords": [{"word": "apple", "count": 2, "score": 0.6667}]})
        );
    }

    #[test]
    fn rejects_bad_requests() {
        let bad = run(r#"{"extra_stopwords": "a"}"#, r#"{"text": ""}"#).unwrap_err();
        assert!(bad.contains("array of strings"));
        let bad = run(r#"{"top_n": "5"}"#, r#"{"text": ""}"#).unwrap_err();
        assert!(bad.contains("whole number"));
        assert!(run("{}", "[]").unwrap_err().contains("JSON object"));
    }

    #[test]
    fn schemas_are_json() {
        for schema in [INPUT_SCHEMA, OUTPUT_SCHEMA] {
            assert!(serde_json::from_str::<Value>(schema).unwrap().is_object());
        }
    }
}
