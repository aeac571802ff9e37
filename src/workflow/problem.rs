//! Validation problems: what is wrong with a workflow definition, where, and how to fix it.
//!
//! Invariant: every problem names the field it is about and, when it belongs to a step, the
//! step's id, so a user (or a model) can fix every problem from one report without
//! re-submitting to discover the next one. Suggestions ("did you mean …?") only ever name
//! a candidate that actually exists.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One thing wrong with a workflow definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct Problem {
    /// The step the problem belongs to (its id, or `step-N` when it has none); `None` for
    /// workflow-level problems.
    pub step: Option<String>,
    /// The field the problem is about, as the user wrote it (`deps`, `retry.max_attempts`,
    /// `run[1]`, `inputs.ticket`, …).
    pub field: String,
    /// What is wrong, with a hint on how to fix it where there is one.
    pub message: String,
}

impl Problem {
    /// A problem with a step's field.
    pub fn step(
        step: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            step: Some(step.into()),
            field: field.into(),
            message: message.into(),
        }
    }

    /// A workflow-level problem.
    pub fn workflow(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            step: None,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A problem in the given context (`step` is `None` at workflow level).
    pub fn at(step: Option<&str>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            step: step.map(str::to_owned),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(step) = &self.step {
            write!(f, "step {step:?}, ")?;
        }
        write!(f, "field {:?}: {}", self.field, self.message)
    }
}

/// Every problem found in a definition: decoding problems first, then per-step ones, then
/// graph-wide ones, each group in definition order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none (a `Problems` returned as an error is never empty).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over the problems.
    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.0.iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a Problems {
    type Item = &'a Problem;
    type IntoIter = std::slice::Iter<'a, Problem>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
///
/// Close enough: equal ignoring case and `-`/`_`; or within an edit distance (transpositions
/// count once) of a third of the word's length (at least 1, at most 3); or sharing a prefix
/// of 4+ characters and within half the word's length (`retries` → `retry`).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let len = word.chars().count();
    if len > MAX_SUGGEST_LEN {
        return None;
    }
    let folded = fold(word);
    let limit = (len / 3).clamp(1, 3);
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        if candidate == word || candidate.chars().count() > MAX_SUGGEST_LEN {
            continue;
        }
        let distance = if fold(candidate) == folded {
            0
        } else {
            edit_distance(word, candidate)
        };
        let prefix = word
            .chars()
            .zip(candidate.chars())
            .take_while(|(a, b)| a == b)
            .count();
        let close = distance <= limit || (prefix >= 4 && distance <= len / 2);
        if close && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// ` (did you mean "x"?)`, or nothing when no candidate is close.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates)
        .map(|c| format!(" (did you mean {c:?}?)"))
        .unwrap_or_default()
}

fn fold(word: &str) -> String {
    word.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Words longer than this get no suggestions and are never suggested: a typo of a long
/// generated name is not worth a quadratic comparison (a 12,000-character unknown id used to
/// allocate about 1 GiB here).
pub const MAX_SUGGEST_LEN: usize = 64;

/// Optimal-string-alignment distance over chars: insertions, deletions, substitutions and
/// transpositions of adjacent characters each cost 1. Keeps three rows of the shorter word.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = if a.chars().count() < b.chars().count() {
        (b, a)
    } else {
        (a, b)
    };
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut row: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        row[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (prev[j] + 1).min(row[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            row[j] = best;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()]
}

/// True when `id` is a valid step id (`[A-Za-z0-9_-]+`); the same rule applies to input names.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(is_id_char)
}

/// Characters allowed in step ids and input names.
pub fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_display_names_step_and_field() {
        let p = Problem::step(
            "build",
            "deps",
            "unknown step \"buld\" (did you mean \"build\"?)",
        );
        assert_eq!(
            p.to_string(),
            r#"step "build", field "deps": unknown step "buld" (did you mean "build"?)"#
        );
        let p = Problem::workflow("steps", "the workflow has no steps");
        assert_eq!(p.to_string(), r#"field "steps": the workflow has no steps"#);
    }

    #[test]
    fn problems_display_one_per_line() {
        let ps = Problems(vec![
            Problem::workflow("a", "x"),
            Problem::step("s", "b", "y"),
        ]);
        assert_eq!(ps.to_string(), "field \"a\": x\nstep \"s\", field \"b\": y");
        let _: &dyn std::error::Error = &ps;
    }

    #[test]
    fn suggestions_only_name_close_existing_candidates() {
        assert_eq!(closest("buld", ["build", "test"]), Some("build"));
        assert_eq!(
            closest("depends-on", ["deps", "depends_on"]),
            Some("depends_on")
        );
        assert_eq!(closest("promt", ["prompt", "run", "shell"]), Some("prompt"));
        assert_eq!(closest("zzzzzz", ["build", "test"]), None);
        assert_eq!(
            closest("nmae", ["name", "steps"]),
            Some("name"),
            "a transposition is one edit"
        );
        assert_eq!(closest("retries", ["retry", "env"]), Some("retry"));
        assert_eq!(closest("run", ["env", "cwd"]), None);
        assert_eq!(
            closest("build", ["build"]),
            None,
            "an exact match is not a suggestion"
        );
        assert_eq!(did_you_mean("tset", ["test"]), " (did you mean \"test\"?)");
        assert_eq!(did_you_mean("q", ["build"]), "");
    }

    #[test]
    fn edit_distance_is_symmetric_and_counts_transpositions_once() {
        for (a, b, d) in [
            ("", "", 0),
            ("", "abc", 3),
            ("kitten", "sitting", 3),
            ("nmae", "name", 1),
            ("ca", "abc", 3),
            ("build", "biuld", 1),
            ("deps", "depends_on", 6),
        ] {
            assert_eq!(edit_distance(a, b), d, "{a} {b}");
            assert_eq!(edit_distance(b, a), d, "{b} {a}");
        }
    }

    #[test]
    fn suggestions_skip_words_longer_than_the_cap() {
        let long = "a".repeat(12_000);
        let near = format!("{long}b");
        assert_eq!(closest(&long, [near.as_str(), "build"]), None);
        let at_cap = "a".repeat(MAX_SUGGEST_LEN);
        let typo = format!("{}b", &at_cap[1..]);
        assert_eq!(closest(&typo, [at_cap.as_str()]), Some(at_cap.as_str()));
        let over = "a".repeat(MAX_SUGGEST_LEN + 1);
        assert_eq!(closest("aaaa", [over.as_str()]), None);
    }

    #[test]
    fn step_ids_are_restricted_to_word_chars_and_dashes() {
        assert!(is_valid_id("build-2_x"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a.b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("é"));
    }
}
