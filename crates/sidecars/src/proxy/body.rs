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
    let mut pending: Vec<u8> = Vec::new();
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
        pending.extend_from_slice(&chunk);
        if pending.len() > hold {
            let rest = pending.split_off(pending.len() - hold);
            let ready = std::mem::replace(&mut pending, rest);
            if tx.send(Ok(Bytes::from(ready))).await.is_err() {
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
    if !pending.is_empty() && tx.send(Ok(Bytes::from(pending))).await.is_err() {
        return Err(None);
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
