//! Differential fuzzing of `shell` templates against real shells: random hostile values in
//! random accepted script shapes, run by dash and by bash. Each value must arrive as exactly
//! the argument (or quoted stretch) the shape puts it in, byte for byte, and nothing a value
//! says may run.
//!
//! Bounded and seeded: `BATON_FUZZ_SEED` replays a run (the seed is printed), and
//! `BATON_FUZZ_ITERS` (default 60) makes it longer, e.g.
//! `BATON_FUZZ_ITERS=20000 cargo test --release --test it shell_fuzz -- --nocapture`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use baton::workflow::{Reference, Template, compile};
use serde_json::json;

/// Marker file a hostile value tries to create.
const MARK: &str = "PWNED";

/// Pieces hostile values are built from.
const PIECES: &[&str] = &[
    "'",
    "\"",
    "\\",
    "`",
    "$",
    "$(",
    ")",
    "${",
    "}",
    "{",
    ";",
    "&",
    "|",
    "#",
    "\n",
    "\t",
    " ",
    "*",
    "?",
    "[",
    "]",
    "~",
    "!",
    "<",
    ">",
    "E",
    "EOF",
    "\\'\\\"",
    "$(touch PWNED)",
    "`touch PWNED`",
    "'; touch PWNED; '",
    "\"; touch PWNED; \"",
    "\ntouch PWNED\n",
    "a[$(touch PWNED)]",
    "$((1+1))",
    "$IFS",
    "%s",
    "-n",
    "--",
    "é",
    "\u{1b}[0m",
    "\r",
];

fn hostile(rng: &mut fastrand::Rng) -> String {
    let mut v = String::new();
    for _ in 0..rng.usize(0..8) {
        if rng.u8(0..4) == 0 {
            // Any char but NUL, which no environment can carry.
            let c = rng.char('\u{1}'..='\u{7f}');
            v.push(c);
        } else {
            v.push_str(PIECES[rng.usize(0..PIECES.len())]);
        }
    }
    v
}

/// A template fragment and the text it evaluates to, given the value.
struct Shape {
    src: String,
    eval: Box<dyn Fn(&str) -> String>,
}

fn lit(rng: &mut fastrand::Rng) -> String {
    (0..rng.usize(0..3))
        .map(|_| rng.alphanumeric())
        .collect::<String>()
}

/// Text inside `"…"` that evaluates to the value wrapped in literal text.
fn in_double(rng: &mut fastrand::Rng, depth: u32) -> Shape {
    let (a, b) = (lit(rng), lit(rng));
    if depth > 0 && rng.bool() {
        let inner = word(rng, depth - 1);
        let src = format!("{a}$(printf %s {}){b}", inner.src);
        return Shape {
            src,
            eval: Box::new(move |v| format!("{a}{}{b}", (inner.eval)(v).trim_end_matches('\n'))),
        };
    }
    Shape {
        src: format!("{a}{{x.output}}{b}"),
        eval: Box::new(move |v| format!("{a}{v}{b}")),
    }
}

/// One shell word that evaluates to a text built from the value.
fn word(rng: &mut fastrand::Rng, depth: u32) -> Shape {
    match rng.u8(0..6) {
        0 | 1 => Shape {
            src: "{x.output}".into(),
            eval: Box::new(|v| v.to_owned()),
        },
        2 => {
            let inner = in_double(rng, depth);
            Shape {
                src: format!("\"{}\"", inner.src),
                eval: inner.eval,
            }
        }
        3 if depth > 0 => {
            let (x, y) = (word(rng, depth - 1), word(rng, depth - 1));
            Shape {
                src: format!("{}{}", x.src, y.src),
                eval: Box::new(move |v| format!("{}{}", (x.eval)(v), (y.eval)(v))),
            }
        }
        4 if depth > 0 => {
            let inner = word(rng, depth - 1);
            Shape {
                src: format!("\"$(printf %s {})\"", inner.src),
                eval: Box::new(move |v| (inner.eval)(v).trim_end_matches('\n').to_owned()),
            }
        }
        _ => {
            let l = lit(rng);
            Shape {
                src: format!("'{l}'{{x.output}}"),
                eval: Box::new(move |v| format!("{l}{v}")),
            }
        }
    }
}

/// A script line and the NUL-separated records it prints, given the value.
fn line(rng: &mut fastrand::Rng) -> Shape {
    match rng.u8(0..5) {
        0 => Shape {
            src: "cat <<E\n{x.output}\nE\nprintf '\\0'".into(),
            eval: Box::new(|v| format!("{v}\n\0")),
        },
        1 => Shape {
            // Backticks: the value travels through the `$(…)`-like layer and back.
            src: "x=`printf %sx {x.output}`; out \"${{x%x}}\"".into(),
            eval: Box::new(|v| format!("1\0{v}\0")),
        },
        2 => Shape {
            src: "out a\\ #{x.output} # trailing {{comment}}".into(),
            eval: Box::new(|v| format!("1\0a #{v}\0")),
        },
        _ => {
            let words: Vec<Shape> = (0..rng.usize(1..4)).map(|_| word(rng, 2)).collect();
            let src = format!(
                "out {}",
                words
                    .iter()
                    .map(|w| w.src.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            Shape {
                src,
                eval: Box::new(move |v| {
                    let mut out = format!("{}\0", words.len());
                    for w in &words {
                        out.push_str(&(w.eval)(v));
                        out.push('\0');
                    }
                    out
                }),
            }
        }
    }
}

const PRELUDE: &str =
    "out() { printf '%s\\0' \"$#\"; for a in \"$@\"; do printf '%s\\0' \"$a\"; done; }\n";

/// Runs `src` as a `shell` step would (validated, rendered, its values in the environment)
/// under `shell`, in `dir`; returns stdout.
fn run_shell(shell: &str, src: &str, value: &str, dir: &Path) -> Vec<u8> {
    let definition =
        json!([{"id": "x", "run": ["true"]}, {"id": "s", "deps": ["x"], "shell": src}]);
    if let Err(e) = compile(&definition, &BTreeMap::new(), Path::new("/")) {
        panic!("a safe shape was rejected: {e}\n{src}");
    }
    let template = Template::parse(src).unwrap();
    let lookup = |_: &Reference| value.to_owned();
    let (script, env) = template.render_shell(&lookup);
    assert!(
        !value.contains(MARK) || !script.contains(MARK),
        "the value leaked into the script: {script}"
    );
    let out = Command::new(shell)
        .arg("-c")
        .arg(&script)
        .envs(env)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{shell} failed on\n{script}\nvalue {value:?}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn shells() -> Vec<&'static str> {
    ["dash", "bash"]
        .into_iter()
        .filter(|s| Command::new(s).arg("-c").arg("true").status().is_ok())
        .collect()
}

#[test]
fn shell_fuzz_values_arrive_byte_for_byte_and_never_run() {
    let seed = std::env::var("BATON_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let iters: usize = std::env::var("BATON_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    eprintln!("shell fuzz: BATON_FUZZ_SEED={seed} BATON_FUZZ_ITERS={iters}");
    let shells = shells();
    assert!(!shells.is_empty(), "neither dash nor bash is installed");
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..iters {
        let value = hostile(&mut rng);
        let lines: Vec<Shape> = (0..rng.usize(1..5)).map(|_| line(&mut rng)).collect();
        let mut src = PRELUDE.to_owned();
        let mut expected = String::new();
        for l in &lines {
            src.push_str(&l.src);
            src.push('\n');
            expected.push_str(&(l.eval)(&value));
        }
        for shell in &shells {
            let got = run_shell(shell, &src, &value, dir.path());
            assert!(
                got == expected.as_bytes(),
                "iteration {i} (BATON_FUZZ_SEED={seed}), {shell}:\n{src}\nvalue {value:?}\n\
                 expected {expected:?}\ngot      {:?}",
                String::from_utf8_lossy(&got)
            );
            assert!(
                !dir.path().join(MARK).exists(),
                "iteration {i} (BATON_FUZZ_SEED={seed}), {shell}: the value ran as code\n{src}\nvalue {value:?}"
            );
        }
    }
}

/// The shapes of issue 15 that used to pass validation and then run a value as code: each is
/// now either rejected at submission or runs with the value as data.
#[test]
fn shell_reference_value_never_becomes_code() {
    let value = "\\'\\\"$(touch PWNED)`touch PWNED`'; touch PWNED; '\ntouch PWNED\n";
    let dir = tempfile::tempdir().unwrap();
    for src in [
        "echo `printf %s {x.output}`",
        "echo \\{x.output}",
        "echo \"${{NAME:-\"{x.output}\"}}\"",
        "cat <<E';{x.output}'\nE;\n",
        "echo a\\ #'\n{x.output}'",
        "echo \"{x.output}\" '{x.output}' # {x.output}",
    ] {
        let template = Template::parse(src).unwrap();
        let definition =
            json!([{"id": "x", "run": ["true"]}, {"id": "s", "deps": ["x"], "shell": src}]);
        let accepted = compile(&definition, &BTreeMap::new(), Path::new("/")).is_ok();
        let lookup = |_: &Reference| value.to_owned();
        let (script, env) = template.render_shell(&lookup);
        assert!(!script.contains(MARK), "{src}: the value is in the script");
        for shell in shells() {
            let _ = Command::new(shell)
                .arg("-c")
                .arg(&script)
                .envs(env.clone())
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                !dir.path().join(MARK).exists(),
                "{src} (accepted: {accepted}) ran the value as code under {shell}"
            );
        }
    }
}
