//! The forms a known secret may take on the wire.
//!
//! Every form here is a fixed byte string derived from the secret alone, so
//! one Aho-Corasick automaton finds all of them in one pass, in a stream, and
//! with exact offsets (which redaction needs). Forms that depend on what
//! surrounds the secret (base64 and base32 inside a larger encoded run) keep
//! only the characters that the secret's own bytes decide, once per
//! alignment.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// Separators seen between the bytes of hex dumps (`de:ad:be:ef`,
/// `de ad be ef`, `\xde\xad`, `0xde, 0xad`, ...). Each entry is (before
/// every byte, between bytes).
const HEX_SEPARATED: &[(&str, &str)] = &[
    ("", ":"),
    ("", "-"),
    ("", " "),
    ("", "."),
    ("", ","),
    ("", "_"),
    ("", "/"),
    ("", ", "),
    ("", "\n"),
    ("\\x", ""),
    ("0x", ""),
    ("0x", ","),
    ("0x", ", "),
    ("0x", " "),
    ("%", ""),
    ("=", ""),
];

/// Every encoding of `secret` worth matching, with its name.
pub(crate) fn variants(secret: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out: Vec<(&'static str, Vec<u8>)> = vec![("raw", secret.to_vec())];
    let reversed: Vec<u8> = secret.iter().rev().copied().collect();
    out.push(("reversed", reversed));
    for (name, engine) in [("base64", &STANDARD_NO_PAD), ("base64url", &URL_SAFE_NO_PAD)] {
        for shift in 0..3usize {
            let mut buf = vec![0u8; shift];
            buf.extend_from_slice(secret);
            let enc = engine.encode(&buf);
            let first = (shift * 8).div_ceil(6);
            let last = (shift + secret.len()) * 8 / 6; // exclusive
            if last > first && last - first >= 8 {
                out.push((name, enc.as_bytes()[first..last].to_vec()));
            }
        }
    }
    for shift in 0..5usize {
        let mut buf = vec![0u8; shift];
        buf.extend_from_slice(secret);
        let enc = base32(&buf);
        let first = (shift * 8).div_ceil(5);
        let last = (shift + secret.len()) * 8 / 5;
        if last > first && last - first >= 8 {
            let upper = enc.as_bytes()[first..last].to_vec();
            out.push(("base32", upper.to_ascii_lowercase()));
            out.push(("base32", upper));
        }
    }
    let mut le = Vec::with_capacity(secret.len() * 2);
    let mut be = Vec::with_capacity(secret.len() * 2);
    for &b in secret {
        le.extend_from_slice(&[b, 0]);
        be.extend_from_slice(&[0, b]);
    }
    out.push(("utf-16le", le));
    out.push(("utf-16be", be));
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    if secret.iter().any(|&b| !unreserved(b)) {
        out.push(("url-encoded", per_byte(secret, |b| if unreserved(b) { vec![b] } else { pct(b, true) })));
        out.push(("url-encoded", per_byte(secret, |b| if unreserved(b) { vec![b] } else { pct(b, false) })));
    }
    out.push(("url-encoded", per_byte(secret, |b| pct(b, true))));
    out.push(("url-encoded", per_byte(secret, |b| pct(b, false))));
    for upper in [false, true] {
        out.push(("json-escaped", per_byte(secret, |b| hex_of(b, "\\u00", upper))));
    }
    // Quoted-printable: `=XX` for every byte (a line of printable ASCII is
    // its own QP form, which `raw` already covers).
    out.push(("quoted-printable", per_byte(secret, |b| hex_of(b, "=", true))));
    out.push(("html-entity", per_byte(secret, |b| format!("&#{b};").into_bytes())));
    out.push(("html-entity", per_byte(secret, |b| format!("&#x{b:x};").into_bytes())));
    for upper in [false, true] {
        let hex = |b: u8| hex_of(b, "", upper);
        out.push(("hex", per_byte(secret, hex)));
        for (before, between) in HEX_SEPARATED {
            let mut s = Vec::new();
            for (i, &b) in secret.iter().enumerate() {
                if i > 0 {
                    s.extend_from_slice(between.as_bytes());
                }
                s.extend_from_slice(before.as_bytes());
                s.extend_from_slice(&hex(b));
            }
            out.push(("hex", s));
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|(_, p)| seen.insert(p.clone()));
    out
}

fn per_byte(secret: &[u8], f: impl Fn(u8) -> Vec<u8>) -> Vec<u8> {
    secret.iter().flat_map(|&b| f(b)).collect()
}

fn pct(b: u8, upper: bool) -> Vec<u8> {
    hex_of(b, "%", upper)
}

fn hex_of(b: u8, prefix: &str, upper: bool) -> Vec<u8> {
    if upper { format!("{prefix}{b:02X}").into_bytes() } else { format!("{prefix}{b:02x}").into_bytes() }
}

/// RFC 4648 base32, no padding.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    for &b in data {
        acc = (acc << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], pat: &[u8]) -> bool {
        hay.windows(pat.len()).any(|w| w == pat)
    }

    #[test]
    fn base64_variants_survive_any_alignment() {
        let secret = b"tok-3f9a8b7c6d5e4f3a2b1c";
        let v = variants(secret);
        for prefix_len in 0..6 {
            let mut data = vec![b'x'; prefix_len];
            data.extend_from_slice(secret);
            data.extend_from_slice(b"trailing bytes");
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                let enc = engine.encode(&data);
                assert!(v.iter().any(|(_, pat)| contains(enc.as_bytes(), pat)), "prefix {prefix_len}");
            }
            let enc = base32(&data);
            assert!(v.iter().any(|(_, pat)| contains(enc.as_bytes(), pat)), "base32 prefix {prefix_len}");
            assert!(
                v.iter().any(|(_, pat)| contains(enc.to_ascii_lowercase().as_bytes(), pat)),
                "base32 lower prefix {prefix_len}"
            );
        }
    }

    #[test]
    fn base32_matches_the_rfc_vectors() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"fooba"), "MZXW6YTB");
        assert_eq!(base32(b"f"), "MY");
    }
}
