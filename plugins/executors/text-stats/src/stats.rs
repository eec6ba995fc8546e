//! Text statistics: counting a text's characters, words, sentences,
//! paragraphs and lines, and `run`, which turns a step's config and input
//! into its output.

use std::collections::HashSet;

use serde_json::json;
use textkit::{params, round_to, text};

pub const INPUT_SCHEMA: &str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["text"],"properties":{"text":{"type":"string"}}}"#;

pub const OUTPUT_SCHEMA: &str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["characters","words","sentences","paragraphs","lines","unique_words","avg_word_length","avg_sentence_words","reading_time_seconds"],"properties":{"characters":{"type":"integer","minimum":0},"words":{"type":"integer","minimum":0},"sentences":{"type":"integer","minimum":0},"paragraphs":{"type":"integer","minimum":0},"lines":{"type":"integer","minimum":0},"unique_words":{"type":"integer","minimum":0},"avg_word_length":{"type":"number","minimum":0},"avg_sentence_words":{"type":"number","minimum":0},"reading_time_seconds":{"type":"integer","minimum":0}}}"#;

/// Reading speed used when the config sets no `words_per_minute`.
pub const DEFAULT_WORDS_PER_MINUTE: u64 = 200;

/// The statistics of one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub characters: usize,
    pub words: usize,
    pub sentences: usize,
    pub paragraphs: usize,
    pub lines: usize,
    pub unique_words: usize,
    /// Characters per word, to 2 decimals.
    pub avg_word_length: f64,
    /// Words per sentence, to 2 decimals.
    pub avg_sentence_words: f64,
    /// Seconds to read the text at the given speed, rounded up.
    pub reading_time_seconds: u64,
}

fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        round_to(numerator as f64 / denominator as f64, 2)
    }
}

/// Computes the statistics of `text`, read at `words_per_minute` (at least 1).
pub fn stats(text: &str, words_per_minute: u64) -> Stats {
    let mut words = 0;
    let mut word_chars = 0;
    let mut unique = HashSet::new();
    for word in text::words(text) {
        words += 1;
        word_chars += word.chars().count();
        unique.insert(word.replace('\u{2019}', "'").to_lowercase());
    }
    let sentences = text::sentences(text).len();
    Stats {
        characters: text.chars().count(),
        words,
        sentences,
        paragraphs: text::paragraphs(text).len(),
        lines: text.lines().count(),
        unique_words: unique.len(),
        avg_word_length: ratio(word_chars, words),
        avg_sentence_words: ratio(words, sentences),
        reading_time_seconds: (words as u64 * 60).div_ceil(words_per_minute.max(1)),
    }
}

/// Runs one step: returns the output JSON and a line for the log.
pub fn run(config: &str, input: &str) -> Result<(String, String), String> {
    let config = params::parse_config(config, &["words_per_minute"])?;
    let words_per_minute =
        params::get_count(&config, "words_per_minute", DEFAULT_WORDS_PER_MINUTE, 1)?;
    let input = params::parse_input(input)?;
    let text = params::text_field(&input)?;
    let s = stats(text, words_per_minute);
    let note = format!("text-stats: {} words in {} sentences", s.words, s.sentences);
    let output = json!({
        "characters": s.characters,
        "words": s.words,
        "sentences": s.sentences,
        "paragraphs": s.paragraphs,
        "lines": s.lines,
        "unique_words": s.unique_words,
        "avg_word_length": s.avg_word_length,
        "avg_sentence_words": s.avg_sentence_words,
        "reading_time_seconds": s.reading_time_seconds,
    });
    Ok((output.to_string(), note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn counts_a_text() {
        let text = "The cat sat. The cat ran!\nWhy?\n\nA new paragraph here.";
        let s = stats(text, 200);
        assert_eq!(s.characters, text.chars().count());
        assert_eq!(s.words, 11);
        assert_eq!(s.sentences, 4);
        assert_eq!(s.paragraphs, 2);
        assert_eq!(s.lines, 4);
        assert_eq!(s.unique_words, 9);
        assert_eq!(s.avg_word_length, 3.45);
        assert_eq!(s.avg_sentence_words, 2.75);
        assert_eq!(s.reading_time_seconds, 4);
    }

    #[test]
    fn empty_text_is_all_zero() {
        let s = stats("", 200);
        assert_eq!(
            (s.characters, s.words, s.sentences, s.paragraphs, s.lines),
            (0, 0, 0, 0, 0)
        );
        assert_eq!((s.avg_word_length, s.reading_time_seconds), (0.0, 0));
    }

    #[test]
    fn reading_time_rounds_up() {
        let text = "word ".repeat(201);
        assert_eq!(stats(&text, 200).reading_time_seconds, 61);
        assert_eq!(stats(&text, 100_000).reading_time_seconds, 1);
    }

    #[test]
    fn runs_a_step() {
        let (output, _) = run(r#"{"words_per_minute": 60}"#, r#"{"text": "One two."}"#).unwrap();
        let output: Value = serde_json::from_str(&output).unwrap();
        assert_eq!(output["words"], 2);
        assert_eq!(output["reading_time_seconds"], 2);
        assert_eq!(output["avg_word_length"], 3.0);
    }

    #[test]
    fn rejects_bad_requests() {
        let zero = run(r#"{"words_per_minute": 0}"#, r#"{"text": ""}"#).unwrap_err();
        assert!(zero.contains("at least 1"));
        assert!(
            run("{}", r#"{"text": null}"#)
                .unwrap_err()
                .contains("must be a string")
        );
    }

    #[test]
    fn schemas_are_json() {
        for schema in [INPUT_SCHEMA, OUTPUT_SCHEMA] {
            assert!(serde_json::from_str::<Value>(schema).unwrap().is_object());
        }
    }
}
