use base64::Engine;
use bot_bottle_detect::Detector;

const TOKEN: &str = "tok_live_8f3a9c2e71b04d5a";

fn det() -> Detector {
    Detector::builtin().with_known([("API_TOKEN", TOKEN)])
}

fn found(data: &[u8]) -> Vec<(String, Option<&'static str>)> {
    det().scan(data).into_iter().filter(|f| f.rule.starts_with("known-secret")).map(|f| (f.rule, f.encoding)).collect()
}

#[test]
fn known_secret_in_every_encoding() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let hex: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (format!("token={TOKEN}").into_bytes(), "raw"),
        (b64.encode(format!("user:{TOKEN}")).into_bytes(), "base64"),
        (b64.encode(format!("ab{TOKEN}xyz")).into_bytes(), "base64"),
        // Without `+` or `/`, base64url and base64 are the same bytes.
        (url.encode(format!("a{TOKEN}")).into_bytes(), "base64"),
        (format!("q={}", hex).into_bytes(), "hex"),
        (format!("q={}", hex.to_uppercase()).into_bytes(), "hex"),
    ];
    for (data, enc) in cases {
        let f = found(&data);
        assert!(
            f.iter().any(|(r, e)| r == "known-secret:API_TOKEN" && *e == Some(enc)),
            "{enc}: {f:?} in {:?}",
            String::from_utf8_lossy(&data)
        );
    }
}

#[test]
fn known_secret_url_encoded() {
    let d = Detector::builtin().with_known([("PW", "p@ss w/rd+long!")]);
    let hits = d.scan(b"q=p%40ss%20w%2Frd%2Blong%21&x=1");
    assert!(hits.iter().any(|f| f.encoding == Some("url-encoded")), "{hits:?}");
}

#[test]
fn short_values_are_not_matched_everywhere() {
    let d = Detector::builtin().with_known([("SHORT", "abc"), ("EMPTY", "")]);
    assert!(d.scan(b"abcabcabc").is_empty());
}
