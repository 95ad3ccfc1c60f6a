//! Request bodies on their way out: scanned by the detector before any byte
//! reaches the upstream.
//!
//! Identity bodies stream: each chunk is scanned together with the tail of
//! the previous ones, and the last `overlap` bytes are held back until what
//! follows has been seen, so no complete secret is ever forwarded. Encoded
//! bodies (gzip, deflate, br, zstd) are buffered up to a cap, decoded, and
//! scanned whole; a body that cannot be decoded, or is over the cap, is
//! refused rather than passed on unscanned.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bot_bottle_detect::{Detector, Finding};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

use super::policy::{Denial, deny};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Limits for buffered (encoded) bodies.
pub(crate) const MAX_ENCODED: usize = 16 << 20;
pub(crate) const MAX_DECODED: usize = 64 << 20;

/// A body fed from a channel by the scanning task.
#[derive(Debug)]
pub(crate) struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body refused by DLP")]
struct Refused;

/// What the scanning task reports: the first finding, in block mode a refusal.
pub(crate) enum Verdict {
    Blocked(Denial),
    Logged(Vec<String>),
}

/// Starts scanning `incoming`; returns the body to forward, a receiver for
/// the verdict (sent only if something was found or refused), and the byte
/// counter.
pub(crate) fn scan_body(
    incoming: Incoming,
    encoding: Vec<String>,
    det: Arc<Detector>,
    block: bool,
) -> (ChannelBody, oneshot::Receiver<Verdict>, Arc<AtomicU64>) {
    let (tx, rx) = mpsc::channel(8);
    let (vtx, vrx) = oneshot::channel();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let result = if encoding.is_empty() {
            pump_identity(incoming, &det, block, &tx, &c).await
        } else {
            pump_encoded(incoming, &encoding, &det, block, &tx, &c).await
        };
        match result {
            Ok(logged) if logged.is_empty() => {}
            Ok(logged) => {
                let _ = vtx.send(Verdict::Logged(logged));
            }
            Err(Some(denial)) => {
                let _ = tx.send(Err(Box::new(Refused))).await;
                let _ = vtx.send(Verdict::Blocked(denial));
            }
            Err(None) => {
                let _ = tx.send(Err(Box::new(Refused))).await;
            }
        }
    });
    (ChannelBody { rx }, vrx, count)
}

fn dlp_denial(f: &Finding) -> Denial {
    deny("dlp", format!("request body holds a secret ({})", f.rule))
}

/// `Err(None)`: the client or upstream went away; nothing to report.
type PumpResult = Result<Vec<String>, Option<Denial>>;

async fn pump_identity(
    mut incoming: Incoming,
    det: &Detector,
    block: bool,
    tx: &mpsc::Sender<Result<Bytes, BoxError>>,
    count: &AtomicU64,
) -> PumpResult {
    let mut stream = det.stream();
    let hold = det.overlap();
    // Chunks scanned but not yet forwarded, as hyper gave them (no copies).
    // Everything but the last `hold` bytes goes out as soon as it is scanned.
    let mut held: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
    let mut held_len = 0usize;
    let mut logged = Vec::new();
    loop {
        let frame = match incoming.frame().await {
            Some(Ok(f)) => f,
            Some(Err(_)) => return Err(None),
            None => break,
        };
        let Ok(chunk) = frame.into_data() else { continue };
        count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        for f in stream.feed(&chunk) {
            if block {
                return Err(Some(dlp_denial(&f)));
            }
            logged.push(f.rule);
        }
        held_len += chunk.len();
        held.push_back(chunk);
        while held_len > hold {
            let Some(mut front) = held.pop_front() else { break };
            let excess = held_len - hold;
            if front.len() > excess {
                // Forward only the part of this chunk that is clear of the hold-back.
                let rest = front.split_off(excess);
                held.push_front(rest);
            }
            held_len -= front.len();
            if tx.send(Ok(front)).await.is_err() {
                return Err(None);
            }
        }
    }
    for f in stream.finish() {
        if block {
            return Err(Some(dlp_denial(&f)));
        }
        logged.push(f.rule);
    }
    for chunk in held {
        if tx.send(Ok(chunk)).await.is_err() {
            return Err(None);
        }
    }
    Ok(logged)
}

async fn pump_encoded(
    mut incoming: Incoming,
    encoding: &[String],
    det: &Detector,
    block: bool,
    tx: &mpsc::Sender<Result<Bytes, BoxError>>,
    count: &AtomicU64,
) -> PumpResult {
    let mut raw = Vec::new();
    while let Some(frame) = incoming.frame().await {
        let Ok(frame) = frame else { return Err(None) };
        let Ok(chunk) = frame.into_data() else { continue };
        count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if raw.len() + chunk.len() > MAX_ENCODED {
            return Err(Some(deny(
                "body-too-large",
                format!("encoded request body over {} MiB cannot be scanned", MAX_ENCODED >> 20),
            )));
        }
        raw.extend_from_slice(&chunk);
    }
    let decoded = decode(&raw, encoding).map_err(Some)?;
    let mut logged = Vec::new();
    for f in det.scan(&decoded).into_iter().chain(det.scan(&raw)) {
        if block {
            return Err(Some(dlp_denial(&f)));
        }
        logged.push(f.rule);
    }
    if tx.send(Ok(Bytes::from(raw))).await.is_err() {
        return Err(None);
    }
    Ok(logged)
}

/// Undoes `Content-Encoding` (listed in the order applied).
pub(crate) fn decode(raw: &[u8], encoding: &[String]) -> Result<Vec<u8>, Denial> {
    let mut data = raw.to_vec();
    for enc in encoding.iter().rev() {
        let undecodable =
            |e: &dyn std::fmt::Display| deny("undecodable-body", format!("cannot decode {enc} request body: {e}"));
        let mut out = Vec::new();
        let limit = (MAX_DECODED + 1) as u64;
        let r = match enc.as_str() {
            "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(&data[..]).take(limit).read_to_end(&mut out),
            "deflate" => {
                // Servers disagree on zlib-wrapped vs raw deflate; accept both.
                let mut z = Vec::new();
                match flate2::read::ZlibDecoder::new(&data[..]).take(limit).read_to_end(&mut z) {
                    Ok(_) => {
                        out = z;
                        Ok(out.len())
                    }
                    Err(_) => flate2::read::DeflateDecoder::new(&data[..]).take(limit).read_to_end(&mut out),
                }
            }
            "br" => brotli_decompressor::Decompressor::new(&data[..], 4096).take(limit).read_to_end(&mut out),
            "zstd" => match ruzstd::decoding::StreamingDecoder::new(&data[..]) {
                Ok(d) => d.take(limit).read_to_end(&mut out),
                Err(e) => return Err(undecodable(&e)),
            },
            "identity" => {
                out = std::mem::take(&mut data);
                Ok(out.len())
            }
            other => {
                return Err(deny(
                    "undecodable-body",
                    format!("unknown content-encoding `{other}`; the body cannot be scanned"),
                ));
            }
        };
        if let Err(e) = r {
            return Err(undecodable(&e));
        }
        if out.len() > MAX_DECODED {
            return Err(deny(
                "body-too-large",
                format!("decoded request body over {} MiB cannot be scanned", MAX_DECODED >> 20),
            ));
        }
        data = out;
    }
    Ok(data)
}

/// Counts response bytes and runs `done` once the body ends or is dropped.
pub(crate) struct Counted<B> {
    inner: B,
    count: u64,
    done: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
}

impl<B> Counted<B> {
    pub(crate) fn new(inner: B, done: Box<dyn FnOnce(u64) + Send + Sync>) -> Self {
        Counted { inner, count: 0, done: Some(done) }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.count);
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B>
where
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.count += d.len() as u64;
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const SECRET: &[u8] = b"ghp_Zq8VtR2mN4kL7pX1cB9dF3hJ6sW0yA5eG2uT";

    fn doc() -> Vec<u8> {
        let mut d = vec![b'x'; 300];
        d.push(b' ');
        d.extend_from_slice(SECRET);
        d.push(b' ');
        d.extend(vec![b'y'; 300]);
        d
    }

    fn enc(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn decodes_every_supported_encoding() {
        let d = doc();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&d).expect("gzip");
        assert_eq!(decode(&gz.finish().expect("gzip"), &enc(&["gzip"])), Ok(d.clone()));
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&d).expect("zlib");
        assert_eq!(decode(&z.finish().expect("zlib"), &enc(&["deflate"])), Ok(d.clone()));
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&d).expect("deflate");
        assert_eq!(decode(&raw.finish().expect("deflate"), &enc(&["deflate"])), Ok(d.clone()));
        let mut zs = Vec::new();
        ruzstd::encoding::compress(&d[..], &mut zs, ruzstd::encoding::CompressionLevel::Fastest);
        assert_eq!(decode(&zs, &enc(&["zstd"])), Ok(d.clone()));
        // Brotli, made by Python's `brotli` package from the same document.
        let br: [u8; 56] = [
            27, 129, 2, 248, 101, 96, 158, 169, 46, 68, 56, 138, 252, 93, 139, 141, 88, 0, 32, 160, 252, 59, 203, 192,
            56, 93, 101, 114, 147, 193, 203, 129, 119, 3, 93, 53, 226, 138, 160, 150, 161, 58, 1, 153, 20, 252, 25,
            130, 127, 26, 235, 69, 248, 237, 1, 127,
        ];
        assert_eq!(decode(&br, &enc(&["br"])), Ok(d.clone()));
        // Stacked encodings are undone in reverse order.
        let mut inner = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        inner.write_all(&d).expect("gzip");
        let mut outer = Vec::new();
        ruzstd::encoding::compress(
            &inner.finish().expect("gzip")[..],
            &mut outer,
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(decode(&outer, &enc(&["gzip", "zstd"])), Ok(d));
    }

    #[test]
    fn refuses_what_it_cannot_decode() {
        for (data, e) in [
            (&b"not gzip"[..], "gzip"),
            (b"not zstd", "zstd"),
            (b"\xff\xff\xff", "br"),
            (b"x", "compress"),
            (b"x", "sdch"),
        ] {
            let r = decode(data, &enc(&[e]));
            assert!(r.as_ref().is_err_and(|d| d.rule == "undecodable-body"), "{e}: {r:?}");
        }
    }

    #[test]
    fn refuses_a_decompression_bomb() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(MAX_DECODED >> 20) + 1 {
            gz.write_all(&zeros).expect("gzip");
        }
        let bomb = gz.finish().expect("gzip");
        assert!(bomb.len() < MAX_ENCODED, "the bomb itself is small: {}", bomb.len());
        let r = decode(&bomb, &enc(&["gzip"]));
        assert!(r.as_ref().is_err_and(|d| d.rule == "body-too-large"), "{r:?}");
    }
}
