//! Templates: `{step.output}`-style references inside prompts, argv elements and shell scripts.
//!
//! Invariant: a [`Template`] is always the parse of its own source string, so serialising it
//! as that string and re-parsing on the way back loses nothing; and rendering in
//! [`Quoting::Shell`] mode turns every substituted value into exactly one POSIX shell word,
//! whatever bytes the value holds, so step outputs are data and never code.
//!
//! # Syntax
//!
//! - `{STEP.output}`, `{STEP.status}`, `{STEP.session_id}`: another step's trimmed output, its
//!   status, its agent session id. `STEP` matches `[A-Za-z0-9_-]+`. Claude Studio's spellings
//!   `{STEP.response}` (= output) and `{STEP.sessionId}` are accepted too.
//! - `{inputs.NAME}`: an invocation input.
//! - `{{` is a literal `{`. `}}` is a literal `}` when it closes an earlier `{{`; any other `}`
//!   is copied as written. So `{{x}}` renders `{x}`, while JSON such as `{"a": {"b": 1}}` keeps
//!   both closing braces.
//! - **JSON-literal rule**: a `{` followed by a character that cannot begin an identifier
//!   (anything but `A-Z a-z 0-9 _ -`: a quote, a space, a newline, `}`, …) or by the end of the
//!   text is a literal brace. So `Return {"a": 1}` and `fn main() { }` need no escaping.
//! - Any other `{` must start a valid reference: `{foo}`, `{a.b.c}`, `{plan.cost}` and an
//!   unterminated `{plan.output` are errors whose message suggests `{{` for a literal brace.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::workflow::problem::{did_you_mean, is_id_char};

/// What a `{…}` placeholder refers to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Reference {
    /// `{step.output}`: the step's output, trailing whitespace trimmed by the caller.
    StepOutput(String),
    /// `{step.status}`.
    StepStatus(String),
    /// `{step.session_id}`: the agent session id of a prompt step.
    StepSession(String),
    /// `{inputs.NAME}`.
    Input(String),
}

impl Reference {
    /// The step this reference reads from, if it is a step reference.
    pub fn step(&self) -> Option<&str> {
        match self {
            Self::StepOutput(s) | Self::StepStatus(s) | Self::StepSession(s) => Some(s),
            Self::Input(_) => None,
        }
    }
}

impl fmt::Display for Reference {
    /// The canonical spelling, e.g. `{plan.output}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StepOutput(s) => write!(f, "{{{s}.output}}"),
            Self::StepStatus(s) => write!(f, "{{{s}.status}}"),
            Self::StepSession(s) => write!(f, "{{{s}.session_id}}"),
            Self::Input(name) => write!(f, "{{inputs.{name}}}"),
        }
    }
}

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Segment {
    /// Text copied as is (escapes already resolved).
    Literal(String),
    /// A placeholder replaced at render time.
    Ref(Reference),
}

/// How substituted values are inserted by [`Template::render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Quoting {
    /// As is: prompts and argv elements, which never pass through a shell.
    Verbatim,
    /// Each value becomes one single POSIX shell word (for `sh -c` scripts).
    Shell,
}

/// A parsed template. Serialises as its source string. The default is the empty template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

const FIELDS_HINT: &str = "expected {STEP.output}, {STEP.status}, {STEP.session_id} or {inputs.NAME}; write {{ for a literal {";

impl Template {
    /// Parses `src`; the error says where and what is wrong, with a fix.
    pub fn parse(src: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut open_escapes = 0usize;
        let mut rest = src;
        while let Some(c) = rest.chars().next() {
            let next = rest[c.len_utf8()..].chars().next();
            match (c, next) {
                ('{', Some('{')) => {
                    literal.push('{');
                    open_escapes += 1;
                    rest = &rest[2..];
                }
                ('}', Some('}')) if open_escapes > 0 => {
                    literal.push('}');
                    open_escapes -= 1;
                    rest = &rest[2..];
                }
                ('{', Some(n)) if is_id_char(n) => {
                    let offset = src.len() - rest.len();
                    let (reference, len) =
                        parse_reference(rest).map_err(|e| format!("at byte {offset}: {e}"))?;
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Ref(reference));
                    rest = &rest[len..];
                }
                _ => {
                    literal.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template {
            source: src.to_owned(),
            segments,
        })
    }

    /// The source text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The parsed segments, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Every reference, in order of appearance (repeats included).
    pub fn references(&self) -> impl Iterator<Item = &Reference> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Ref(r) => Some(r),
            Segment::Literal(_) => None,
        })
    }

    /// Renders with values from `lookup`. Literal text is never quoted; in
    /// [`Quoting::Shell`] each value is inserted as exactly one shell word (see [`shell_quote`]).
    pub fn render(&self, lookup: &dyn Fn(&Reference) -> String, quoting: Quoting) -> String {
        let mut out = String::with_capacity(self.source.len());
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Ref(reference) => {
                    let value = lookup(reference);
                    match quoting {
                        Quoting::Verbatim => out.push_str(&value),
                        Quoting::Shell => out.push_str(&shell_quote(&value)),
                    }
                }
            }
        }
        out
    }
}

/// Quotes `value` as one POSIX shell word (`''` for the empty string).
///
/// NUL bytes are dropped: no shell script or argv element can carry them, and keeping them
/// would make the quoting ambiguous. Uses `shlex`, which is tested against bash, dash, zsh,
/// busybox ash and mksh; the single-quote fallback is never reached once NULs are gone.
pub fn shell_quote(value: &str) -> String {
    let cleaned: std::borrow::Cow<'_, str> = if value.contains('\0') {
        value.replace('\0', "").into()
    } else {
        value.into()
    };
    match shlex::try_quote(&cleaned) {
        Ok(quoted) => quoted.into_owned(),
        Err(_) => format!("'{}'", cleaned.replace('\'', r"'\''")),
    }
}

/// Parses the reference at the start of `text` (which starts with `{` and an identifier char).
/// Returns it and the number of bytes consumed.
fn parse_reference(text: &str) -> Result<(Reference, usize), String> {
    let body_len = text[1..]
        .find(|c: char| !(is_id_char(c) || c == '.'))
        .map_or(text.len() - 1, |n| n);
    let body = &text[1..1 + body_len];
    match text[1 + body_len..].chars().next() {
        Some('}') => {}
        None => return Err(format!("unterminated reference `{{{body}` ({FIELDS_HINT})")),
        Some(c) => {
            return Err(format!(
                "`{{{body}` is followed by {c:?} instead of `}}` ({FIELDS_HINT})"
            ));
        }
    }
    let parts: Vec<&str> = body.split('.').collect();
    let reference = match parts.as_slice() {
        [_] => {
            return Err(format!(
                "`{{{body}}}` is not a reference: it has no `.FIELD` ({FIELDS_HINT})"
            ));
        }
        [head, name] if head.is_empty() || name.is_empty() => {
            return Err(format!(
                "`{{{body}}}` is not a reference: empty name ({FIELDS_HINT})"
            ));
        }
        ["inputs", name] => Reference::Input((*name).to_owned()),
        [step, "output" | "response"] => Reference::StepOutput((*step).to_owned()),
        [step, "status"] => Reference::StepStatus((*step).to_owned()),
        [step, "session_id" | "sessionId"] => Reference::StepSession((*step).to_owned()),
        [_, field] => {
            let hint = did_you_mean(field, ["output", "status", "session_id"]);
            return Err(format!(
                "`{{{body}}}`: a step has no field {field:?}{hint} ({FIELDS_HINT})"
            ));
        }
        _ => {
            return Err(format!(
                "`{{{body}}}` has more than one `.` ({FIELDS_HINT})"
            ));
        }
    };
    Ok((reference, body_len + 2))
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Template::parse(&source).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(src: &str) -> Vec<Reference> {
        Template::parse(src)
            .unwrap()
            .references()
            .cloned()
            .collect()
    }

    fn render(src: &str, quoting: Quoting) -> String {
        let lookup = |r: &Reference| match r {
            Reference::StepOutput(s) => format!("<{s} out>"),
            Reference::StepStatus(_) => "completed".to_owned(),
            Reference::StepSession(_) => "sess-1".to_owned(),
            Reference::Input(n) => format!("<{n}>"),
        };
        Template::parse(src).unwrap().render(&lookup, quoting)
    }

    #[test]
    fn all_reference_kinds_parse() {
        assert_eq!(
            refs(
                "{plan.output} {plan.status} {plan.session_id} {inputs.ticket} {a-1_b.response} {x.sessionId}"
            ),
            vec![
                Reference::StepOutput("plan".into()),
                Reference::StepStatus("plan".into()),
                Reference::StepSession("plan".into()),
                Reference::Input("ticket".into()),
                Reference::StepOutput("a-1_b".into()),
                Reference::StepSession("x".into()),
            ]
        );
    }

    #[test]
    fn doubled_braces_are_literal_braces() {
        assert_eq!(
            render("{{plan.output}}", Quoting::Verbatim),
            "{plan.output}"
        );
        assert_eq!(
            render("a {{ b }} c {{{{x}}}}", Quoting::Verbatim),
            "a { b } c {{x}}"
        );
        assert!(refs("{{plan.output}}").is_empty());
    }

    #[test]
    fn json_text_needs_no_escaping() {
        for src in [
            r#"Return {"a": 1}"#,
            r#"Return {"a": {"b": [1, {"c": 2}]}}"#,
            "fn main() { }\n{\n}",
            "{}",
            "trailing {",
            "lone } and }}",
        ] {
            assert_eq!(render(src, Quoting::Verbatim), src, "{src}");
        }
        assert_eq!(
            render(r#"{"r": {plan.output}}"#, Quoting::Verbatim),
            r#"{"r": <plan out>}"#
        );
    }

    #[test]
    fn escaped_json_renders_as_json() {
        assert_eq!(
            render(r#"{{"a": {"b": 1}}}"#, Quoting::Verbatim),
            r#"{"a": {"b": 1}}"#
        );
    }

    #[test]
    fn brace_that_is_not_a_reference_is_an_error_with_escape_hint() {
        for (src, needle) in [
            ("{foo}", "no `.FIELD`"),
            ("{a.b.c}", "more than one"),
            ("{plan.cost}", "no field \"cost\""),
            ("{plan.outptu}", "did you mean \"output\""),
            ("x {plan.output", "unterminated"),
            ("{plan.output more}", "instead of `}`"),
            ("{plan.}", "empty name"),
            ("${HOME}", "no `.FIELD`"),
        ] {
            let err = Template::parse(src).unwrap_err();
            assert!(err.contains(needle), "{src}: {err}");
            assert!(err.contains("write {{ for a literal {"), "{src}: {err}");
        }
        assert!(
            Template::parse("ab {x}")
                .unwrap_err()
                .starts_with("at byte 3:")
        );
    }

    #[test]
    fn verbatim_inserts_values_unchanged() {
        let lookup = |_: &Reference| "it's $(x) `y`\n".to_owned();
        let t = Template::parse("say {a.output}!").unwrap();
        assert_eq!(t.render(&lookup, Quoting::Verbatim), "say it's $(x) `y`\n!");
    }

    #[test]
    fn shell_quoting_keeps_hostile_values_one_word() {
        for hostile in [
            "'; touch X; '",
            "$(touch X)",
            "`touch X`",
            "a\nb; touch X",
            "",
            " ",
            "\"; x",
            "a\0b",
        ] {
            let t = Template::parse("printf %s {a.output}").unwrap();
            let lookup = |_: &Reference| hostile.to_owned();
            let script = t.render(&lookup, Quoting::Shell);
            let words = shlex::split(&script).unwrap();
            assert_eq!(
                words,
                vec!["printf", "%s", &hostile.replace('\0', "")],
                "{hostile:?} -> {script}"
            );
        }
    }

    #[test]
    fn shell_quoting_never_quotes_literal_text() {
        assert_eq!(
            render("echo {a.output} | wc -c; echo '$x'", Quoting::Shell),
            "echo '<a out>' | wc -c; echo '$x'"
        );
    }

    #[test]
    fn template_serialises_as_its_source() {
        let t = Template::parse("a {{ {b.output}").unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#""a {{ {b.output}""#);
        let back: Template = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert!(serde_json::from_str::<Template>(r#""{bad}""#).is_err());
    }

    #[test]
    fn reference_display_is_canonical() {
        assert_eq!(Reference::StepOutput("p".into()).to_string(), "{p.output}");
        assert_eq!(
            Reference::StepSession("p".into()).to_string(),
            "{p.session_id}"
        );
        assert_eq!(Reference::Input("t".into()).to_string(), "{inputs.t}");
    }
}
