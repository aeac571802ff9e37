//! Placement check for references inside `shell` scripts.
//!
//! [`Template::render`] with [`Quoting::Shell`] turns a value into one shell word, which is
//! only safe where the shell reads a *word*: not inside `'…'` or `"…"` (a quoted value there
//! closes the user's quotes, so `"{x.output}"` with the value `"; touch X; "` runs code), not
//! in a heredoc body (where `$(…)` expands whatever the quoting), not in a `#` comment (a
//! newline in the value ends the comment) and not right after a `$` (bash reads `$'…'` as
//! an escape string).
//!
//! Invariant: a `shell` template accepted by [`check_placement`] has every reference in
//! a plain word position of the script, as far as a small POSIX lexer can tell (quotes,
//! backslashes, `$(…)`, backticks, comments, heredocs). It errs on the side of rejecting;
//! the fix is always to move the reference out of the quotes (`"Result: "{x.output}`) or to
//! pass it as an argument (`printf '%s\n' {x.output}`).
//!
//! [`Template::render`]: crate::workflow::template::Template::render
//! [`Quoting::Shell`]: crate::workflow::template::Quoting::Shell

use crate::workflow::template::{Segment, Template};

/// One level of nesting in the script.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ctx {
    /// Shell code: the top level, `$(…)` (closed by an unmatched `)`) or backticks.
    Code { parens: usize, backtick: bool },
    /// Inside `"…"`.
    Double,
}

/// Lexer state carried across literal segments.
#[derive(Debug)]
struct Lexer {
    stack: Vec<Ctx>,
    single: bool,
    comment: bool,
    escape: bool,
    /// Delimiters of heredocs whose bodies start after the current line.
    pending: Vec<(String, bool)>,
    /// The heredoc whose body we are in, and the text of its current line so far.
    heredoc: Option<(String, bool, String)>,
    /// The previous character (for word starts, `$(` and `<<`).
    prev: Option<char>,
    /// Whether `prev` was backslash-escaped (so an escaped `\$` is not a `$`).
    prev_escaped: bool,
    /// Unconsumed tail after `<<`, waiting for the delimiter word.
    want_delimiter: Option<bool>,
}

impl Lexer {
    fn new() -> Self {
        Self {
            stack: vec![Ctx::Code {
                parens: 0,
                backtick: false,
            }],
            single: false,
            comment: false,
            escape: false,
            pending: Vec::new(),
            heredoc: None,
            prev: None,
            prev_escaped: false,
            want_delimiter: None,
        }
    }

    fn top(&self) -> Ctx {
        self.stack.last().copied().unwrap_or(Ctx::Code {
            parens: 0,
            backtick: false,
        })
    }

    fn feed(&mut self, text: &str) {
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            let escaped = self.escape;
            self.step(c, &mut chars);
            self.prev = Some(c);
            self.prev_escaped = escaped;
        }
    }

    fn step(&mut self, c: char, chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
        if let Some((delimiter, strip_tabs, line)) = &mut self.heredoc {
            if c == '\n' {
                let body_line = if *strip_tabs {
                    line.trim_start_matches('\t')
                } else {
                    line.as_str()
                };
                if body_line == delimiter.as_str() {
                    self.heredoc = None;
                    self.start_pending_heredoc();
                } else {
                    line.clear();
                }
            } else {
                line.push(c);
            }
            return;
        }
        if c == '\n' && !self.single && !self.escape {
            self.comment = false;
            if self.top() != Ctx::Double {
                self.start_pending_heredoc();
                return;
            }
        }
        if self.comment {
            return;
        }
        if self.escape {
            self.escape = false;
            return;
        }
        if self.single {
            self.single = c != '\'';
            return;
        }
        if let Some(strip_tabs) = self.want_delimiter {
            if c == ' ' || c == '\t' {
                return;
            }
            let mut word: String = std::iter::once(c)
                .chain(std::iter::from_fn(|| {
                    chars.next_if(|n| {
                        !n.is_whitespace() && !matches!(n, ';' | '&' | '|' | '<' | '>' | ')')
                    })
                }))
                .collect();
            word.retain(|w| !matches!(w, '\'' | '"' | '\\'));
            self.pending.push((word, strip_tabs));
            self.want_delimiter = None;
            return;
        }
        match (self.top(), c) {
            (_, '\\') => self.escape = true,
            (Ctx::Double, '"') => {
                self.stack.pop();
            }
            (_, '(') if self.after_dollar() => self.stack.push(Ctx::Code {
                parens: 0,
                backtick: false,
            }),
            (Ctx::Code { backtick: true, .. }, '`') => {
                self.stack.pop();
            }
            (_, '`') => self.stack.push(Ctx::Code {
                parens: 0,
                backtick: true,
            }),
            (Ctx::Double, _) => {}
            (Ctx::Code { .. }, '\'') => self.single = true,
            (Ctx::Code { .. }, '"') => self.stack.push(Ctx::Double),
            (Ctx::Code { .. }, '#')
                if self
                    .prev
                    .is_none_or(|p| p.is_whitespace() || ";&|()".contains(p)) =>
            {
                self.comment = true;
            }
            (Ctx::Code { parens, backtick }, '(') => {
                self.replace_top(Ctx::Code {
                    parens: parens + 1,
                    backtick,
                });
            }
            (Ctx::Code { parens, backtick }, ')') => {
                if parens > 0 {
                    self.replace_top(Ctx::Code {
                        parens: parens - 1,
                        backtick,
                    });
                } else if self.stack.len() > 1 {
                    self.stack.pop();
                }
            }
            (Ctx::Code { .. }, '<') if self.prev == Some('<') => {
                if chars.next_if_eq(&'<').is_none() {
                    let strip_tabs = chars.next_if_eq(&'-').is_some();
                    self.want_delimiter = Some(strip_tabs);
                }
            }
            (Ctx::Code { .. }, _) => {}
        }
    }

    fn after_dollar(&self) -> bool {
        self.prev == Some('$') && !self.prev_escaped
    }

    fn replace_top(&mut self, ctx: Ctx) {
        if let Some(top) = self.stack.last_mut() {
            *top = ctx;
        }
    }

    fn start_pending_heredoc(&mut self) {
        if !self.pending.is_empty() {
            let (delimiter, strip_tabs) = self.pending.remove(0);
            self.heredoc = Some((delimiter, strip_tabs, String::new()));
        }
    }

    /// Why a word inserted here would not be a plain word, if it would not.
    fn unsafe_position(&self) -> Option<&'static str> {
        if self.heredoc.is_some() {
            Some("is inside a heredoc body, where the shell expands `$(…)` whatever the quoting")
        } else if self.comment {
            Some("is inside a `#` comment, which a newline in the value would end")
        } else if self.single {
            Some("is inside '…' quotes; it is already inserted as one quoted word")
        } else if self.top() == Ctx::Double {
            Some("is inside \"…\" quotes; it is already inserted as one quoted word")
        } else if self.after_dollar() {
            Some("follows a `$`, which makes bash read the quoted value as a `$'…'` escape string")
        } else {
            None
        }
    }
}

/// Checks that every reference in a `shell` template sits where one shell word is safe.
/// The error names the first misplaced reference and how to fix it.
pub fn check_placement(template: &Template) -> Result<(), String> {
    let mut lexer = Lexer::new();
    for segment in template.segments() {
        match segment {
            Segment::Literal(text) => lexer.feed(text),
            Segment::Ref(reference) => {
                if let Some(why) = lexer.unsafe_position() {
                    return Err(format!(
                        "{reference} {why}; values are inserted shell-quoted, so write it as a bare word, \
                         e.g. `\"Result: \"{reference}` or `printf '%s\\n' {reference}`"
                    ));
                }
                lexer.prev = Some('x');
                lexer.prev_escaped = false;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src: &str) -> Result<(), String> {
        check_placement(&Template::parse(src).unwrap())
    }

    #[test]
    fn bare_word_references_are_accepted() {
        for src in [
            "printf %s {a.output} | tail -n 5",
            "echo \"Result: \"{a.output}",
            "x=$(echo {a.output}) && echo \"$x\"",
            "echo \"$(printf %s {a.output})\"",
            "echo `printf %s {a.output}`",
            "echo 'it''s' {a.output} \\\" {a.output}",
            "cat <<EOF\nbody $HOME\nEOF\necho {a.output}",
            "cat <<-'END'\n\tx\n\tEND\necho {a.output}",
            "# comment\necho {a.output} # trailing",
            "echo a#b {a.output}",
            "cat <<< {a.output}",
            "echo \\${a.output}",
            "case {a.output} in (x) echo y;; esac; echo {a.output}",
        ] {
            assert_eq!(check(src), Ok(()), "{src}");
        }
    }

    #[test]
    fn references_inside_quotes_heredocs_or_comments_are_rejected() {
        for (src, needle) in [
            ("echo \"{a.output}\"", "\"…\" quotes"),
            ("echo 'x {a.output}'", "'…' quotes"),
            ("echo \"$(echo \\\")\" \"{a.output}\"", "\"…\" quotes"),
            ("cat <<EOF\n{a.output}\nEOF", "heredoc"),
            ("cat <<'EOF' >f\nx {a.output}\nEOF", "heredoc"),
            ("echo hi # see {a.output}", "comment"),
            ("echo ${a.output}", "`$`"),
        ] {
            let err = check(src).unwrap_err();
            assert!(err.contains(needle), "{src}: {err}");
            assert!(err.contains("{a.output}"), "{src}: {err}");
        }
    }
}
