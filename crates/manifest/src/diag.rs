//! Diagnostics: what went wrong, where (file, line, column, the source line),
//! and what to do about it. Rendered rustc-style by `Display`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::yaml::Pos;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a manifest file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The source line, with any secret-looking value already replaced.
    pub source_line: Option<String>,
    /// How many columns to underline from `column`.
    #[serde(skip)]
    pub width: usize,
    pub help: Option<String>,
}

impl Diagnostic {
    /// Shows `file` relative to `base` when it lies under it; used by the CLI
    /// so errors name `.bot-bottle/bottles/dev.yaml` rather than an absolute path.
    pub fn relative_to(mut self, base: &Path) -> Self {
        if let Ok(rel) = self.file.strip_prefix(base) {
            self.file = rel.to_path_buf();
        }
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        writeln!(f, "{label}: {}", self.message)?;
        let gutter = " ".repeat(self.line.to_string().len());
        writeln!(f, "{gutter}--> {}:{}:{}", self.file.display(), self.line, self.column)?;
        if let Some(src) = &self.source_line {
            writeln!(f, "{gutter} |")?;
            writeln!(f, "{} | {}", self.line, src)?;
            let pad: String =
                src.chars().take(self.column.saturating_sub(1)).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
            writeln!(f, "{gutter} | {pad}{}", "^".repeat(self.width.max(1)))?;
        }
        if let Some(help) = &self.help {
            writeln!(f, "{gutter} = help: {help}")?;
        }
        Ok(())
    }
}

/// All diagnostics found in one operation; the error type of loading and
/// resolving. Never empty of errors when returned as an `Err`.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
#[error("{} in manifest", count(self.errors().count(), "error"))]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Warning)
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// Every diagnostic, rendered and separated by blank lines.
    pub fn render(&self) -> String {
        self.0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
    }

    pub(crate) fn sort(&mut self) {
        self.0.sort_by(|a, b| (&a.file, a.line, a.column, &a.message).cmp(&(&b.file, b.line, b.column, &b.message)));
        self.0.dedup();
    }
}

pub(crate) fn count(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// A file being checked: its path, its full text, and where the YAML part
/// starts (agent frontmatter begins on line 2).
#[derive(Debug)]
pub(crate) struct Source<'a> {
    pub(crate) path: &'a Path,
    pub(crate) full_text: &'a str,
    pub(crate) yaml: &'a str,
    pub(crate) line_offset: usize,
}

impl Source<'_> {
    /// Builds a diagnostic at a position of the YAML part.
    pub(crate) fn diag(
        &self,
        severity: Severity,
        pos: Pos,
        message: String,
        help: Option<String>,
        redact: bool,
    ) -> Diagnostic {
        let line = pos.line + self.line_offset;
        let text = self.full_text.lines().nth(line - 1).map(str::to_owned);
        let (source_line, width) = match text {
            Some(t) => {
                let width = token_width(&t, pos.column);
                if redact {
                    let start = byte_at_col(&t, pos.column);
                    let end = byte_at_col(&t, pos.column + width);
                    (Some(format!("{}<redacted>{}", &t[..start], &t[end..])), "<redacted>".len())
                } else {
                    (Some(t), width)
                }
            }
            None => (None, 1),
        };
        Diagnostic {
            severity,
            file: self.path.to_path_buf(),
            line,
            column: pos.column,
            message,
            source_line,
            width,
            help,
        }
    }
}

fn byte_at_col(s: &str, col: usize) -> usize {
    s.char_indices().nth(col.saturating_sub(1)).map_or(s.len(), |(i, _)| i)
}

/// How wide the token starting at `col` is: a quoted string to its closing
/// quote, otherwise up to a YAML delimiter or a comment.
fn token_width(line: &str, col: usize) -> usize {
    let rest: Vec<char> = line.chars().skip(col.saturating_sub(1)).collect();
    let Some(&first) = rest.first() else { return 1 };
    if first == '"' || first == '\'' {
        let close = rest.iter().skip(1).position(|&c| c == first);
        return close.map_or(rest.len(), |i| i + 2);
    }
    let mut n = 0;
    while n < rest.len() {
        let c = rest[n];
        let next = rest.get(n + 1).copied();
        let ends = match c {
            ',' | ']' | '}' => true,
            ':' => next.is_none_or(char::is_whitespace),
            '#' => n > 0 && rest[n - 1].is_whitespace(),
            _ => false,
        };
        if ends {
            break;
        }
        n += 1;
    }
    while n > 1 && rest[n - 1].is_whitespace() {
        n -= 1;
    }
    n.max(1)
}
