//! Definition text (JSON or YAML) → the JSON value the rest of the model reads, and the
//! *signature* of a definition — its name, description and declared inputs — which is what a
//! saved workflow shows as an MCP prompt before it is invoked.
//!
//! Invariant: both formats land in the same `serde_json::Value`, so everything after parsing
//! (decode, resolve, validate, the stored form) is the same whatever the file's format, and a
//! parse error never quotes the text beyond the position the parser reports.

use std::path::Path;

use serde_json::Value;

use super::raw::{RawDefinition, RawInput};
use super::{Problems, Result, decode};

/// The text format of a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// YAML for `.yaml` and `.yml` files (any case), JSON otherwise.
    pub fn of(path: &Path) -> Format {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("yaml" | "yml") => Format::Yaml,
            _ => Format::Json,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        }
    }
}

/// Parses definition text in `format`. The error says what the parser found and where.
pub fn parse_text(text: &str, format: Format) -> std::result::Result<Value, String> {
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
        Format::Yaml => {
            let value: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
            Ok(value)
        }
    }
}

/// A declared input as a caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    pub name: String,
    pub description: Option<String>,
    /// Without a default the input must be given when the workflow is invoked.
    pub default: Option<String>,
}

impl InputSpec {
    pub fn required(&self) -> bool {
        self.default.is_none()
    }
}

/// What a definition says about itself before it is run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signature {
    pub name: Option<String>,
    pub description: Option<String>,
    /// Declared inputs, by name.
    pub inputs: Vec<InputSpec>,
}

/// The signature of a definition, or the problems decoding it found.
pub fn signature(definition: &Value) -> Result<Signature> {
    let mut problems = Vec::new();
    let raw = decode::decode(definition, &mut problems);
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    let RawDefinition::Workflow(wf) = raw else {
        return Ok(Signature::default());
    };
    let inputs = wf
        .inputs
        .iter()
        .map(|(name, input)| match input {
            RawInput::Default(d) => InputSpec {
                name: name.clone(),
                description: None,
                default: Some(d.clone()),
            },
            RawInput::Spec(spec) => InputSpec {
                name: name.clone(),
                description: spec.description.clone(),
                default: spec.default.clone(),
            },
        })
        .collect();
    Ok(Signature {
        name: wf.name.clone(),
        description: wf.description.clone(),
        inputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_and_json_of_one_definition_parse_to_the_same_value() {
        let json_text = r#"{"name": "n", "inputs": {"topic": {"description": "what"}},
            "steps": [{"id": "a", "run": ["echo", "{inputs.topic}"]}]}"#;
        let yaml_text = "name: n\ninputs:\n  topic:\n    description: what\nsteps:\n  - id: a\n    run: [echo, \"{inputs.topic}\"]\n";
        assert_eq!(
            parse_text(json_text, Format::Json).unwrap(),
            parse_text(yaml_text, Format::Yaml).unwrap()
        );
    }

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(Format::of(Path::new("a/b.yaml")), Format::Yaml);
        assert_eq!(Format::of(Path::new("b.YML")), Format::Yaml);
        assert_eq!(Format::of(Path::new("b.json")), Format::Json);
        assert_eq!(Format::of(Path::new("b")), Format::Json);
    }

    #[test]
    fn yaml_errors_name_the_position() {
        let err = parse_text("steps: [\n  - id: a\n", Format::Yaml).unwrap_err();
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn signature_lists_declared_inputs_with_their_defaults() {
        let sig = signature(&json!({"name": "n", "description": "d",
            "inputs": {"a": "1", "b": {"description": "bee"}},
            "steps": [{"run": ["true"]}]}))
        .unwrap();
        assert_eq!(sig.name.as_deref(), Some("n"));
        assert_eq!(sig.description.as_deref(), Some("d"));
        assert_eq!(sig.inputs.len(), 2);
        assert!(!sig.inputs[0].required());
        assert!(sig.inputs[1].required());
        assert_eq!(sig.inputs[1].description.as_deref(), Some("bee"));
        assert!(signature(&json!({"steps": 3})).is_err());
        assert_eq!(
            signature(&json!([{"run": ["true"]}])).unwrap(),
            Signature::default()
        );
    }
}
