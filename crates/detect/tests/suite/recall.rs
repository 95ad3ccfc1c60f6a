//! Recall on a generated corpus: every rule's `gen` template, many times,
//! in the places secrets leak from (code in several languages, JSON, YAML,
//! XML, INI, Makefiles, headers, query strings, env files).

use bot_bottle_detect::{Detector, generate};

use super::Rng;

/// Where a bare token sits: (before, after).
const TOKEN_CONTEXTS: &[(&str, &str)] = &[
    ("", "\n"),
    ("let v = \"", "\";\n"),
    ("{\"value\": \"", "\"}\n"),
    ("value: ", "\n"),
    ("X-Debug: ", "\r\n"),
    ("GET /cb?data=", "&x=1 HTTP/1.1\r\n"),
    ("export V='", "'\n"),
    ("<td>", "</td>\n"),
    ("curl -H 'Authorization: Bearer ", "' https://api\n"),
    ("  - ", "\n"),
];

/// How an identifier is assigned a value across languages and formats
/// (`{i}` the identifier, `{I}` upper-cased, `{s}` the secret).
const ASSIGNMENTS: &[&str] = &[
    "{i}Token=\"{s}\"",
    "{i}Token = \"{s}\"",
    "{i}Token={s}",
    "{i}Token = {s}",
    "{\n    \"{i}_token\": \"{s}\"\n}",
    "{\"config.ini\": \"{I}_TOKEN={s}\\nBACKUP_ENABLED=true\"}",
    "<{i}Token>\n    {s}\n</{i}Token>",
    "{i}_token: {s}",
    "{i}_token: '{s}'",
    "{i}_token: \"{s}\"",
    "string {i}Token = \"{s}\";",
    "var {i}Token string = \"{s}\"",
    "{i}Token := \"{s}\"",
    "{i}Token := `{s}`",
    "String {i}Token = \"{s}\";",
    "var {i}Token = \"{s}\"",
    "${i}Token .= \"{s}\"",
    "{i}Token = '{s}'",
    "System.setProperty(\"{I}_TOKEN\", \"{s}\")",
    "  \"{i}Token\" => \"{s}\"",
    "{I}_TOKEN = \"{s}\"",
    "{I}_TOKEN := \"{s}\"",
    "{I}_TOKEN ::= \"{s}\"",
    "{I}_TOKEN ?= \"{s}\"",
    "export {I}_API_KEY={s}",
];

/// Splits a generated `IDENT_token = "VALUE"` (how service-keyword rules
/// write their templates) into the identifier and the value.
fn assignment(s: &str) -> Option<(&str, &str)> {
    let (ident, rest) = s.split_once("_token = \"")?;
    Some((ident, rest.strip_suffix('"')?))
}

#[test]
#[expect(clippy::print_stdout, reason = "the measured recall is part of the test's report")]
fn recall_on_generated_corpus() {
    let det = Detector::builtin();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut total, mut found, mut by_any) = (0usize, 0usize, 0usize);
    let mut misses = Vec::new();
    let per_rule = 25;
    for rule in det.rules() {
        for i in 0..per_rule {
            let secret = generate(&rule.gen_template, &mut || rng.next());
            let body = match assignment(&secret) {
                Some((ident, value)) => ASSIGNMENTS[i % ASSIGNMENTS.len()]
                    .replace("{i}", ident)
                    .replace("{I}", &ident.to_uppercase())
                    .replace("{s}", value),
                None => {
                    let (pre, post) = TOKEN_CONTEXTS[i % TOKEN_CONTEXTS.len()];
                    format!("{pre}{secret}{post}")
                }
            };
            let doc = format!("some text before\n{body}\nand after\n");
            total += 1;
            let hits = det.scan(doc.as_bytes());
            if hits.iter().any(|f| f.rule == rule.id) {
                found += 1;
            } else {
                misses.push(format!("{}: {doc:?} -> {:?}", rule.id, hits.iter().map(|f| &f.rule).collect::<Vec<_>>()));
            }
            if !hits.is_empty() {
                by_any += 1;
            }
        }
    }
    let rules = det.rules().len();
    let recall = found as f64 / total as f64;
    println!(
        "recall {found}/{total} = {recall:.4} over {rules} formats (found by any rule: {by_any}/{total})\nmisses:\n{}",
        misses.join("\n")
    );
    assert!(total >= 4000 && rules >= 200, "{total} samples, {rules} rules");
    assert!(recall >= 0.99, "recall {recall:.4}; misses:\n{}", misses.join("\n"));
}
