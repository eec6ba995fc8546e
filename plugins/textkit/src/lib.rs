//! Helpers shared by the flowhost text executors: reading a step's JSON
//! input and config with error messages that say what to fix, splitting text
//! into words, sentences and paragraphs, and an English stopword list.

pub mod params;
pub mod stopwords;
pub mod text;

/// Rounds `value` to `decimals` places after the point.
pub fn round_to(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    (value * factor).round() / factor
}

#[cfg(test)]
mod tests {
    use super::round_to;

    #[test]
    fn rounds_to_places() {
        assert_eq!(round_to(4.3333, 2), 4.33);
        assert_eq!(round_to(0.66667, 4), 0.6667);
        assert_eq!(round_to(2.0, 2), 2.0);
    }
}
