//! Templates: `{step.output}`-style references inside prompts, argv elements and shell scripts.
//!
//! Invariant: a [`Template`] is always the parse of its own source string, so serialising it
//! as that string and re-parsing on the way back loses nothing; and
//! [`Template::render_shell`] never writes a value into a script: each reference becomes a
//! quoted expansion of an environment variable that carries the value, so whatever bytes a
//! step output holds, the shell parser never reads them and they are data, never code.
//!
//! # Syntax
//!
//! - `{STEP.output}`, `{STEP.status}`, `{STEP.session_id}`: another step's trimmed output, its
//!   status, its agent session id. `STEP` matches `[A-Za-z0-9_-]+`. Claude Studio's spellings
//!   `{STEP.response}` (= output) and `{STEP.sessionId}` are accepted too.
//! - `{STEP.json}`, `{STEP.json.PATH}`: a value of the step's output parsed as JSON (`PATH`:
//!   keys and array indices joined by `.`, e.g. `{plan.json.files.0}`); a string is inserted
//!   as is, anything else as JSON.
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
use crate::workflow::shell_lint::{self, Site};

/// Prefix of the environment variables that carry a `shell` step's values
/// (`BATON_REF_1`, `BATON_REF_2`, … one per distinct reference, in order of appearance).
pub const SHELL_REF_PREFIX: &str = "BATON_REF_";

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
    /// `{step.json}` or `{step.json.PATH}` (`PATH` = keys and array indices joined by `.`):
    /// a value of the step's output parsed as JSON; a string is inserted as is, any other
    /// value as JSON, a missing one as nothing.
    StepJson(String, Vec<String>),
    /// `{inputs.NAME}`.
    Input(String),
    /// `{item}` (`None`) or `{item.FIELD}`: the item of a `for_each` instance; a string is
    /// inserted as is, any other value as JSON.
    Item(Option<String>),
    /// `{index}`: the 0-based position of a `for_each` instance's item.
    Index,
    /// `{previous.STEP.output}`: inside a `repeat` group, the output of sibling `STEP` in
    /// the previous iteration (empty in the first).
    Previous(String),
}

impl Reference {
    /// The step this reference reads from, if it is a step reference.
    pub fn step(&self) -> Option<&str> {
        match self {
            Self::StepOutput(s)
            | Self::StepStatus(s)
            | Self::StepSession(s)
            | Self::StepJson(s, _) => Some(s),
            Self::Input(_) | Self::Item(_) | Self::Index | Self::Previous(_) => None,
        }
    }

    /// Whether it reads the item of a `for_each` instance (`{item…}`, `{index}`).
    pub fn reads_item(&self) -> bool {
        matches!(self, Self::Item(_) | Self::Index)
    }
}

impl fmt::Display for Reference {
    /// The canonical spelling, e.g. `{plan.output}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StepOutput(s) => write!(f, "{{{s}.output}}"),
            Self::StepStatus(s) => write!(f, "{{{s}.status}}"),
            Self::StepSession(s) => write!(f, "{{{s}.session_id}}"),
            Self::StepJson(s, path) if path.is_empty() => write!(f, "{{{s}.json}}"),
            Self::StepJson(s, path) => write!(f, "{{{s}.json.{}}}", path.join(".")),
            Self::Input(name) => write!(f, "{{inputs.{name}}}"),
            Self::Item(None) => f.write_str("{item}"),
            Self::Item(Some(field)) => write!(f, "{{item.{field}}}"),
            Self::Index => f.write_str("{index}"),
            Self::Previous(s) => write!(f, "{{previous.{s}.output}}"),
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

/// How substituted values are inserted by [`Template::render`]. Shell scripts are not
/// rendered by substitution at all: see [`Template::render_shell`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Quoting {
    /// As is: prompts and argv elements, which never pass through a shell.
    Verbatim,
}

/// A parsed template. Serialises as its source string. The default is the empty template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

const FIELDS_HINT: &str = "expected {STEP.output}, {STEP.status}, {STEP.session_id}, {STEP.json.PATH}, {inputs.NAME}, or in a for_each step {item}, {item.FIELD}, {index}; write {{ for a literal {";

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

    /// Renders with values from `lookup`, inserted as they are.
    pub fn render(&self, lookup: &dyn Fn(&Reference) -> String, quoting: Quoting) -> String {
        let mut out = String::with_capacity(self.source.len());
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Ref(reference) => match quoting {
                    Quoting::Verbatim => out.push_str(&lookup(reference)),
                },
            }
        }
        out
    }

    /// Renders a `shell` script: each reference becomes an expansion of a variable
    /// (`"$BATON_REF_1"` in a word, `${BATON_REF_1}` inside `"…"` or a heredoc body) and the
    /// values come back as the environment the script must run with. Values never enter the
    /// script text. NUL bytes are dropped from values, since no environment can carry them.
    ///
    /// A template that `shell` validation would reject is still rendered safely (every
    /// reference as `"$VAR"`); only its meaning may differ from what was written.
    pub fn render_shell(
        &self,
        lookup: &dyn Fn(&Reference) -> String,
    ) -> (String, Vec<(String, String)>) {
        let (numbers, distinct) = self.shell_vars();
        let name = |i: usize| {
            let n = numbers.get(i).copied().unwrap_or(0);
            format!("{SHELL_REF_PREFIX}{n}")
        };
        let sites = shell_lint::classify(self, &name).unwrap_or_default();
        let mut script = String::with_capacity(self.source.len());
        let mut i = 0;
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => script.push_str(text),
                Segment::Ref(_) => {
                    let site = sites.get(i).copied().unwrap_or(Site::Word);
                    script.push_str(&site.spell(&name(i)));
                    i += 1;
                }
            }
        }
        let env = distinct
            .iter()
            .enumerate()
            .map(|(k, r)| {
                let value = lookup(r);
                let value = if value.contains('\0') {
                    value.replace('\0', "")
                } else {
                    value
                };
                (format!("{SHELL_REF_PREFIX}{}", k + 1), value)
            })
            .collect();
        (script, env)
    }

    /// For each reference occurrence, the 1-based number of its variable; and the distinct
    /// references in the order their numbers were given.
    pub(crate) fn shell_vars(&self) -> (Vec<usize>, Vec<&Reference>) {
        let mut distinct: Vec<&Reference> = Vec::new();
        let mut index = std::collections::HashMap::new();
        let numbers = self
            .references()
            .map(|r| {
                *index.entry(r).or_insert_with(|| {
                    distinct.push(r);
                    distinct.len()
                })
            })
            .collect();
        (numbers, distinct)
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
        ["item"] => Reference::Item(None),
        ["index"] => Reference::Index,
        ["item", field] if !field.is_empty() => Reference::Item(Some((*field).to_owned())),
        ["previous", step, "output" | "response"] if !step.is_empty() => {
            Reference::Previous((*step).to_owned())
        }
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
        [step, "json", path @ ..] if !step.is_empty() && path.iter().all(|p| !p.is_empty()) => {
            Reference::StepJson(
                (*step).to_owned(),
                path.iter().map(|p| (*p).to_owned()).collect(),
            )
        }
        [_, field] => {
            let hint = did_you_mean(field, ["output", "status", "session_id", "json"]);
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
            Reference::Item(f) => format!("<item {f:?}>"),
            Reference::Index => "<index>".to_owned(),
            Reference::StepJson(s, path) => format!("<{s} json {}>", path.join("/")),
            Reference::Previous(s) => format!("<previous {s}>"),
        };
        Template::parse(src).unwrap().render(&lookup, quoting)
    }

    #[test]
    fn json_references_parse_with_their_path() {
        assert_eq!(
            refs("{plan.json} {plan.json.files.0}"),
            [
                Reference::StepJson("plan".into(), vec![]),
                Reference::StepJson("plan".into(), vec!["files".into(), "0".into()]),
            ]
        );
        assert_eq!(render("{a.json.x.y}", Quoting::Verbatim), "<a json x/y>");
        let r = Reference::StepJson("plan".into(), vec!["files".into(), "0".into()]);
        assert_eq!(r.to_string(), "{plan.json.files.0}");
        assert_eq!(r.step(), Some("plan"));
        assert!(Template::parse("{plan.json.}").is_err());
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

    fn shell(src: &str, value: &str) -> (String, Vec<(String, String)>) {
        let lookup = |_: &Reference| value.to_owned();
        Template::parse(src).unwrap().render_shell(&lookup)
    }

    #[test]
    fn shell_reference_value_never_enters_the_script() {
        for hostile in [
            "'; touch X; '",
            "$(touch X)",
            "`touch X`",
            "a\nb; touch X",
            "\\'\\\"",
            "",
            "\"; x",
            "a\0b",
        ] {
            for src in [
                "printf %s {a.output}",
                "echo \"x {a.output} y\"",
                "echo `printf %s {a.output}`",
                "cat <<E\n{a.output}\nE",
            ] {
                let (script, env) = shell(src, hostile);
                let expected = src.replace("{a.output}", "");
                assert_eq!(
                    script
                        .replace("\"$BATON_REF_1\"", "")
                        .replace("${BATON_REF_1}", ""),
                    expected,
                    "{src} / {hostile:?} -> {script}"
                );
                assert_eq!(
                    env,
                    vec![("BATON_REF_1".to_owned(), hostile.replace('\0', ""))]
                );
            }
        }
    }

    #[test]
    fn shell_reference_is_spelled_for_its_position() {
        let (script, _) = shell(
            "printf %s {a.output} \"in {a.output}\" $(echo {a.output}) `echo {a.output}`",
            "v",
        );
        assert_eq!(
            script,
            "printf %s \"$BATON_REF_1\" \"in ${BATON_REF_1}\" $(echo \"$BATON_REF_1\") `echo \"$BATON_REF_1\"`"
        );
        let (script, _) = shell("cat <<EOF\n{a.output}\nEOF\necho {a.output}", "v");
        assert_eq!(
            script,
            "cat <<EOF\n${BATON_REF_1}\nEOF\necho \"$BATON_REF_1\""
        );
    }

    #[test]
    fn shell_references_share_one_variable_per_distinct_reference() {
        let lookup = |r: &Reference| r.to_string();
        let t = Template::parse("echo {b.output} {a.status} {b.output} {inputs.x}").unwrap();
        let (script, env) = t.render_shell(&lookup);
        assert_eq!(
            script,
            "echo \"$BATON_REF_1\" \"$BATON_REF_2\" \"$BATON_REF_1\" \"$BATON_REF_3\""
        );
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["BATON_REF_1", "BATON_REF_2", "BATON_REF_3"]);
        assert_eq!(env[0].1, "{b.output}");
        assert_eq!(env[2].1, "{inputs.x}");
    }

    #[test]
    fn shell_rendering_never_quotes_literal_text() {
        let (script, _) = shell("echo {a.output} | wc -c; echo '$x'", "v");
        assert_eq!(script, "echo \"$BATON_REF_1\" | wc -c; echo '$x'");
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
