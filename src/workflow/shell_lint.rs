//! Where a reference may sit in a `shell` script, and how it is spelled there.
//!
//! [`Template::render_shell`] never puts a value into the script text: each reference becomes
//! an expansion of an environment variable (`BATON_REF_1`, …) that carries the value, so the
//! shell parser never sees the value's bytes. What remains is to spell that expansion right
//! for its position, which is what this module decides with a small POSIX lexer (quotes,
//! backslashes, `$(…)`, backticks, `${…}`, arithmetic, comments, heredocs):
//!
//! - in a word position (top level, `$(…)`, backticks): `"$BATON_REF_1"`, one quoted word;
//! - inside `"…"` or an unquoted heredoc body: `${BATON_REF_1}`, already quoted there.
//!
//! It rejects the positions where no spelling is right or the lexer cannot be sure: inside
//! `'…'` or a quoted heredoc body (nothing expands there), a `#` comment, a heredoc delimiter,
//! after `\` or `$` (the expansion would be escaped or fused with the `$`), inside `${…}`
//! (shells disagree on quoting there), inside arithmetic (`$((…))`, `((…))`, and a word
//! holding `[`, since bash evaluates `$[…]` and array subscripts as arithmetic, which runs
//! `$(…)` found in the *value*), inside backticks after a backslash or within `"…"`, and
//! after any construct that dash and bash lex differently (`$'…\'…'`, `$` in a heredoc
//! delimiter).
//!
//! Invariant: for a template [`classify`] accepts, each reference's spelling expands to its
//! value as exactly one argument (or one stretch of a quoted string) and the value is never
//! parsed or evaluated as shell code by the script's own syntax. A lexer mistake can at
//! worst mis-spell an expansion (wrong text), never make a value code: the value is not in
//! the script. What a command does with its arguments (`eval`, `sh -c`, bash's `[[ … -eq … ]]`)
//! is the script's choice, documented in `docs/security.md`.
//!
//! [`Template::render_shell`]: crate::workflow::template::Template::render_shell

use crate::workflow::template::{Segment, Template};

/// How one reference is spelled in the rendered script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// A word position: `"$VAR"`.
    Word,
    /// Inside double quotes or an unquoted heredoc body: `${VAR}`.
    Quoted,
}

impl Site {
    /// The expansion of variable `var` at this site.
    pub fn spell(self, var: &str) -> String {
        match self {
            Site::Word => format!("\"${var}\""),
            Site::Quoted => format!("${{{var}}}"),
        }
    }
}

/// What closes a code context.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Closer {
    /// The script itself.
    End,
    /// An unmatched `)`: `$(…)`, or arithmetic `$((…))` / `((…))` when `arith`.
    Paren,
    /// A backtick.
    Backtick,
}

/// One level of nesting in the script.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ctx {
    Code {
        parens: usize,
        closer: Closer,
        arith: bool,
    },
    /// Inside `"…"`.
    Double,
    /// Inside `${…}`; `braces` counts nested plain `{`.
    Param { braces: usize },
}

const TOP: Ctx = Ctx::Code {
    parens: 0,
    closer: Closer::End,
    arith: false,
};

/// A heredoc delimiter word being read.
#[derive(Debug, Default)]
struct Delimiter {
    word: String,
    started: bool,
    quoted: bool,
    single: bool,
    double: bool,
    escape: bool,
    strip_tabs: bool,
}

/// A heredoc body being read.
#[derive(Debug)]
struct Body {
    delimiter: String,
    strip_tabs: bool,
    /// A quoted delimiter makes the body literal.
    quoted: bool,
    line: String,
    /// `$(`, `${` or a backtick appeared in this (unquoted) body: not analysed further.
    expands: bool,
}

/// Lexer state carried across segments.
#[derive(Debug)]
struct Lexer {
    stack: Vec<Ctx>,
    single: bool,
    /// Inside bash's `$'…'`.
    ansi: bool,
    comment: bool,
    escape: bool,
    /// Heredocs whose bodies start after the current line: (delimiter, strip tabs, quoted).
    pending: Vec<(String, bool, bool)>,
    body: Option<Body>,
    delimiter: Option<Delimiter>,
    prev: Option<char>,
    prev_escaped: bool,
    /// The current unquoted word holds a `[`.
    bracket_word: bool,
    /// A backslash appeared inside the backticks that are open.
    backtick_backslash: bool,
    /// Set once the script contains something dash and bash lex differently.
    ambiguous: Option<&'static str>,
}

impl Lexer {
    fn new() -> Self {
        Self {
            stack: vec![TOP],
            single: false,
            ansi: false,
            comment: false,
            escape: false,
            pending: Vec::new(),
            body: None,
            delimiter: None,
            prev: None,
            prev_escaped: false,
            bracket_word: false,
            backtick_backslash: false,
            ambiguous: None,
        }
    }

    fn top(&self) -> Ctx {
        self.stack.last().copied().unwrap_or(TOP)
    }

    fn in_backticks(&self) -> bool {
        self.stack.iter().any(|c| {
            matches!(
                c,
                Ctx::Code {
                    closer: Closer::Backtick,
                    ..
                }
            )
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
        if self.body.is_some() {
            self.body_char(c);
            return;
        }
        if self.delimiter.is_some() && self.delimiter_char(c) {
            return;
        }
        if c == '\n' && !self.single && !self.ansi && !self.escape {
            self.comment = false;
            self.bracket_word = false;
            if matches!(self.top(), Ctx::Code { .. }) {
                self.start_pending_body();
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
        if self.ansi {
            match c {
                '\\' => {
                    if chars.peek() == Some(&'\'') {
                        self.ambiguous = Some(
                            "follows a `$'…\\'…'` string, which dash and bash end differently",
                        );
                    }
                    chars.next();
                }
                '\'' => self.ansi = false,
                _ => {}
            }
            return;
        }
        if c == '\\' {
            self.escape = true;
            if self.in_backticks() {
                self.backtick_backslash = true;
            }
            return;
        }
        let dollar = self.after_dollar();
        match (self.top(), c) {
            (Ctx::Double, '"') => {
                self.stack.pop();
            }
            (_, '(') if dollar => {
                let arith = chars.next_if_eq(&'(').is_some();
                self.stack.push(Ctx::Code {
                    parens: usize::from(arith),
                    closer: Closer::Paren,
                    arith,
                });
            }
            (_, '{') if dollar => self.stack.push(Ctx::Param { braces: 0 }),
            (
                Ctx::Code {
                    closer: Closer::Backtick,
                    ..
                },
                '`',
            ) => {
                self.stack.pop();
                if !self.in_backticks() {
                    self.backtick_backslash = false;
                }
            }
            (_, '`') => self.stack.push(Ctx::Code {
                parens: 0,
                closer: Closer::Backtick,
                arith: false,
            }),
            (Ctx::Double, _) => {}
            (Ctx::Param { braces }, '{') => self.replace_top(Ctx::Param { braces: braces + 1 }),
            (Ctx::Param { braces: 0 }, '}') => {
                self.stack.pop();
            }
            (Ctx::Param { braces }, '}') => self.replace_top(Ctx::Param { braces: braces - 1 }),
            (Ctx::Param { .. }, '\'') => {
                if self.stack.contains(&Ctx::Double) {
                    self.ambiguous =
                        Some("follows '…' inside \"${…}\", which shells read differently");
                }
                self.single = true;
            }
            (Ctx::Param { .. }, '"') => self.stack.push(Ctx::Double),
            (Ctx::Param { .. }, _) => {}
            (Ctx::Code { .. }, '\'') if dollar => self.ansi = true,
            (Ctx::Code { .. }, '\'') => self.single = true,
            (Ctx::Code { .. }, '"') => self.stack.push(Ctx::Double),
            (Ctx::Code { .. }, '#') if self.word_starts() => self.comment = true,
            (
                Ctx::Code {
                    parens,
                    closer,
                    arith,
                },
                '(',
            ) => {
                let double = !arith && chars.next_if_eq(&'(').is_some();
                if double {
                    self.stack.push(Ctx::Code {
                        parens: 1,
                        closer: Closer::Paren,
                        arith: true,
                    });
                } else {
                    self.replace_top(Ctx::Code {
                        parens: parens + 1,
                        closer,
                        arith,
                    });
                }
                self.bracket_word = false;
            }
            (
                Ctx::Code {
                    parens,
                    closer,
                    arith,
                },
                ')',
            ) => {
                if parens > 0 {
                    self.replace_top(Ctx::Code {
                        parens: parens - 1,
                        closer,
                        arith,
                    });
                } else if closer == Closer::Paren {
                    self.stack.pop();
                }
                self.bracket_word = false;
            }
            (Ctx::Code { .. }, '<') if self.prev == Some('<') && !self.prev_escaped => {
                if chars.next_if_eq(&'<').is_none() {
                    self.delimiter = Some(Delimiter {
                        strip_tabs: chars.next_if_eq(&'-').is_some(),
                        ..Delimiter::default()
                    });
                }
            }
            (Ctx::Code { .. }, '[') => self.bracket_word = true,
            (Ctx::Code { .. }, c) if c.is_whitespace() || ";&|<>".contains(c) => {
                self.bracket_word = false;
            }
            (Ctx::Code { .. }, _) => {}
        }
    }

    /// Whether a `#` here starts a comment: at the start of a word, i.e. after nothing, or
    /// after an unescaped blank or operator character.
    fn word_starts(&self) -> bool {
        match self.prev {
            None => true,
            Some(p) => !self.prev_escaped && (p.is_whitespace() || ";&|()<>".contains(p)),
        }
    }

    /// One character of a heredoc delimiter word; false when the word ended before `c`,
    /// which is then lexed as usual.
    fn delimiter_char(&mut self, c: char) -> bool {
        let Some(d) = &mut self.delimiter else {
            return false;
        };
        if d.escape {
            d.escape = false;
            d.word.push(c);
            return true;
        }
        if d.single {
            if c == '\'' {
                d.single = false;
            } else {
                d.word.push(c);
            }
            return true;
        }
        if d.double {
            match c {
                '"' => d.double = false,
                '\\' => d.escape = true,
                '$' | '`' => {
                    self.ambiguous = Some("follows a heredoc delimiter with `$` or a backtick")
                }
                _ => d.word.push(c),
            }
            return true;
        }
        let ends = c.is_whitespace() || ";&|<>()".contains(c);
        if !d.started && (c == ' ' || c == '\t') {
            return true;
        }
        if ends {
            if !d.started {
                self.ambiguous = Some("follows a `<<` without a delimiter word");
                self.delimiter = None;
                return false;
            }
            self.pending
                .push((std::mem::take(&mut d.word), d.strip_tabs, d.quoted));
            self.delimiter = None;
            return false;
        }
        d.started = true;
        match c {
            '\\' => {
                d.escape = true;
                d.quoted = true;
            }
            '\'' => {
                d.single = true;
                d.quoted = true;
            }
            '"' => {
                d.double = true;
                d.quoted = true;
            }
            '$' | '`' => {
                self.ambiguous = Some("follows a heredoc delimiter with `$` or a backtick")
            }
            _ => d.word.push(c),
        }
        true
    }

    fn body_char(&mut self, c: char) {
        let dollar = self.after_dollar();
        let Some(body) = &mut self.body else {
            return;
        };
        if c == '\n' {
            let line = if body.strip_tabs {
                body.line.trim_start_matches('\t')
            } else {
                body.line.as_str()
            };
            if line == body.delimiter {
                self.body = None;
                self.escape = false;
                self.start_pending_body();
                return;
            }
            body.line.clear();
            self.escape = false;
            return;
        }
        body.line.push(c);
        if body.quoted {
            return;
        }
        if self.escape {
            self.escape = false;
        } else if c == '\\' {
            self.escape = true;
        } else if c == '`' || (matches!(c, '(' | '{') && dollar) {
            body.expands = true;
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

    fn start_pending_body(&mut self) {
        if !self.pending.is_empty() {
            let (delimiter, strip_tabs, quoted) = self.pending.remove(0);
            self.body = Some(Body {
                delimiter,
                strip_tabs,
                quoted,
                line: String::new(),
                expands: false,
            });
        }
    }

    /// Where a reference here goes, or why it cannot go here.
    fn site(&self) -> Result<Site, &'static str> {
        if let Some(why) = self.ambiguous {
            return Err(why);
        }
        if let Some(body) = &self.body {
            return if body.quoted {
                Err("is inside a quoted heredoc body, which is literal text")
            } else if self.escape {
                Err("follows a `\\`, which would escape its expansion")
            } else if self.after_dollar() {
                Err("follows a `$`, which would fuse with its expansion")
            } else if body.expands {
                Err("is in a heredoc body after `$(`, `${` or a backtick, which is not analysed")
            } else {
                Ok(Site::Quoted)
            };
        }
        if self.delimiter.is_some() {
            return Err("is in a heredoc delimiter word");
        }
        if self.comment {
            return Err("is inside a `#` comment");
        }
        if self.single || self.ansi {
            return Err("is inside '…' quotes, where nothing expands");
        }
        if self.escape {
            return Err("follows a `\\`, which would escape its expansion");
        }
        if self.after_dollar() {
            return Err("follows a `$`, which would fuse with its expansion");
        }
        if self.stack.iter().any(|c| matches!(c, Ctx::Param { .. })) {
            return Err("is inside `${…}`, where shells disagree on quoting");
        }
        if self
            .stack
            .iter()
            .any(|c| matches!(c, Ctx::Code { arith: true, .. }))
        {
            return Err("is inside arithmetic, which evaluates `$(…)` found in the value");
        }
        if self.in_backticks() {
            if self.backtick_backslash {
                return Err("is inside backticks after a `\\`; use `$(…)` instead");
            }
            let outer_double = self.stack.iter().position(|c| *c == Ctx::Double);
            let first_backtick = self.stack.iter().position(|c| {
                matches!(
                    c,
                    Ctx::Code {
                        closer: Closer::Backtick,
                        ..
                    }
                )
            });
            if let (Some(d), Some(b)) = (outer_double, first_backtick)
                && d < b
            {
                return Err("is inside backticks within \"…\"; use `$(…)` instead");
            }
        }
        match self.top() {
            Ctx::Double => Ok(Site::Quoted),
            Ctx::Code { .. } if self.bracket_word => Err(
                "is in a word after `[`, which bash may evaluate as arithmetic (`$[…]`, array subscripts)",
            ),
            Ctx::Code { .. } => Ok(Site::Word),
            Ctx::Param { .. } => Err("is inside `${…}`, where shells disagree on quoting"),
        }
    }
}

/// The site of each reference of a `shell` template, in order, with the environment
/// variable name each expands (`var(i)` for the `i`-th reference). The error names the first
/// misplaced reference and how to fix it.
pub fn classify(template: &Template, var: &dyn Fn(usize) -> String) -> Result<Vec<Site>, String> {
    let mut lexer = Lexer::new();
    let mut sites = Vec::new();
    for segment in template.segments() {
        match segment {
            Segment::Literal(text) => lexer.feed(text),
            Segment::Ref(reference) => {
                let site = lexer.site().map_err(|why| {
                    format!(
                        "{reference} {why}; a value reaches the script as a quoted variable, so put \
                         the reference in a plain word or inside \"…\", e.g. `printf '%s\\n' {reference}` \
                         or `echo \"Result: {reference}\"`"
                    )
                })?;
                let spelled = site.spell(&var(sites.len()));
                match &mut lexer.body {
                    // The body's text is compared with its delimiter, nothing else.
                    Some(body) => {
                        body.line.push_str(&spelled);
                        lexer.prev = Some('}');
                        lexer.prev_escaped = false;
                    }
                    None => lexer.feed(&spelled),
                }
                sites.push(site);
            }
        }
    }
    Ok(sites)
}

/// Checks that every reference in a `shell` template sits where its expansion is safe.
pub fn check_placement(template: &Template) -> Result<(), String> {
    classify(template, &|i| format!("BATON_REF_{}", i + 1)).map(|_| ())
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
    fn references_in_double_quotes_and_unquoted_heredocs_are_accepted() {
        for src in [
            "echo \"{a.output}\"",
            "echo \"$(echo \\\")\" \"{a.output}\"",
            "cat <<EOF\n{a.output}\nEOF",
            "cat <<EOF\nx {a.output} y\nEOF\necho {a.output}",
            "echo \"a $(printf %s \"{a.output}\") b\"",
            "echo a\\ #{a.output}",
        ] {
            assert_eq!(check(src), Ok(()), "{src}");
        }
    }

    #[test]
    fn positions_where_no_expansion_is_right_are_rejected() {
        for (src, needle) in [
            ("echo 'x {a.output}'", "'…' quotes"),
            ("cat <<'EOF' >f\nx {a.output}\nEOF", "quoted heredoc body"),
            ("echo hi # see {a.output}", "comment"),
            ("echo ${a.output}", "`$`"),
            ("echo \"${a.output}\"", "`$`"),
            ("echo \\{a.output}", "`\\`"),
            ("echo \"\\{a.output}\"", "`\\`"),
            ("echo \"${{NAME:-\"{a.output}\"}}\"", "`${…}`"),
            ("echo ${{NAME:-{a.output}}}", "`${…}`"),
            ("cat <<E';{a.output}'\nx\nE;\n", "delimiter"),
            ("cat << {a.output}\nx\n", "delimiter"),
            ("echo $(( {a.output} + 1 ))", "arithmetic"),
            ("(( {a.output} > 1 ))", "arithmetic"),
            ("echo $(( $(echo {a.output}) ))", "arithmetic"),
            ("a[{a.output}]=1", "`[`"),
            ("echo $[{a.output}]", "`[`"),
            ("echo `printf %s \\\\ {a.output}`", "backticks after"),
            ("echo \"`printf %s {a.output}`\"", "backticks within"),
            ("echo $'it\\'s' {a.output}", "dash and bash"),
            ("echo a\\ #'\n{a.output}'", "'…' quotes"),
            ("cat <<EOF\n$(cat) {a.output}\nEOF", "not analysed"),
        ] {
            let err = check(src).unwrap_err();
            assert!(err.contains(needle), "{src}: {err}");
            assert!(err.contains("{a.output}"), "{src}: {err}");
        }
    }
}
