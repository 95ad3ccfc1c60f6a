//! The scanner: a keyword prefilter over all rules, the rules' regexes run
//! only in windows around keyword hits, and an exact-match automaton for
//! known secrets.

use std::collections::HashSet;
use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::encode;
use crate::rules::{Rule, builtin_rules};

/// How far around a keyword hit a rule's regex looks. Bounds the cost per
/// hit and the overlap a stream must carry between chunks.
const WINDOW: usize = 512;

/// A secret found in scanned bytes. Holds no part of the secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Finding {
    /// A rule id, or `known-secret:NAME` for an exact known value.
    pub rule: String,
    /// For known secrets, the form found: raw, base64, base64url, url-encoded, hex.
    pub encoding: Option<&'static str>,
    /// Byte range of the secret (for streams, from the stream's start).
    pub range: Range<u64>,
}

/// A finding plus where the whole match ended (a rule may need context
/// after the secret itself).
#[derive(Debug)]
struct Hit {
    finding: Finding,
    match_end: u64,
}

#[derive(Debug)]
struct Known {
    name: String,
    encoding: &'static str,
}

/// A compiled detector. Build once, share freely (`Sync`).
#[derive(Debug)]
pub struct Detector {
    rules: Vec<Rule>,
    keywords: AhoCorasick,
    keyword_rule: Vec<usize>,
    known: Option<(AhoCorasick, Vec<Known>)>,
    overlap: usize,
}

impl Detector {
    /// The built-in rules, no known secrets.
    pub fn builtin() -> Detector {
        Detector::new(builtin_rules())
    }

    pub fn new(rules: Vec<Rule>) -> Detector {
        let mut pats = Vec::new();
        let mut keyword_rule = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            for k in &r.keywords {
                pats.push(k.clone());
                keyword_rule.push(i);
            }
        }
        let keywords = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&pats)
            .unwrap_or_else(|e| panic!("keyword automaton: {e}"));
        Detector { rules, keywords, keyword_rule, known: None, overlap: 2 * WINDOW }
    }

    /// Adds exact secrets to look for, by name. Empty and very short values
    /// (under 8 bytes) are skipped: they would match everywhere.
    pub fn with_known<N: Into<String>, V: AsRef<[u8]>>(
        mut self,
        secrets: impl IntoIterator<Item = (N, V)>,
    ) -> Detector {
        let mut pats: Vec<Vec<u8>> = Vec::new();
        let mut info = Vec::new();
        for (name, value) in secrets {
            let name = name.into();
            let value = value.as_ref();
            if value.len() < 8 {
                continue;
            }
            for (encoding, pat) in encode::variants(value) {
                self.overlap = self.overlap.max(pat.len() * 2);
                pats.push(pat);
                info.push(Known { name: name.clone(), encoding });
            }
        }
        if !pats.is_empty() {
            let ac = AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .build(&pats)
                .unwrap_or_else(|e| panic!("known-secret automaton: {e}"));
            self.known = Some((ac, info));
        }
        self
    }

    /// How many trailing bytes a stream keeps between chunks; a consumer
    /// that forwards scanned data should hold back this much until the
    /// stream has seen what follows.
    pub fn overlap(&self) -> usize {
        self.overlap
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every secret in `data`, sorted by position.
    pub fn scan(&self, data: &[u8]) -> Vec<Finding> {
        let mut hits = Vec::new();
        self.scan_into(data, 0, &mut hits);
        let mut out: Vec<Finding> = hits.into_iter().map(|h| h.finding).collect();
        out.sort_by(|a, b| (a.range.start, &a.rule).cmp(&(b.range.start, &b.rule)));
        out.dedup();
        out
    }

    /// Whether `data` holds any secret; stops at the first.
    pub fn any(&self, data: &[u8]) -> bool {
        !self.scan(data).is_empty()
    }

    /// A streaming scanner over this detector.
    pub fn stream(&self) -> Stream<'_> {
        Stream { det: self, tail: Vec::new(), tail_start: 0, seen: HashSet::new() }
    }

    fn scan_into(&self, data: &[u8], base: u64, out: &mut Vec<Hit>) {
        if let Some((ac, info)) = &self.known {
            for m in ac.find_overlapping_iter(data) {
                let k = &info[m.pattern().as_usize()];
                out.push(Hit {
                    finding: Finding {
                        rule: format!("known-secret:{}", k.name),
                        encoding: Some(k.encoding),
                        range: base + m.start() as u64..base + m.end() as u64,
                    },
                    match_end: base + m.end() as u64,
                });
            }
        }
        // Merge the windows around keyword hits, per rule.
        let mut windows: Vec<Vec<Range<usize>>> = vec![Vec::new(); self.rules.len()];
        for m in self.keywords.find_overlapping_iter(data) {
            let r = self.keyword_rule[m.pattern().as_usize()];
            let lo = m.start().saturating_sub(WINDOW);
            let hi = (m.end() + WINDOW).min(data.len());
            let w = &mut windows[r];
            match w.last_mut() {
                Some(last) if lo <= last.end => last.end = last.end.max(hi),
                _ => w.push(lo..hi),
            }
        }
        for (r, ws) in windows.iter().enumerate() {
            let rule = &self.rules[r];
            for w in ws {
                let hay = &data[w.clone()];
                for caps in rule.regex.captures_iter(hay) {
                    let Some(m) = caps.get(rule.group) else { continue };
                    if rule.entropy.is_some_and(|min| entropy(m.as_bytes()) < min) {
                        continue;
                    }
                    if rule.group > 0 && looks_like_placeholder(m.as_bytes()) {
                        continue;
                    }
                    let secret = m.as_bytes();
                    if rule.mixed
                        && !(secret.iter().any(u8::is_ascii_digit) && secret.iter().any(u8::is_ascii_alphabetic))
                    {
                        continue;
                    }
                    if let Some(whole) = caps.get(0)
                        && rule.allow.iter().any(|a| a.is_match(whole.as_bytes()))
                    {
                        continue;
                    }
                    let start = base + (w.start + m.start()) as u64;
                    let end = base + (w.start + m.end()) as u64;
                    let whole = caps.get(0).map_or(m.end(), |w0| w0.end());
                    out.push(Hit {
                        finding: Finding { rule: rule.id.clone(), encoding: None, range: start..end },
                        match_end: base + (w.start + whole) as u64,
                    });
                }
            }
        }
    }
}

/// Shannon entropy in bits per byte.
fn entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Values that stand for a secret rather than being one: templates,
/// environment references, obvious fillers.
fn looks_like_placeholder(s: &[u8]) -> bool {
    let lower = s.to_ascii_lowercase();
    let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    has(b"${")
        || has(b"{{")
        || has(b"<")
        || has(b"example")
        || has(b"xxxx")
        || has(b"changeme")
        || has(b"placeholder")
        || has(b"your")
        || has(b"dummy")
        || has(b"redacted")
        || has(b"****")
}

/// Scans data that arrives in chunks. Each chunk is scanned together with
/// the tail of the previous ones, so a secret split across chunks is found
/// once, with offsets from the start of the stream.
#[derive(Debug)]
pub struct Stream<'d> {
    det: &'d Detector,
    tail: Vec<u8>,
    tail_start: u64,
    /// Findings already reported that may be seen again in the tail.
    seen: HashSet<(String, u64)>,
}

impl Stream<'_> {
    /// Scans the next chunk. A match that reaches the end of the data seen
    /// so far may still grow, so it is held back until the next chunk or
    /// [`Stream::finish`].
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Finding> {
        self.step(chunk, false)
    }

    /// Ends the stream, reporting any match held back at its end.
    pub fn finish(&mut self) -> Vec<Finding> {
        self.step(&[], true)
    }

    fn step(&mut self, chunk: &[u8], last: bool) -> Vec<Finding> {
        // One buffer, reused: the carried tail sits at its front.
        let mut buf = std::mem::take(&mut self.tail);
        let old = buf.len();
        buf.extend_from_slice(chunk);
        let mut found = Vec::new();
        self.det.scan_into(&buf, self.tail_start, &mut found);
        let new_from = self.tail_start + old as u64;
        let end = self.tail_start + buf.len() as u64;
        let mut out = Vec::new();
        for Hit { finding: f, match_end } in found {
            // Ended inside the carried tail: reported in an earlier step.
            // (A match held back then ended exactly where that step's data
            // did, which is `new_from`, and is reported now.)
            if match_end < new_from {
                continue;
            }
            if match_end == end && !last {
                continue;
            }
            if self.seen.insert((f.rule.clone(), f.range.start)) {
                out.push(f);
            }
        }
        out.sort_by(|a, b| (a.range.start, &a.rule).cmp(&(b.range.start, &b.rule)));
        let keep = self.det.overlap.min(buf.len());
        let cut = buf.len() - keep;
        self.tail_start += cut as u64;
        buf.drain(..cut);
        self.tail = buf;
        let floor = self.tail_start.saturating_sub(self.det.overlap as u64);
        self.seen.retain(|(_, start)| *start >= floor);
        out
    }
}

/// The 1-based line of byte `offset` in `data`.
pub fn line_of(data: &[u8], offset: usize) -> usize {
    data[..offset.min(data.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

impl Detector {
    /// A safe way to show a finding in `data`: for token formats with a
    /// public prefix (`ghp_`, `AKIA`, ...) up to four leading characters,
    /// otherwise nothing; then only the length.
    pub fn redact(&self, f: &Finding, data: &[u8]) -> String {
        let (s, e) = (f.range.start as usize, f.range.end as usize);
        let matched = data.get(s..e).unwrap_or_default();
        let prefixed = self.rules.iter().any(|r| r.id == f.rule && r.group == 0);
        let shown: String = if prefixed {
            matched.iter().take(4).map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect()
        } else {
            String::new()
        };
        format!("{shown}… ({} bytes)", matched.len())
    }
}
