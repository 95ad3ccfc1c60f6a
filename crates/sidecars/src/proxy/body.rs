//! Request bodies on their way out: scanned by the detector before any byte
//! reaches the upstream.
//!
//! Identity bodies stream: each chunk is scanned together with the tail of
//! the previous ones, and the last `overlap` bytes are held back until what
//! follows has been seen, so no complete secret is ever forwarded. Encoded
//! bodies (gzip, deflate, br, zstd, by `Content-Encoding` or, when none is
//! declared, by the first bytes) are held whole up to a cap, within the
//! bottle's memory budget, decoded as a stream and scanned, raw bytes too;
//! a declared encoding that cannot be decoded, or a body over the cap, is
//! refused rather than passed on unscanned. Scanning and decoding run on
//! the blocking pool, not on the async workers.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bot_bottle_detect::{Detector, Finding, Stream};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::limits::Gates;
use super::policy::{Denial, deny};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Limits for buffered (encoded) bodies.
pub(crate) const MAX_ENCODED: usize = 16 << 20;
pub(crate) const MAX_DECODED: usize = 256 << 20;
/// Identity chunks are scanned in batches up to this size, so the hand-off
/// to a scanning thread is paid per batch, not per TLS record.
const BATCH: usize = 256 << 10;
/// A body held whole goes on in frames of this size.
const SLICE: usize = 64 << 10;

/// A body fed from a channel by a scanning task (data and trailers).
#[derive(Debug)]
pub(crate) struct FrameBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

impl FrameBody {
    pub(crate) fn new(rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>) -> FrameBody {
        FrameBody { rx }
    }
}

impl Body for FrameBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
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
    gates: Arc<Gates>,
    block: bool,
) -> (FrameBody, oneshot::Receiver<Verdict>, Arc<AtomicU64>) {
    let (tx, rx) = mpsc::channel(8);
    let (vtx, vrx) = oneshot::channel();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut p = Pump { incoming, det, gates, block, tx: &tx, count: &c, first: None };
        let result = p.run(encoding).await;
        match result {
            Ok(logged) if logged.is_empty() => {}
            Ok(logged) => {
                // The forwarder stops listening once the upstream has
                // answered: a finding made after that is not in the
                // request's audit entry, so it is logged here instead.
                if let Err(Verdict::Logged(rules)) = vtx.send(Verdict::Logged(logged)) {
                    tracing::warn!(rules = %rules.join(", "), "dlp-log findings after the upstream answered; not in the audit entry");
                }
            }
            Err(Some(denial)) => {
                // The verdict first: the body's error fails the upstream
                // request, and the forwarder then looks for a verdict to
                // answer with; finding none it would answer 502.
                if vtx.send(Verdict::Blocked(denial)).is_err() {
                    tracing::debug!("body refused after the forwarder stopped waiting for a verdict");
                }
                refuse(&tx).await;
            }
            Err(None) => refuse(&tx).await,
        }
    });
    (FrameBody::new(rx), vrx, count)
}

/// Ends the forwarded body with an error, so that the upstream request
/// fails rather than completing without the refused rest. A closed
/// channel means the body was already dropped: nothing more is sent then
/// either, so the request is refused all the same.
async fn refuse(tx: &mpsc::Sender<Result<Frame<Bytes>, BoxError>>) {
    if tx.send(Err(Box::new(Refused))).await.is_err() {
        tracing::debug!("refused body: the upstream request had already dropped it");
    }
}

fn dlp_denial(f: &Finding) -> Denial {
    deny("dlp", format!("request body holds a secret ({})", f.rule))
}

/// `Err(None)`: the client or upstream went away; nothing to report.
type PumpResult = Result<Vec<String>, Option<Denial>>;

struct Pump<'a> {
    incoming: Incoming,
    det: Arc<Detector>,
    gates: Arc<Gates>,
    block: bool,
    tx: &'a mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    count: &'a AtomicU64,
    /// A chunk read ahead (to sniff the coding).
    first: Option<Bytes>,
}

impl Pump<'_> {
    async fn run(&mut self, encoding: Vec<String>) -> PumpResult {
        if !encoding.is_empty() {
            return self.encoded(encoding, true).await;
        }
        // No declared coding: compressed bytes are decoded anyway.
        let first = match self.next().await? {
            Some(c) => c,
            None => return Ok(Vec::new()),
        };
        let sniffed = super::response::sniff(&first);
        self.first = Some(first);
        match sniffed {
            Some(c) => self.encoded(vec![c.to_owned()], false).await,
            None => self.identity().await,
        }
    }

    /// The next data chunk (trailers are dropped: nothing upstream needs a
    /// request's trailers, and they would go unscanned).
    async fn next(&mut self) -> Result<Option<Bytes>, Option<Denial>> {
        if let Some(c) = self.first.take() {
            return Ok(Some(c));
        }
        loop {
            match self.incoming.frame().await {
                Some(Ok(f)) => {
                    if let Ok(chunk) = f.into_data() {
                        self.count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        return Ok(Some(chunk));
                    }
                }
                Some(Err(_)) => return Err(None),
                None => return Ok(None),
            }
        }
    }

    /// Whatever more is ready now, up to a batch.
    async fn ready_batch(&mut self, batch: &mut Vec<Bytes>) -> Result<bool, Option<Denial>> {
        let mut size: usize = batch.iter().map(Bytes::len).sum();
        while size < BATCH {
            match tokio::time::timeout(Duration::ZERO, self.incoming.frame()).await {
                Ok(Some(Ok(f))) => {
                    if let Ok(chunk) = f.into_data() {
                        self.count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        size += chunk.len();
                        batch.push(chunk);
                    }
                }
                Ok(Some(Err(_))) => return Err(None),
                Ok(None) => return Ok(true),
                Err(_) => break,
            }
        }
        Ok(false)
    }

    async fn send(&self, chunk: Bytes) -> Result<(), Option<Denial>> {
        self.tx.send(Ok(Frame::data(chunk))).await.map_err(|_| None)
    }

    fn judge(&self, found: Vec<Finding>, logged: &mut Vec<String>) -> Result<(), Option<Denial>> {
        for f in found {
            if self.block {
                return Err(Some(dlp_denial(&f)));
            }
            logged.push(f.rule);
        }
        Ok(())
    }

    async fn identity(&mut self) -> PumpResult {
        let mut stream = Some(Stream::new(self.det.clone()));
        let hold = self.det.overlap();
        // Chunks scanned but not yet forwarded, as hyper gave them (no copies).
        // Everything but the last `hold` bytes goes out as soon as it is scanned.
        let mut held: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
        let mut held_len = 0usize;
        let mut logged = Vec::new();
        let mut ended = false;
        while !ended {
            let Some(first) = self.next().await? else { break };
            let mut batch = vec![first];
            ended = self.ready_batch(&mut batch).await?;
            let st = stream.take().ok_or(None)?;
            let (st, found, batch) = self
                .gates
                .offload(move || {
                    let mut st = st;
                    let mut found = Vec::new();
                    for c in &batch {
                        found.extend(st.feed(c));
                    }
                    (st, found, batch)
                })
                .await
                .ok_or(None)?;
            stream = Some(st);
            self.judge(found, &mut logged)?;
            for chunk in batch {
                held_len += chunk.len();
                held.push_back(chunk);
            }
            while held_len > hold {
                let Some(mut front) = held.pop_front() else { break };
                let excess = held_len - hold;
                if front.len() > excess {
                    // Forward only the part of this chunk that is clear of the hold-back.
                    let rest = front.split_off(excess);
                    held.push_front(rest);
                }
                held_len -= front.len();
                self.send(front).await?;
            }
        }
        let mut st = stream.take().ok_or(None)?;
        let found = st.finish();
        self.judge(found, &mut logged)?;
        for chunk in held {
            self.send(chunk).await?;
        }
        Ok(logged)
    }

    /// Held whole, within the memory budget, then decoded and scanned.
    /// `strict`: the coding was declared, so failing to decode refuses.
    async fn encoded(&mut self, encoding: Vec<String>, strict: bool) -> PumpResult {
        let expect = self.incoming.size_hint().exact().map_or(MAX_ENCODED, |n| (n as usize).min(MAX_ENCODED));
        let budget = match self.gates.memory(expect).await {
            Ok(p) => p,
            Err(cap) => {
                // Read the rest and drop it: most clients send their whole
                // body before they read an answer, and would see a reset
                // instead of the 503 that says why.
                let mut dropped = 0usize;
                while let Ok(Some(chunk)) = self.next().await {
                    dropped += chunk.len();
                    if dropped > MAX_ENCODED {
                        break;
                    }
                }
                return Err(Some(deny("limit", cap.reason(&self.gates.limits))));
            }
        };
        // All of it at once: growing by doubling would hold the old and the
        // new buffer together, over the reservation. Pages not yet written
        // cost no memory.
        let mut raw = Vec::with_capacity(expect);
        while let Some(chunk) = self.next().await? {
            if raw.len() + chunk.len() > MAX_ENCODED {
                return Err(Some(deny(
                    "body-too-large",
                    format!("a compressed request body over {} MiB cannot be scanned", MAX_ENCODED >> 20),
                )));
            }
            raw.extend_from_slice(&chunk);
        }
        let det = self.det.clone();
        let (raw, r) = self
            .gates
            .offload(move || {
                let mut found = det.scan(&raw);
                let r = match scan_decoded(&raw, &encoding, &det) {
                    Ok(f) => {
                        found.extend(f);
                        Ok(found)
                    }
                    Err(d) if strict => Err(d),
                    Err(_) => Ok(found),
                };
                (raw, r)
            })
            .await
            .ok_or(None)?;
        let mut logged = Vec::new();
        self.judge(r.map_err(Some)?, &mut logged)?;
        // The reservation lives as long as the bytes do, in the channel and
        // in the upstream connection's write buffer, not just until they are
        // handed on: a slow upstream must not let bodies pile up unbudgeted.
        // Sent in slices of the one buffer: an HTTP/1 connection over TLS
        // copies each frame into its write buffer whole, so one frame of the
        // whole body would double it, and outside the budget.
        let held = Bytes::from_owner(Held { raw, _budget: budget });
        let mut at = 0;
        while at < held.len() {
            let end = (at + SLICE).min(held.len());
            self.send(held.slice(at..end)).await?;
            at = end;
        }
        Ok(logged)
    }
}

/// A body held whole, with its share of the memory budget.
struct Held {
    raw: Vec<u8>,
    _budget: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.raw
    }
}

/// A reader that undoes `Content-Encoding` (listed in the order applied).
fn decoder<'a>(raw: &'a [u8], encoding: &[String]) -> Result<Box<dyn Read + 'a>, Denial> {
    let mut r: Box<dyn Read + 'a> = Box::new(raw);
    for (i, enc) in encoding.iter().enumerate().rev() {
        let outer = i + 1 == encoding.len();
        r = match enc.as_str() {
            "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(r)),
            // Servers disagree on zlib-wrapped vs raw deflate; the header tells.
            "deflate" if !outer || super::response::zlib_header(raw) => Box::new(flate2::read::ZlibDecoder::new(r)),
            "deflate" => Box::new(flate2::read::DeflateDecoder::new(r)),
            "br" => Box::new(brotli_decompressor::Decompressor::new(r, 4096)),
            "zstd" => match ruzstd::decoding::StreamingDecoder::new(r) {
                Ok(d) => Box::new(d),
                Err(e) => return Err(deny("undecodable-body", format!("cannot decode zstd body: {e}"))),
            },
            "identity" => r,
            other => {
                return Err(deny(
                    "undecodable-body",
                    format!("unknown content-encoding `{other}`; the body cannot be scanned"),
                ));
            }
        };
    }
    Ok(r)
}

/// Decodes `raw` as a stream and scans what comes out with `det`, holding
/// no more than a chunk and the detector's overlap.
pub(crate) fn scan_decoded(raw: &[u8], encoding: &[String], det: &Detector) -> Result<Vec<Finding>, Denial> {
    let mut r = decoder(raw, encoding)?;
    let mut stream = det.stream();
    let mut found = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0usize;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Err(deny("undecodable-body", format!("cannot decode {} body: {e}", encoding.join(", "))));
            }
        };
        total += n;
        if total > MAX_DECODED {
            return Err(deny(
                "body-too-large",
                format!("a body that decodes to over {} MiB cannot be scanned", MAX_DECODED >> 20),
            ));
        }
        found.extend(stream.feed(&buf[..n]));
    }
    found.extend(stream.finish());
    Ok(found)
}

/// Undoes `Content-Encoding` into memory (tests and small bodies).
#[cfg(test)]
pub(crate) fn decode(raw: &[u8], encoding: &[String]) -> Result<Vec<u8>, Denial> {
    let mut out = Vec::new();
    decoder(raw, encoding)?
        .take(MAX_DECODED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| deny("undecodable-body", format!("cannot decode body: {e}")))?;
    if out.len() > MAX_DECODED {
        return Err(deny("body-too-large", "too large"));
    }
    Ok(out)
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
        let r = scan_decoded(&bomb, &enc(&["gzip"]), &Detector::builtin());
        assert!(r.as_ref().is_err_and(|d| d.rule == "body-too-large"), "{r:?}");
    }
}
