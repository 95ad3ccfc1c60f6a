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

/// Every encoding issue 10 added, each written out by an independent
/// encoder (Python's `base64`, `binascii`, `str.encode`), not by ours.
#[test]
fn known_secret_in_the_added_encodings() {
    let utf16le =
        "74006f006b005f006c006900760065005f003800660033006100390063003200650037003100620030003400640035006100";
    let le: Vec<u8> =
        (0..utf16le.len()).step_by(2).map(|i| u8::from_str_radix(&utf16le[i..i + 2], 16).expect("hex")).collect();
    let mut be = vec![0u8];
    be.extend_from_slice(&le[..le.len() - 1]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"x=a5d40b17e2c9a3f8_evil_kot;".to_vec(), "reversed"),
        // base32 of b"x" + TOKEN: the token starts mid-group.
        (b"PB2G6227NRUXMZK7HBTDGYJZMMZGKNZRMIYDIZBVME======".to_vec(), "base32"),
        (b"v=orxwwx3mnf3gkxzymyzwcoldgjstomlcga2ginlb".to_vec(), "base32"),
        ([b"{\"k\":\"".as_slice(), &le, b"\"}"].concat(), "utf-16le"),
        ([b"\xfe\xff".as_slice(), &be, b"\0"].concat(), "utf-16be"),
        (br#"{"t":"\u0074\u006f\u006b\u005f\u006c\u0069\u0076\u0065\u005f\u0038\u0066\u0033\u0061\u0039\u0063\u0032\u0065\u0037\u0031\u0062\u0030\u0034\u0064\u0035\u0061"}"#.to_vec(), "json-escaped"),
        (b"t==74=6F=6B=5F=6C=69=76=65=5F=38=66=33=61=39=63=32=65=37=31=62=30=34=64=35=61\r\n".to_vec(), "quoted-printable"),
        (b"<p>&#116;&#111;&#107;&#95;&#108;&#105;&#118;&#101;&#95;&#56;&#102;&#51;&#97;&#57;&#99;&#50;&#101;&#55;&#49;&#98;&#48;&#52;&#100;&#53;&#97;</p>".to_vec(), "html-entity"),
        (b"mac 74:6f:6b:5f:6c:69:76:65:5f:38:66:33:61:39:63:32:65:37:31:62:30:34:64:35:61".to_vec(), "hex"),
        (b"74 6F 6B 5F 6C 69 76 65 5F 38 66 33 61 39 63 32 65 37 31 62 30 34 64 35 61".to_vec(), "hex"),
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
