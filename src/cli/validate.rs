//! `baton validate`: check a workflow file (JSON, or YAML for `.yaml`/`.yml`) and print its
//! problems.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use super::CliError;

pub(super) fn validate(
    file: &std::path::Path,
    inputs: Vec<(String, String)>,
) -> Result<ExitCode, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Other(format!("cannot read {}: {e}", file.display())))?;
    let format = crate::workflow::Format::of(file);
    let value = crate::workflow::parse_text(&text, format).map_err(|e| {
        CliError::Other(format!(
            "{} is not valid {}: {e}",
            file.display(),
            format.as_str()
        ))
    })?;
    let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let inputs: BTreeMap<String, String> = inputs.into_iter().collect();
    match crate::workflow::compile(&value, &inputs, &base) {
        Ok(wf) => {
            println!("{}: ok ({} steps)", file.display(), wf.steps.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            eprintln!("{}: {} problem(s)", file.display(), problems.0.len());
            for p in &problems.0 {
                eprintln!("  {p}");
            }
            Ok(ExitCode::from(2))
        }
    }
}
