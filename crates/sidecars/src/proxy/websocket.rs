//! WebSocket relay for routes with `websocket: true`.
//!
//! Client-to-server frames are parsed, unmasked and scanned by the detector
//! one whole message at a time (fragments are held until the final one), so
//! a secret never reaches the upstream in a message. Compression extensions
//! are stripped from the handshake: compressed frames could not be scanned.
//! Server-to-client frames are parsed too, and each message is scanned for
//! the bottle's known secrets (the tokens the proxy injects) and masked in
//! place before it reaches the client, so a server that echoes never hands
//! the agent a token.

use std::sync::Arc;

use bot_bottle_detect::Detector;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex;

use super::policy::{Denial, deny};
use crate::peer::peer_step;

/// Largest message the relay buffers for scanning.
const MAX_MESSAGE: usize = 16 << 20;

type Side = TokioIo<Upgraded>;

/// What happened on a relayed connection, for the audit log.
pub(crate) struct Outcome {
    pub(crate) up: u64,
    pub(crate) down: u64,
    pub(crate) denial: Option<Denial>,
    pub(crate) logged: Vec<String>,
    pub(crate) redacted: u64,
}

pub(crate) async fn relay(
    client: Upgraded,
    upstream: Upgraded,
    det: Arc<Detector>,
    known: Arc<Detector>,
    block: bool,
) -> Outcome {
    let (cr, cw) = tokio::io::split(TokioIo::new(client));
    let (ur, uw) = tokio::io::split(TokioIo::new(upstream));
    let cw = Arc::new(Mutex::new(cw));
    let down_writer = cw.clone();
    let down = tokio::spawn(pump_down(ur, down_writer, known));
    let (up, denial, logged) = pump_up(cr, uw, &det, block).await;
    if let Some(d) = &denial {
        // Tell the client why (1008: policy violation), then close both sides.
        let reason = format!("bot-bottle: {}", d.rule);
        let mut frame = vec![0x88, (2 + reason.len()) as u8, 0x03, 0xf0];
        frame.extend_from_slice(reason.as_bytes());
        let mut w = cw.lock().await;
        peer_step("websocket: the policy close frame", w.write_all(&frame).await);
        peer_step("websocket: closing the client side", w.shutdown().await);
        down.abort();
    }
    let (down, redacted) = down.await.unwrap_or((0, 0));
    Outcome { up, down, denial, logged, redacted }
}

/// Server to client: whole messages (fragments held until the final one),
/// known secrets masked in their payloads (same length, so the frames stay
/// valid), then forwarded. A frame that cannot be scanned ends the relay.
async fn pump_down(mut ur: ReadHalf<Side>, cw: Arc<Mutex<WriteHalf<Side>>>, known: Arc<Detector>) -> (u64, u64) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let (mut total, mut redacted) = (0u64, 0u64);
    // The frames of the message being assembled, and where each payload sits.
    let mut msg: Vec<u8> = Vec::new();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    'read: loop {
        let frame = loop {
            match parse(&buf, false) {
                Parsed::Frame(f) => break f,
                Parsed::Bad(_) => break 'read,
                Parsed::More => match ur.read(&mut chunk).await {
                    Ok(0) | Err(_) => break 'read,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
            }
        };
        let raw: Vec<u8> = buf.drain(..frame.total).collect();
        let control = frame.opcode >= 8;
        let mut out = if control {
            let mut one = raw;
            let at = frame.payload_at;
            redacted += known.redact_known(&mut one[at..]).len() as u64;
            one
        } else {
            let base = msg.len();
            spans.push((base + frame.payload_at, base + frame.total));
            msg.extend_from_slice(&raw);
            if msg.len() > MAX_MESSAGE {
                break 'read;
            }
            if !frame.fin {
                continue;
            }
            // Scan the message's payload as one text, then write it back.
            let mut payload: Vec<u8> = spans.iter().flat_map(|&(a, b)| msg[a..b].iter().copied()).collect();
            redacted += known.redact_known(&mut payload).len() as u64;
            let mut at = 0;
            for &(a, b) in &spans {
                msg[a..b].copy_from_slice(&payload[at..at + (b - a)]);
                at += b - a;
            }
            spans.clear();
            std::mem::take(&mut msg)
        };
        total += out.len() as u64;
        if cw.lock().await.write_all(&out).await.is_err() {
            break;
        }
        out.clear();
    }
    peer_step("websocket: closing the client side", cw.lock().await.shutdown().await);
    (total, redacted)
}

/// Reads client frames, scans each complete message, forwards clean ones.
async fn pump_up(
    mut cr: ReadHalf<Side>,
    mut uw: WriteHalf<Side>,
    det: &Detector,
    block: bool,
) -> (u64, Option<Denial>, Vec<String>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut msg_raw: Vec<u8> = Vec::new();
    let mut msg_payload: Vec<u8> = Vec::new();
    let mut up = 0u64;
    let mut logged = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let frame = loop {
            match parse(&buf, true) {
                Parsed::Frame(f) => break f,
                Parsed::Bad(why) => return (up, Some(deny("websocket", why)), logged),
                Parsed::More => match cr.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        peer_step("websocket: closing the upstream side", uw.shutdown().await);
                        return (up, None, logged);
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
            }
        };
        let raw: Vec<u8> = buf.drain(..frame.total).collect();
        let payload = unmask(&raw[frame.payload_at..], frame.mask);
        let control = frame.opcode >= 8;
        let (to_scan, to_send) = if control {
            (payload, raw)
        } else {
            msg_raw.extend_from_slice(&raw);
            msg_payload.extend_from_slice(&payload);
            if msg_payload.len() > MAX_MESSAGE {
                return (
                    up,
                    Some(deny("websocket", format!("message over {} MiB cannot be scanned", MAX_MESSAGE >> 20))),
                    logged,
                );
            }
            if !frame.fin {
                continue;
            }
            (std::mem::take(&mut msg_payload), std::mem::take(&mut msg_raw))
        };
        if let Some(f) = det.scan(&to_scan).into_iter().next() {
            if block {
                return (up, Some(deny("dlp", format!("websocket message holds a secret ({})", f.rule))), logged);
            }
            logged.push(f.rule);
        }
        up += to_send.len() as u64;
        if uw.write_all(&to_send).await.is_err() {
            return (up, None, logged);
        }
    }
}

struct Frame {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    payload_at: usize,
    total: usize,
}

enum Parsed {
    Frame(Frame),
    More,
    Bad(String),
}

/// One frame from the front of `b`. Client frames must be masked (RFC 6455
/// section 5.1); server frames must not be.
fn parse(b: &[u8], from_client: bool) -> Parsed {
    if b.len() < 2 {
        return Parsed::More;
    }
    let fin = b[0] & 0x80 != 0;
    if b[0] & 0x70 != 0 {
        return Parsed::Bad("reserved bits set: no extensions were negotiated".into());
    }
    let opcode = b[0] & 0x0f;
    if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
        return Parsed::Bad(format!("unknown opcode {opcode}"));
    }
    let masked = b[1] & 0x80 != 0;
    if masked != from_client {
        return Parsed::Bad(if from_client { "client frame is not masked" } else { "server frame is masked" }.into());
    }
    let (len, mut at) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() >= 10 => (u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]), 10),
        126 | 127 => return Parsed::More,
        n => (u64::from(n), 2),
    };
    if len > MAX_MESSAGE as u64 {
        return Parsed::Bad(format!("frame over {} MiB cannot be scanned", MAX_MESSAGE >> 20));
    }
    let mut mask = [0u8; 4];
    if masked {
        if b.len() < at + 4 {
            return Parsed::More;
        }
        mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
    }
    let total = at + len as usize;
    if b.len() < total {
        return Parsed::More;
    }
    Parsed::Frame(Frame { fin, opcode, mask, payload_at: at, total })
}

fn unmask(p: &[u8], mask: [u8; 4]) -> Vec<u8> {
    p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect()
}
