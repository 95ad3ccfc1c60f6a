//! The rule set: parsed from YAML data, checked, and compiled on use.

use std::sync::OnceLock;

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use serde::Deserialize;

static RULES_YAML: &str = include_str!("rules.yaml");

/// A detection rule.
#[derive(Debug)]
pub struct Rule {
    pub id: String,
    pub description: String,
    /// Literal prefilter: the regex runs only near one of these.
    pub keywords: Vec<String>,
    /// Keywords match ignoring ASCII case (words such as `password`);
    /// otherwise exactly as written (token prefixes such as `ghp_`).
    pub nocase: bool,
    /// See [`Rule::regex`].
    regex: LazyRegex,
    /// The capture group holding the secret (0: the whole match).
    pub group: usize,
    /// Minimum Shannon entropy (bits per byte) of the secret.
    pub entropy: Option<f64>,
    /// The secret must contain both a digit and a letter.
    pub mixed: bool,
    /// A match in which one of these is found is not a finding (documented
    /// placeholders, pagination tokens).
    pub allow: Vec<Regex>,
    /// Template for generated test secrets.
    pub gen_template: String,
    pub examples: Vec<String>,
    pub negatives: Vec<String>,
}

/// A rule's regex, compiled the first time one of the rule's keywords is
/// seen: in a given bottle most rules never see one, and compiled up front
/// the 207 built-in regexes were most of a detector's memory (about 5 of
/// its 7.5 MB; the proxy holds one, the launcher one per bottle).
/// `parse_rules` compiled the pattern once with the same settings, so
/// compiling it again does not fail.
#[derive(Debug)]
struct LazyRegex {
    pattern: String,
    compiled: OnceLock<Regex>,
}

impl Rule {
    /// The rule's regex, compiled on first use (once, for every thread).
    pub fn regex(&self) -> &Regex {
        self.regex.compiled.get_or_init(|| {
            compile(&self.regex.pattern)
                .unwrap_or_else(|e| panic!("rule `{}`: a regex that compiled when parsed did not: {e}", self.id))
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    description: String,
    keywords: Vec<String>,
    #[serde(default)]
    nocase: bool,
    regex: String,
    #[serde(default)]
    group: usize,
    entropy: Option<f64>,
    #[serde(default)]
    mixed: bool,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(rename = "gen")]
    template: String,
    examples: Vec<String>,
    negatives: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rules file is malformed")]
    Yaml(#[from] serde_yaml::Error),
    #[error("rule `{id}`: bad regex")]
    Regex {
        id: String,
        #[source]
        source: Box<meta::BuildError>,
    },
    #[error("rule `{id}`: {problem}")]
    Invalid { id: String, problem: String },
}

/// Parses and compiles a rules file.
pub fn parse_rules(yaml: &str) -> Result<Vec<Rule>, RuleError> {
    let raw: Vec<RawRule> = serde_yaml::from_str(yaml)?;
    let mut out: Vec<Rule> = Vec::with_capacity(raw.len());
    for r in raw {
        let invalid = |problem: &str| RuleError::Invalid { id: r.id.clone(), problem: problem.to_owned() };
        if out.iter().any(|o| o.id == r.id) {
            return Err(invalid("duplicate id"));
        }
        if r.keywords.is_empty() || r.keywords.iter().any(String::is_empty) {
            return Err(invalid("needs non-empty keywords"));
        }
        // Keywords open the regex's window as written unless `nocase`: a
        // case-insensitive regex behind case-sensitive keywords would miss
        // every other spelling.
        if r.regex.starts_with("(?i)")
            && !r.nocase
            && r.keywords.iter().any(|k| k.bytes().any(|b| b.is_ascii_alphabetic()))
        {
            return Err(invalid("a case-insensitive regex needs `nocase: true` for its keywords"));
        }
        // Compiled here to check it, then dropped: see `LazyRegex`.
        let captures =
            compile(&r.regex).map_err(|source| RuleError::Regex { id: r.id.clone(), source })?.captures_len();
        if r.group >= captures {
            return Err(invalid("group out of range"));
        }
        let allow = r
            .allow
            .iter()
            .map(|a| compile(a).map_err(|source| RuleError::Regex { id: r.id.clone(), source }))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Rule {
            id: r.id,
            description: r.description,
            keywords: r.keywords,
            nocase: r.nocase,
            regex: LazyRegex { pattern: r.regex, compiled: OnceLock::new() },
            group: r.group,
            entropy: r.entropy,
            mixed: r.mixed,
            allow,
            gen_template: r.template,
            examples: r.examples,
            negatives: r.negatives,
        });
    }
    Ok(out)
}

/// Rules match bytes with ASCII meanings of `\w`, `\b`, `\s`, `.` and
/// `(?i)`: credentials are ASCII, and Unicode classes made the 207 built-in
/// rules take about 125 MB resident per detector (the launcher holds one
/// per bottle), against a few MB like this.
///
/// Built as `regex::bytes::Regex` builds them, less the one-pass DFA: built
/// up front for every rule that allows one, it was 2.8 of the 6.3 MB the
/// rules' regexes take. Captures are only extracted from a span the lazy
/// DFA has already matched, a window's worth at most, which the bounded
/// backtracker does as well.
fn compile(pattern: &str) -> Result<Regex, Box<meta::BuildError>> {
    meta::Builder::new()
        .configure(
            meta::Config::new()
                .match_kind(regex_automata::MatchKind::LeftmostFirst)
                .utf8_empty(false)
                .nfa_size_limit(Some(10 << 20))
                .hybrid_cache_capacity(2 << 20)
                .onepass(false),
        )
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .build(pattern)
        .map_err(Box::new)
}

/// The built-in rules, compiled.
pub fn builtin_rules() -> Vec<Rule> {
    // The embedded file is checked by the test suite; a failure here is a
    // build defect, not an input error.
    parse_rules(RULES_YAML).unwrap_or_else(|e| panic!("built-in rules.yaml is invalid: {e}"))
}

/// Expands a `gen` template: literal text, `\x` escapes, and character
/// classes `[a-z0-9_\-]` with an optional `{n}` or `{m,n}` count. `next`
/// supplies randomness (any u64 source); used to build test corpora.
pub fn generate(template: &str, next: &mut dyn FnMut() -> u64) -> String {
    let t: Vec<char> = template.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < t.len() {
        match t[i] {
            '\\' if i + 1 < t.len() => {
                out.push(t[i + 1]);
                i += 2;
            }
            '[' => {
                let Some(close) = t[i..].iter().position(|&c| c == ']').map(|p| p + i) else {
                    out.push('[');
                    i += 1;
                    continue;
                };
                let class = expand_class(&t[i + 1..close]);
                i = close + 1;
                let (lo, hi) = parse_count(&t, &mut i);
                let n = lo + (next() as usize) % (hi - lo + 1);
                for _ in 0..n {
                    if !class.is_empty() {
                        out.push(class[(next() as usize) % class.len()]);
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn expand_class(c: &[char]) -> Vec<char> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i] == '\\' && i + 1 < c.len() {
            out.push(c[i + 1]);
            i += 2;
        } else if i + 2 < c.len() && c[i + 1] == '-' {
            out.extend(c[i]..=c[i + 2]);
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn parse_count(t: &[char], i: &mut usize) -> (usize, usize) {
    if t.get(*i) != Some(&'{') {
        return (1, 1);
    }
    let Some(close) = t[*i..].iter().position(|&c| c == '}').map(|p| p + *i) else { return (1, 1) };
    let inner: String = t[*i + 1..close].iter().collect();
    *i = close + 1;
    let mut parts = inner.split(',').map(|p| p.trim().parse::<usize>().unwrap_or(1));
    let lo = parts.next().unwrap_or(1);
    let hi = parts.next().unwrap_or(lo).max(lo);
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use crate::Detector;

    /// Only the rules whose keywords were seen hold a compiled regex.
    #[test]
    fn regexes_are_compiled_on_first_use() {
        let det = Detector::builtin();
        let compiled = |det: &Detector| det.rules().iter().filter(|r| r.regex.compiled.get().is_some()).count();
        assert_eq!(compiled(&det), 0);
        det.scan(b"The quick brown fox jumps over the lazy dog.");
        assert_eq!(compiled(&det), 0);
        let found = det.scan(b"token: ghp_7m07qBBsTDD8aGDMx2SAU4Ree7NAw8MhdkW3\n");
        assert!(found.iter().any(|f| f.rule == "github-ghp"), "{found:?}");
        let n = compiled(&det);
        assert!((1..10).contains(&n), "{n} regexes compiled");
    }
}
