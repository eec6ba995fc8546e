//! Splitting text into words, sentences and paragraphs, and the normal form
//! under which words are counted.

use crate::stopwords::is_stopword;

/// Abbreviations whose final '.' does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "approx", "cf", "dept", "dr", "etc", "fig", "inc", "jr", "ltd", "mr", "mrs", "ms", "mt", "no",
    "prof", "sr", "st", "vs",
];

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}'
}

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '\u{2026}')
}

fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | ')' | ']' | '}' | '\u{bb}' | '\u{2019}' | '\u{201d}'
    )
}

/// The words of `text`: runs of letters and digits, with apostrophes kept
/// inside a word ("don't") but not at its ends.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || is_apostrophe(c)))
        .map(|word| word.trim_matches(is_apostrophe))
        .filter(|word| !word.is_empty())
}

/// The form under which a word is counted: lowercase, with straight
/// apostrophes and without a possessive "'s".
pub fn normalize_word(word: &str) -> String {
    let mut word = word.replace('\u{2019}', "'").to_lowercase();
    if word.len() > 2 && word.ends_with("'s") {
        word.truncate(word.len() - 2);
    }
    word
}

/// Whether a normalised word carries meaning: it has a letter and is no stopword.
pub fn is_content_word(word: &str) -> bool {
    word.chars().any(char::is_alphabetic) && !is_stopword(word)
}

/// The paragraphs of `text`: blocks of non-blank lines, trimmed.
pub fn paragraphs(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut end = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim().is_empty() {
            if let Some(s) = start.take() {
                out.push(text[s..end].trim());
            }
        } else {
            start.get_or_insert(offset);
            end = offset + line.len();
        }
        offset += line.len();
    }
    if let Some(s) = start {
        out.push(text[s..end].trim());
    }
    out
}

/// The sentences of `text`, trimmed, leaving out those without a word.
///
/// A sentence ends at a blank line, and at '.', '!', '?' or '…' (with any
/// further terminators and closing quotes or brackets) that is followed by
/// whitespace or the end of the text, except the '.' of a known abbreviation
/// or of a single-letter initial ("J. Smith", "e.g. this").
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for paragraph in paragraphs(text) {
        let mut start = 0;
        let mut chars = paragraph.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if !is_terminator(c) {
                continue;
            }
            let mut end = i + c.len_utf8();
            let mut lone_period = c == '.';
            while let Some(&(j, d)) = chars.peek() {
                if is_terminator(d) || is_closer(d) {
                    lone_period &= !is_terminator(d);
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let at_break = chars.peek().is_none_or(|&(_, d)| d.is_whitespace());
            if at_break && !(lone_period && ends_with_abbreviation(&paragraph[start..i])) {
                push_sentence(&mut out, &paragraph[start..end]);
                start = end;
            }
        }
        push_sentence(&mut out, &paragraph[start..]);
    }
    out
}

fn ends_with_abbreviation(before: &str) -> bool {
    let Some(last) = before.rsplit(|c: char| !c.is_alphanumeric()).next() else {
        return false;
    };
    let mut letters = last.chars();
    let single_letter =
        matches!((letters.next(), letters.next()), (Some(c), None) if c.is_alphabetic());
    single_letter || ABBREVIATIONS.contains(&last.to_lowercase().as_str())
}

fn push_sentence<'a>(out: &mut Vec<&'a str>, sentence: &'a str) {
    let sentence = sentence.trim();
    if words(sentence).next().is_some() {
        out.push(sentence);
    }
}

/// `text` with each run of whitespace replaced by one space, and trimmed.
pub fn squash_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words() {
        let found: Vec<_> = words("Don't stop -- it's 2024, 'quoted' well-known!").collect();
        assert_eq!(
            found,
            ["Don't", "stop", "it's", "2024", "quoted", "well", "known"]
        );
        assert_eq!(words("  ...  ").count(), 0);
    }

    #[test]
    fn normalizes_words() {
        assert_eq!(normalize_word("Flow\u{2019}s"), "flow");
        assert_eq!(normalize_word("DON'T"), "don't");
        assert_eq!(normalize_word("'s"), "'s");
        assert!(is_content_word("flow"));
        assert!(!is_content_word("the"));
        assert!(!is_content_word("2024"));
    }

    #[test]
    fn splits_paragraphs() {
        let text = "\n\nFirst line\nsecond line\n  \n\nThird\n";
        assert_eq!(paragraphs(text), ["First line\nsecond line", "Third"]);
        assert!(paragraphs(" \n ").is_empty());
    }

    #[test]
    fn splits_sentences() {
        let text = "Hello there! Is it 3.5 or 4? \"It is,\" he said. Dr. Smith met J. Doe, \
                    e.g. at home... Then left\n\nNew paragraph without stop";
        assert_eq!(
            sentences(text),
            [
                "Hello there!",
                "Is it 3.5 or 4?",
                "\"It is,\" he said.",
                "Dr. Smith met J. Doe, e.g. at home...",
                "Then left",
                "New paragraph without stop",
            ]
        );
        assert_eq!(
            sentences("She said \"stop.\" Then went."),
            ["She said \"stop.\"", "Then went."]
        );
        assert!(sentences(" ?! ").is_empty());
    }

    #[test]
    fn squashes_whitespace() {
        assert_eq!(squash_whitespace("  a \n\t b  "), "a b");
    }
}
