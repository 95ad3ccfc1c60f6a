//! Recall on a generated corpus: every rule's `gen` template, many times,
//! in the places secrets leak from (code, JSON, YAML, headers, query
//! strings, env files).

use bot_bottle_detect::{Detector, generate};

use super::Rng;

#[test]
#[expect(clippy::print_stdout, reason = "the measured recall is part of the test's report")]
fn recall_on_generated_corpus() {
    let det = Detector::builtin();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let contexts: &[(&str, &str)] = &[
        ("", "\n"),
        ("let v = \"", "\";\n"),
        ("{\"value\": \"", "\"}\n"),
        ("value: ", "\n"),
        ("X-Debug: ", "\r\n"),
        ("GET /cb?data=", "&x=1 HTTP/1.1\r\n"),
        ("export V='", "'\n"),
        ("<td>", "</td>\n"),
    ];
    let (mut total, mut found) = (0usize, 0usize);
    let mut misses = Vec::new();
    let per_rule = 20;
    for rule in det.rules() {
        for i in 0..per_rule {
            let secret = generate(&rule.gen_template, &mut || rng.next());
            let (pre, post) = contexts[i % contexts.len()];
            let doc = format!("some text before\n{pre}{secret}{post}and after\n");
            total += 1;
            if det.scan(doc.as_bytes()).iter().any(|f| f.rule == rule.id) {
                found += 1;
            } else {
                misses.push(format!("{}: {doc:?}", rule.id));
            }
        }
    }
    let rules = det.rules().len();
    let recall = found as f64 / total as f64;
    println!("recall {found}/{total} = {:.4} over {rules} formats", recall);
    assert!(total >= 1000 && rules >= 40);
    assert!(recall >= 0.99, "recall {recall:.4}; misses:\n{}", misses.join("\n"));
}
