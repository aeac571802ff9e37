//! Saved workflows: definition files (`*.json`, `*.yaml`, `*.yml`) in the project's
//! `.baton/workflows/` (under the server's working directory) and the user's
//! `$XDG_CONFIG_HOME/baton/workflows/` (default `~/.config/baton/workflows/`), started by
//! name. The MCP front-end lists them as prompts, the terminal as `baton list --saved`.
//!
//! Invariant: a scan never fails because of one file — every file is either a usable
//! [`SavedWorkflow`] or a [`BadFile`] with its path and every problem found, so a broken
//! file never hides the good ones. A project file wins over a user file of the same name.
//! The folders are read on every request (they are small), so what is listed is what runs.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::engine::MAX_DEFINITION_BYTES;
use crate::workflow::{self, Format, Signature};

/// Where a saved workflow lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// `.baton/workflows/` of the working directory.
    Project,
    /// `~/.config/baton/workflows/`.
    User,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Project => "project",
            Origin::User => "user",
        }
    }
}

/// A saved workflow that compiles.
#[derive(Debug, Clone)]
pub struct SavedWorkflow {
    /// The file name without its extension: what `invoke_async {name}` and `baton run NAME`
    /// take, and the prompt's name.
    pub name: String,
    pub path: PathBuf,
    pub origin: Origin,
    pub signature: Signature,
    pub step_count: usize,
    /// Files of the same name this one wins over (user files behind a project file).
    pub shadows: Vec<PathBuf>,
}

/// A file in a workflows folder that cannot be used, with why.
#[derive(Debug, Clone)]
pub struct BadFile {
    /// The name it would have, when the file name makes one.
    pub name: Option<String>,
    pub path: PathBuf,
    pub origin: Origin,
    pub problems: Vec<String>,
}

impl BadFile {
    /// `PATH: N problem(s)` and one indented line per problem.
    pub fn report(&self) -> String {
        let mut out = format!(
            "{}: {} problem(s)",
            self.path.display(),
            self.problems.len()
        );
        for p in &self.problems {
            out.push_str("\n  ");
            out.push_str(p);
        }
        out
    }
}

/// What a scan found: the usable workflows by name, and the files that are not.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub workflows: Vec<SavedWorkflow>,
    pub bad: Vec<BadFile>,
}

/// Why a name does not start a saved workflow.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FindError {
    #[error("no saved workflow is named {name:?}; {}", known_list(.known, .dirs))]
    Unknown {
        name: String,
        known: Vec<String>,
        dirs: Vec<PathBuf>,
    },
    #[error("the saved workflow {:?} cannot be used: {}", .0.name.as_deref().unwrap_or("?"), .0.report())]
    Bad(BadFile),
}

fn known_list(known: &[String], dirs: &[PathBuf]) -> String {
    let dirs = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ");
    if known.is_empty() {
        format!("there are none (save *.json or *.yaml definitions in {dirs})")
    } else {
        format!("saved workflows (in {dirs}): {}", known.join(", "))
    }
}

/// The saved-workflow folders of one working directory.
#[derive(Debug, Clone)]
pub struct Library {
    /// Folders in precedence order: the project's first.
    dirs: Vec<(Origin, PathBuf)>,
    /// Relative `cwd`s of a saved workflow resolve against this (the working directory).
    base: PathBuf,
}

/// The user's folder: `$XDG_CONFIG_HOME/baton/workflows`, else `$HOME/.config/baton/workflows`.
pub fn user_dir() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| {
        let p = PathBuf::from(v);
        p.is_absolute().then_some(p)
    };
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").and_then(absolute) {
        return Some(xdg.join("baton").join("workflows"));
    }
    std::env::var_os("HOME")
        .and_then(absolute)
        .map(|h| h.join(".config").join("baton").join("workflows"))
}

/// Whether `name` can name a saved workflow (and an MCP prompt): letters, digits, `-`, `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// One stamp per definition file, for noticing that a folder changed.
pub type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn definition_format(path: &Path) -> Option<Format> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    matches!(ext.as_str(), "json" | "yaml" | "yml").then(|| Format::of(path))
}

impl Library {
    /// The library of working directory `base`: `base/.baton/workflows` and the user's folder.
    pub fn new(base: &Path) -> Library {
        let mut dirs = vec![(Origin::Project, base.join(".baton").join("workflows"))];
        if let Some(user) = user_dir() {
            dirs.push((Origin::User, user));
        }
        Library::with_dirs(base, dirs)
    }

    /// A library over explicit folders (precedence order).
    pub fn with_dirs(base: &Path, dirs: Vec<(Origin, PathBuf)>) -> Library {
        Library {
            dirs,
            base: base.to_path_buf(),
        }
    }

    /// The folders read, in precedence order.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    /// Definition files of one folder, sorted by file name (a missing folder has none).
    fn files(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| definition_format(p).is_some())
            .collect();
        files.sort();
        files
    }

    /// Cheap stamps (path, modification time, size) of every definition file.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut out = Vec::new();
        for (_, dir) in &self.dirs {
            for path in Library::files(dir) {
                let meta = std::fs::metadata(&path).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                out.push((path, modified, meta.map_or(0, |m| m.len())));
            }
        }
        out
    }

    /// Reads and checks every file of every folder.
    pub fn scan(&self) -> Listing {
        let mut by_name: BTreeMap<String, SavedWorkflow> = BTreeMap::new();
        let mut bad = Vec::new();
        for (origin, dir) in &self.dirs {
            // Within one folder, the first file (by name) of a stem wins.
            let mut here: BTreeMap<String, PathBuf> = BTreeMap::new();
            for path in Library::files(dir) {
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("")
                    .to_owned();
                if !valid_name(&stem) {
                    bad.push(BadFile {
                        name: None,
                        path,
                        origin: *origin,
                        problems: vec![format!(
                            "file name {stem:?} does not make a workflow name: use letters, digits, '-' and '_' only (at most 64)"
                        )],
                    });
                    continue;
                }
                if let Some(first) = here.get(&stem) {
                    bad.push(BadFile {
                        name: Some(stem),
                        problems: vec![format!(
                            "{} in the same folder has this name and is used instead; rename or remove one",
                            first.display()
                        )],
                        path,
                        origin: *origin,
                    });
                    continue;
                }
                here.insert(stem.clone(), path.clone());
                if let Some(winner) = by_name.get_mut(&stem) {
                    winner.shadows.push(path);
                    continue;
                }
                match self.check(&path) {
                    Ok((signature, step_count)) => {
                        by_name.insert(
                            stem.clone(),
                            SavedWorkflow {
                                name: stem,
                                path,
                                origin: *origin,
                                signature,
                                step_count,
                                shadows: Vec::new(),
                            },
                        );
                    }
                    Err(problems) => bad.push(BadFile {
                        name: Some(stem),
                        path,
                        origin: *origin,
                        problems,
                    }),
                }
            }
        }
        // A bad project file still claims its name: a user file of that name is not run
        // in its place without the user noticing.
        Listing {
            workflows: by_name
                .into_values()
                .filter(|w| {
                    !bad.iter()
                        .any(|b| b.name.as_deref() == Some(&w.name) && b.origin < w.origin)
                })
                .collect(),
            bad,
        }
    }

    /// The saved workflow `name`, or why there is none.
    pub fn find(&self, name: &str) -> Result<SavedWorkflow, FindError> {
        let listing = self.scan();
        if let Some(b) = listing
            .bad
            .iter()
            .filter(|b| b.name.as_deref() == Some(name))
            .min_by_key(|b| b.origin)
        {
            let beaten = listing
                .workflows
                .iter()
                .any(|w| w.name == name && w.origin <= b.origin);
            if !beaten {
                return Err(FindError::Bad(b.clone()));
            }
        }
        listing
            .workflows
            .iter()
            .find(|w| w.name == name)
            .cloned()
            .ok_or_else(|| FindError::Unknown {
                name: name.to_owned(),
                known: listing.workflows.iter().map(|w| w.name.clone()).collect(),
                dirs: self.dirs(),
            })
    }

    /// Parses and compiles one file (required inputs filled with a placeholder), returning
    /// its signature and step count, or every problem.
    fn check(&self, path: &Path) -> Result<(Signature, usize), Vec<String>> {
        let format = Format::of(path);
        let text = read_capped(path).map_err(|e| vec![e])?;
        let value = workflow::parse_text(&text, format)
            .map_err(|e| vec![format!("not valid {}: {e}", format.as_str())])?;
        let signature = workflow::signature(&value)
            .map_err(|ps| ps.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let placeholders: BTreeMap<String, String> = signature
            .inputs
            .iter()
            .filter(|i| i.required())
            .map(|i| (i.name.clone(), format!("<{}>", i.name)))
            .collect();
        let wf = workflow::compile(&value, &placeholders, &self.base)
            .map_err(|ps| ps.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        Ok((signature, wf.steps.len()))
    }
}

/// A regular file's text, at most [`MAX_DEFINITION_BYTES`]; never blocks on a FIFO.
fn read_capped(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_DEFINITION_BYTES {
        return Err(format!(
            "it is {} bytes; workflow files are limited to {MAX_DEFINITION_BYTES} bytes",
            meta.len()
        ));
    }
    let mut text = String::new();
    file.take(MAX_DEFINITION_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lib(dir: &Path) -> (Library, PathBuf, PathBuf) {
        let project = dir.join("p/.baton/workflows");
        let user = dir.join("u");
        std::fs::create_dir_all(&project).unwrap();
        std::fs::create_dir_all(&user).unwrap();
        let lib = Library::with_dirs(
            &dir.join("p"),
            vec![
                (Origin::Project, project.clone()),
                (Origin::User, user.clone()),
            ],
        );
        (lib, project, user)
    }

    const GOOD_YAML: &str = "description: says hi\ninputs:\n  who: {description: whom}\nsteps:\n  - id: hi\n    run: [echo, \"{inputs.who}\"]\n";

    #[test]
    fn a_bad_file_is_reported_with_its_problems_and_does_not_hide_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (lib, project, _) = lib(dir.path());
        std::fs::write(project.join("hello.yaml"), GOOD_YAML).unwrap();
        std::fs::write(project.join("broken.json"), r#"{"steps": [{"id": "a"}]}"#).unwrap();
        std::fs::write(project.join("syntax.yml"), "steps: [\n").unwrap();
        std::fs::write(project.join("notes.txt"), "ignored").unwrap();
        let listing = lib.scan();
        let names: Vec<_> = listing.workflows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["hello"]);
        assert_eq!(listing.workflows[0].step_count, 1);
        assert_eq!(
            listing.workflows[0].signature.description.as_deref(),
            Some("says hi")
        );
        assert_eq!(listing.bad.len(), 2, "{:?}", listing.bad);
        let broken = listing
            .bad
            .iter()
            .find(|b| b.name.as_deref() == Some("broken"))
            .unwrap();
        assert!(
            broken.report().contains("broken.json"),
            "{}",
            broken.report()
        );
        assert!(!broken.problems.is_empty());
        let syntax = listing
            .bad
            .iter()
            .find(|b| b.name.as_deref() == Some("syntax"))
            .unwrap();
        assert!(syntax.problems[0].contains("not valid YAML"), "{syntax:?}");
        assert!(matches!(lib.find("broken"), Err(FindError::Bad(_))));
        assert!(lib.find("hello").is_ok());
        let unknown = lib.find("nope").unwrap_err().to_string();
        assert!(unknown.contains("hello"), "{unknown}");
    }

    #[test]
    fn a_project_file_wins_over_a_user_file_of_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let (lib, project, user) = lib(dir.path());
        std::fs::write(
            project.join("same.json"),
            r#"{"steps": [{"run": ["true"]}]}"#,
        )
        .unwrap();
        std::fs::write(user.join("same.yaml"), GOOD_YAML).unwrap();
        std::fs::write(user.join("mine.yaml"), GOOD_YAML).unwrap();
        let listing = lib.scan();
        let same = listing.workflows.iter().find(|w| w.name == "same").unwrap();
        assert_eq!(same.origin, Origin::Project);
        assert_eq!(same.shadows, vec![user.join("same.yaml")]);
        assert_eq!(lib.find("mine").unwrap().origin, Origin::User);
    }

    #[test]
    fn a_broken_project_file_is_not_silently_replaced_by_a_user_file() {
        let dir = tempfile::tempdir().unwrap();
        let (lib, project, user) = lib(dir.path());
        std::fs::write(project.join("same.json"), "{").unwrap();
        std::fs::write(user.join("same.yaml"), GOOD_YAML).unwrap();
        assert!(matches!(lib.find("same"), Err(FindError::Bad(_))));
        assert!(lib.scan().workflows.iter().all(|w| w.name != "same"));
    }

    #[test]
    fn fingerprint_changes_when_a_file_is_added_or_edited() {
        let dir = tempfile::tempdir().unwrap();
        let (lib, project, _) = lib(dir.path());
        let empty = lib.fingerprint();
        std::fs::write(project.join("a.json"), "{}").unwrap();
        let one = lib.fingerprint();
        assert_ne!(empty, one);
        std::fs::write(project.join("a.json"), "{\"steps\": []}").unwrap();
        assert_ne!(one, lib.fingerprint());
    }

    #[test]
    fn names_are_letters_digits_dashes_and_underscores() {
        assert!(valid_name("fix-tests_2"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(""));
        assert!(!valid_name("a.b"));
    }
}
