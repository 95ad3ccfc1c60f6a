//! Secret detection for bot-bottle.
//!
//! One [`Detector`] finds two kinds of secrets in bytes:
//! - **known secrets**: exact values the bottle knows (the tokens its proxy
//!   injects), also reversed and in base64, base64url, base32, UTF-16,
//!   URL-encoded, JSON-escaped, quoted-printable, HTML-entity and hex form
//!   (plain or with separators);
//! - **credential formats**: a built-in rule set (cloud keys, forge tokens,
//!   webhooks, payment and LLM provider keys, private keys, JWTs, registry
//!   tokens, keyword-plus-entropy assignments), kept as data in
//!   `rules.yaml` and embedded in the binary.
//!
//! [`Stream`] scans data that arrives in chunks, carrying enough of each
//! chunk into the next that a secret split across a boundary is still found.
//! [`Redactor`] masks known secrets in a stream, holding back only a tail
//! that could still become one.
//!
//! This crate does no I/O and keeps no secret in its findings: a
//! [`Finding`] says which rule matched and where, and
//! [`Detector::redact`] is the only way to show a match.

mod encode;
mod rules;
mod scan;

pub use rules::{Rule, RuleError, builtin_rules, parse_rules};
pub use scan::{Detector, Finding, MASK, Redactor, Stream, line_of};

#[doc(hidden)]
pub use rules::generate;
