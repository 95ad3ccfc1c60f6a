use bot_bottle_detect::{Detector, builtin_rules};

#[test]
fn at_least_forty_rules_across_the_required_families() {
    let rules = builtin_rules();
    assert!(rules.len() >= 40, "{} rules", rules.len());
    let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
    for family in [
        "aws-access-key-id",         // cloud keys
        "github-ghp",                // forge tokens
        "slack-webhook",             // chat webhooks
        "stripe-secret-key",         // payment keys
        "anthropic-api-key",         // LLM provider keys
        "private-key",               // private keys
        "jwt",                       // JWTs
        "npm-token",                 // package registry tokens
        "generic-secret-assignment", // keyword + entropy
    ] {
        assert!(ids.contains(&family), "missing {family}");
    }
    for r in &rules {
        assert!(!r.description.is_empty() && !r.examples.is_empty() && !r.negatives.is_empty(), "{}", r.id);
    }
}

#[test]
fn every_rule_finds_its_examples_and_not_its_negatives() {
    let det = Detector::builtin();
    for r in det.rules() {
        for ex in &r.examples {
            let found = det.scan(ex.as_bytes());
            assert!(found.iter().any(|f| f.rule == r.id), "{}: example not found: {ex:?} -> {found:?}", r.id);
            // Also inside ordinary surrounding text.
            let wrapped = format!("let x = \"{ex}\";\n");
            assert!(det.scan(wrapped.as_bytes()).iter().any(|f| f.rule == r.id), "{}: in context: {wrapped:?}", r.id);
        }
        for neg in &r.negatives {
            let found = det.scan(neg.as_bytes());
            assert!(!found.iter().any(|f| f.rule == r.id), "{}: negative matched: {neg:?}", r.id);
        }
    }
}

#[test]
fn ordinary_text_is_clean() {
    let det = Detector::builtin();
    let text = "fn main() {\n    let token = tokenizer.next();\n    println!(\"password: {}\", mask);\n    // see https://example.com/docs\n    let api_key = std::env::var(\"API_KEY\")?;\n}\n";
    assert_eq!(det.scan(text.as_bytes()), vec![]);
}

#[test]
fn short_case_insensitive_keywords_match_in_any_case() {
    // `aws` is under the packed searchers' four bytes, so it has a searcher
    // of its own over the lower-cased data; every case form must still
    // open the rule's window.
    let det = Detector::builtin();
    let key = "XmyhXQ2b5Krp0R6uv1Czb3URj1MkPwX/ka7eVzTX";
    let nuget = "<ADD KEY=\"ClearTextPassword\" VALUE=\"RSYwTr7R6F7oG7e5\" />";
    assert!(det.scan(nuget.as_bytes()).iter().any(|f| f.rule == "nuget-config-password"), "{nuget}");
    for name in ["aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "Aws_Secret_Access_Key", "aWs_secret"] {
        let text = format!("{name} = {key}\n");
        let found = det.scan(text.as_bytes());
        assert!(found.iter().any(|f| f.rule == "aws-secret-access-key"), "{text:?} -> {found:?}");
    }
}
