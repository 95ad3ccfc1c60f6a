//! The forms a known secret may take on the wire.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// Every encoding of `secret` worth matching, with its name. Base64 forms
/// cover all three alignments the secret can have inside a larger base64
/// stream: only the characters that depend on the secret's bytes alone are
/// kept, so the match holds whatever surrounds it.
pub(crate) fn variants(secret: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out: Vec<(&'static str, Vec<u8>)> = vec![("raw", secret.to_vec())];
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
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    if secret.iter().any(|&b| !unreserved(b)) {
        for upper in [true, false] {
            let mut s = Vec::new();
            for &b in secret {
                if unreserved(b) {
                    s.push(b);
                } else if upper {
                    s.extend_from_slice(format!("%{b:02X}").as_bytes());
                } else {
                    s.extend_from_slice(format!("%{b:02x}").as_bytes());
                }
            }
            out.push(("url-encoded", s));
        }
    }
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    out.push(("hex", hex.clone().into_bytes()));
    out.push(("hex", hex.to_ascii_uppercase().into_bytes()));
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
                assert!(
                    v.iter().any(|(_, pat)| enc.as_bytes().windows(pat.len()).any(|w| w == pat.as_slice())),
                    "prefix {prefix_len}"
                );
            }
        }
    }
}
