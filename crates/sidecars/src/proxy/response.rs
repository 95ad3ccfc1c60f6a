//! Responses on their way back to the agent: scanned for the bottle's
//! injected tokens (and other known secrets), so that an upstream that
//! echoes a request never hands the agent the real token.
//!
//! Headers and trailers are scanned as one text (a token split across two
//! headers is found) and masked in place. Bodies stream: identity bodies
//! are masked as they pass, holding back only a tail that could still grow
//! into a token. A compressed body (by `Content-Encoding`, or by its magic
//! bytes when none is declared) is decoded alongside and the decoded bytes
//! scanned; a compressed body cannot be masked safely, so a token found
//! there ends the response instead. The audit log records both.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::{Arc, Mutex};

use bot_bottle_detect::Detector;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::body::{BoxError, FrameBody, MAX_ENCODED, scan_decoded};
use super::limits::Gates;

/// Masks known secrets in header values, scanning all values of the map as
/// one text, and removes every header whose name holds one (an upstream
/// can echo a request's header values as response header names); returns
/// how many were found.
pub(crate) fn redact_headers(h: &mut HeaderMap, det: &Detector) -> usize {
    if !det.has_known() || h.is_empty() {
        return 0;
    }
    let mut names = Vec::new();
    for n in h.keys() {
        names.extend_from_slice(n.as_str().as_bytes());
        names.push(b'\n');
    }
    let mut removed = 0;
    if !det.redact_known(&mut names).is_empty() {
        // Masked names are the ones to go: each line of the masked text
        // that changed.
        let gone: Vec<http::header::HeaderName> = h
            .keys()
            .zip(names.split(|&b| b == b'\n'))
            .filter(|(n, masked)| n.as_str().as_bytes() != *masked)
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            h.remove(&n);
            removed += 1;
        }
    }
    removed + redact_values(h, det)
}

fn redact_values(h: &mut HeaderMap, det: &Detector) -> usize {
    if h.is_empty() {
        return 0;
    }
    let mut all = Vec::new();
    let mut lens = Vec::new();
    for v in h.values() {
        all.extend_from_slice(v.as_bytes());
        lens.push(v.len());
    }
    let found = det.redact_known(&mut all);
    if found.is_empty() {
        return 0;
    }
    let mut at = 0;
    for (v, n) in h.values_mut().zip(lens) {
        // Masking replaces bytes by '*', which keeps a value valid; were it
        // ever not, the whole value goes rather than the secret staying.
        *v = HeaderValue::from_bytes(&all[at..at + n]).unwrap_or_else(|_| HeaderValue::from_static("[redacted]"));
        at += n;
    }
    found.len()
}

/// Masks known secrets in an HTTP/1 upstream's own reason phrase (`HTTP/1.1
/// 200 <anything>`), which hyper keeps as an extension and would write to
/// the agent as it came; returns how many were masked.
pub(crate) fn redact_reason(ext: &mut http::Extensions, det: &Detector) -> usize {
    let Some(reason) = ext.get::<hyper::ext::ReasonPhrase>() else { return 0 };
    let mut text = reason.as_bytes().to_vec();
    let found = det.redact_known(&mut text).len();
    if found > 0 {
        // Masking keeps a phrase valid; were it ever not, the canonical
        // phrase goes out instead of the secret.
        match hyper::ext::ReasonPhrase::try_from(text) {
            Ok(masked) => ext.insert(masked),
            Err(_) => ext.remove::<hyper::ext::ReasonPhrase>(),
        };
    }
    found
}

/// `why` (an upstream failure, which can carry what the upstream sent: a
/// certificate's names, an error text) with known secrets masked, before it
/// goes into the agent's 502 and the audit log.
pub(crate) fn redact_text(why: String, det: &Detector) -> String {
    let mut text = why.into_bytes();
    det.redact_known(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// What happened to one response body, for the audit log.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) redacted: AtomicU64,
    pub(crate) refused: Mutex<Option<String>>,
}

impl Report {
    fn refuse(&self, why: String) {
        if let Ok(mut r) = self.refused.lock() {
            r.get_or_insert(why);
        }
    }
}

/// Known-secret scanning of a decoded stream that is not forwarded itself
/// (the compressed bytes are): only whether something was found, and
/// whether a possible secret's start is pending at the end.
struct DecodedScan {
    det: Arc<Detector>,
    pending: Vec<u8>,
    found: usize,
}

impl Write for DecodedScan {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(data);
        self.found += self.det.redact_known(&mut buf).len();
        let hold = self.det.partial_known(&buf);
        self.pending = buf.split_off(buf.len() - hold);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A streaming decoder feeding a [`DecodedScan`].
enum Push {
    Gzip(flate2::write::MultiGzDecoder<DecodedScan>),
    Zlib(flate2::write::ZlibDecoder<DecodedScan>),
    Deflate(flate2::write::DeflateDecoder<DecodedScan>),
    Br(Box<brotli_decompressor::DecompressorWriter<DecodedScan>>),
}

impl Push {
    fn new(encoding: &str, first: &[u8], det: Arc<Detector>) -> Option<Push> {
        let s = DecodedScan { det, pending: Vec::new(), found: 0 };
        Some(match encoding {
            "gzip" | "x-gzip" => Push::Gzip(flate2::write::MultiGzDecoder::new(s)),
            "deflate" if zlib_header(first) => Push::Zlib(flate2::write::ZlibDecoder::new(s)),
            "deflate" => Push::Deflate(flate2::write::DeflateDecoder::new(s)),
            "br" => Push::Br(Box::new(brotli_decompressor::DecompressorWriter::new(s, 4096))),
            _ => return None,
        })
    }

    /// Feeds compressed bytes and pushes out everything they decode to.
    fn feed(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Push::Gzip(d) => d.write_all(data).and_then(|()| d.flush()),
            Push::Zlib(d) => d.write_all(data).and_then(|()| d.flush()),
            Push::Deflate(d) => d.write_all(data).and_then(|()| d.flush()),
            Push::Br(d) => d.write_all(data).and_then(|()| d.flush()),
        }
    }

    fn scan(&self) -> &DecodedScan {
        match self {
            Push::Gzip(d) => d.get_ref(),
            Push::Zlib(d) => d.get_ref(),
            Push::Deflate(d) => d.get_ref(),
            Push::Br(d) => d.get_ref(),
        }
    }
}

pub(crate) fn zlib_header(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] & 0x0f == 8 && (u16::from(b[0]) << 8 | u16::from(b[1])) % 31 == 0
}

/// The coding a body's first bytes announce, when nothing was declared.
/// Brotli has no magic bytes: a start that decodes as brotli counts.
pub(crate) fn sniff(first: &[u8]) -> Option<&'static str> {
    if first.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if first.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if zlib_header(first) {
        Some("deflate")
    } else if looks_like_brotli(first) {
        Some("br")
    } else {
        None
    }
}

/// Whether the first bytes of a body decode as brotli to something: random
/// and text bytes fail within a few bytes.
fn looks_like_brotli(first: &[u8]) -> bool {
    if first.len() < 8 {
        return false;
    }
    let mut w = brotli_decompressor::DecompressorWriter::new(Vec::new(), 4096);
    let head = &first[..first.len().min(4096)];
    let ok = w.write_all(head).and_then(|()| w.flush()).is_ok();
    ok && w.get_ref().len() >= 4
}

/// How the body is read.
enum Mode {
    /// Not chosen yet: decided on the first bytes.
    Undecided,
    /// Masked as it passes.
    Identity,
    /// Decoded alongside. `strict`: the coding was declared, so a decoding
    /// error ends the response; a sniffed coding that fails to decode was
    /// not one, and the body goes on as identity.
    Stream { push: Box<Push>, strict: bool },
    /// Stacked codings or zstd: held whole (up to the cap), then decoded.
    Whole { encoding: Vec<String>, raw: Vec<u8>, strict: bool },
}

/// Starts relaying `incoming` (an upstream response body) through the
/// scanner; returns the body to send to the client.
pub(crate) fn scan(
    incoming: Incoming,
    encoding: Vec<String>,
    det: Arc<Detector>,
    gates: Arc<Gates>,
    report: Arc<Report>,
) -> FrameBody {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let r = pump(incoming, encoding, &det, &gates, &report, &tx).await;
        if let Err(why) = r
            && !why.is_empty()
        {
            report.refuse(why);
            // The client may be gone already; the refusal is recorded either way.
            crate::peer::peer_step("cutting a refused response", tx.send(Err(Box::new(Cut) as BoxError)).await);
        }
    });
    FrameBody::new(rx)
}

#[derive(Debug, thiserror::Error)]
#[error("response ended by the egress proxy: it held a secret of this bottle")]
struct Cut;

type Tx = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

/// Sends data on; `Err("")` when the client went away (nothing to report).
async fn send(tx: &Tx, data: Vec<u8>) -> Result<(), String> {
    if data.is_empty() {
        return Ok(());
    }
    tx.send(Ok(Frame::data(Bytes::from(data)))).await.map_err(|_| String::new())
}

fn choose(encoding: &[String], first: &[u8], det: &Arc<Detector>) -> Mode {
    match encoding {
        [] => match sniff(first) {
            Some("zstd") => Mode::Whole { encoding: vec!["zstd".into()], raw: Vec::new(), strict: false },
            Some(c) => match Push::new(c, first, det.clone()) {
                Some(p) => Mode::Stream { push: Box::new(p), strict: false },
                None => Mode::Identity,
            },
            None => Mode::Identity,
        },
        [one] => match Push::new(one, first, det.clone()) {
            Some(p) => Mode::Stream { push: Box::new(p), strict: true },
            None => Mode::Whole { encoding: encoding.to_vec(), raw: Vec::new(), strict: true },
        },
        _ => Mode::Whole { encoding: encoding.to_vec(), raw: Vec::new(), strict: true },
    }
}

const SECRET_IN_DECODED: &str = "the decoded response body held a secret of this bottle";

async fn pump(
    mut incoming: Incoming,
    encoding: Vec<String>,
    det: &Arc<Detector>,
    gates: &Arc<Gates>,
    report: &Report,
    tx: &Tx,
) -> Result<(), String> {
    let mut raw = det.redactor();
    let mut mode = Mode::Undecided;
    // Masked bytes waiting for the decoded side to clear them.
    let mut held: Vec<u8> = Vec::new();
    // Trailers, masked like headers, go last: after every byte still held
    // (the redactor's tail, a body scanned whole), as HTTP requires.
    let mut trailers = None;
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| format!("upstream body: {e}"))?;
        let chunk = match frame.into_data() {
            Ok(chunk) => chunk,
            Err(frame) => {
                if let Ok(mut t) = frame.into_trailers() {
                    report.redacted.fetch_add(redact_headers(&mut t, det) as u64, Ordering::Relaxed);
                    trailers = Some(t);
                }
                continue;
            }
        };
        if matches!(mode, Mode::Undecided) {
            mode = choose(&encoding, &chunk, det);
        }
        match std::mem::replace(&mut mode, Mode::Identity) {
            Mode::Undecided | Mode::Identity => {
                let (out, found) = raw.feed(&chunk);
                report.redacted.fetch_add(found.len() as u64, Ordering::Relaxed);
                send(tx, out).await?;
            }
            Mode::Stream { push, strict } => {
                let data = chunk.clone();
                let (push, r) = gates
                    .offload(move || {
                        let mut push = push;
                        let r = push.feed(&data);
                        (push, r)
                    })
                    .await
                    .ok_or("scanning failed")?;
                let (found, holding) = (push.scan().found, !push.scan().pending.is_empty());
                if found > 0 {
                    return Err(SECRET_IN_DECODED.into());
                }
                let keep = match r {
                    Ok(()) => true,
                    Err(e) if strict => return Err(format!("cannot decode the response body: {e}")),
                    Err(_) => false,
                };
                let (out, found) = raw.feed(&chunk);
                report.redacted.fetch_add(found.len() as u64, Ordering::Relaxed);
                held.extend_from_slice(&out);
                if !(holding && keep) {
                    send(tx, std::mem::take(&mut held)).await?;
                }
                if keep {
                    mode = Mode::Stream { push, strict };
                }
            }
            Mode::Whole { encoding, raw: mut buf, strict } => {
                if buf.len() + chunk.len() > MAX_ENCODED {
                    return Err(format!("a compressed response over {} MiB cannot be scanned", MAX_ENCODED >> 20));
                }
                buf.extend_from_slice(&chunk);
                mode = Mode::Whole { encoding, raw: buf, strict };
            }
        }
    }
    if let Mode::Whole { encoding, raw: buf, strict } = mode {
        let det2 = det.clone();
        let (buf, r) = gates
            .offload(move || {
                let r = scan_decoded(&buf, &encoding, &det2).map(|f| f.len());
                (buf, r)
            })
            .await
            .ok_or("scanning failed")?;
        match r {
            Ok(0) => {}
            Ok(_) => return Err(SECRET_IN_DECODED.into()),
            Err(d) if strict => return Err(d.reason),
            Err(_) => {}
        }
        let (out, found) = raw.feed(&buf);
        report.redacted.fetch_add(found.len() as u64, Ordering::Relaxed);
        send(tx, out).await?;
    }
    send(tx, held).await?;
    send(tx, raw.finish()).await?;
    if let Some(t) = trailers {
        tx.send(Ok(Frame::trailers(t))).await.map_err(|_| String::new())?;
    }
    Ok(())
}

/// Declared response codings, in the order applied.
pub(crate) fn codings(h: &HeaderMap) -> Vec<String> {
    h.get_all(http::header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty() && s != "identity")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_codings_by_their_first_bytes() {
        // Brotli of a 641-byte document (Python's `brotli`; see body.rs).
        let br: [u8; 56] = [
            27, 129, 2, 248, 101, 96, 158, 169, 46, 68, 56, 138, 252, 93, 139, 141, 88, 0, 32, 160, 252, 59, 203, 192,
            56, 93, 101, 114, 147, 193, 203, 129, 119, 3, 93, 53, 226, 138, 160, 150, 161, 58, 1, 153, 20, 252, 25,
            130, 127, 26, 235, 69, 248, 237, 1, 127,
        ];
        assert_eq!(sniff(&br), Some("br"));
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]), Some("gzip"));
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]), Some("zstd"));
        assert_eq!(sniff(&[0x78, 0x9c, 1, 2, 3]), Some("deflate"));
        for plain in [
            &b"{\"ok\": true, \"items\": [1, 2, 3]}"[..],
            b"HTTP/1.1 200 OK\r\n",
            b"<!doctype html><html>",
            b"GIF89a\x01\0\x01\0",
        ] {
            assert_eq!(sniff(plain), None, "{:?}", String::from_utf8_lossy(plain));
        }
    }

    #[test]
    fn a_token_split_across_headers_is_masked() {
        let token = "real-token-0123456789abcdef";
        let det = Detector::known_only([("T", token)]);
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("real-token-01234"));
        h.insert("x-b", HeaderValue::from_static("56789abcdef"));
        h.insert("x-other", HeaderValue::from_static("fine"));
        assert_eq!(redact_headers(&mut h, &det), 1);
        let all: String = h.values().map(|v| v.to_str().unwrap_or("?")).collect();
        assert_eq!(all, format!("{}fine", "*".repeat(token.len())));
    }
}
