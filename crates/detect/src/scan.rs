//! The scanner: a keyword prefilter over all rules, the rules' regexes run
//! only in windows around keyword hits, and an exact-match automaton for
//! known secrets.

use std::collections::HashSet;
use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind, Span, packed};

use crate::encode;
use crate::rules::{Rule, builtin_rules};

/// How far around a keyword hit a rule's regex looks. Bounds the cost per
/// hit and the overlap a stream must carry between chunks.
const WINDOW: usize = 512;

/// Keywords at least this long go to the packed (SIMD) searchers; shorter
/// ones would make those searchers report a candidate at every other byte.
const PACKED_MIN: usize = 4;
/// Patterns per packed searcher: beyond this its buckets fill and it slows.
const PACKED_MAX: usize = 48;

/// A secret found in scanned bytes. Holds no part of the secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Finding {
    /// A rule id, or `known-secret:NAME` for an exact known value.
    pub rule: String,
    /// For known secrets, the form found: raw, reversed, base64, base64url,
    /// base32, utf-16le, utf-16be, url-encoded, json-escaped,
    /// quoted-printable, html-entity, hex.
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

/// The exact-match side: every form of every known secret.
#[derive(Debug)]
struct KnownSet {
    /// Packed searchers over every form; a group's `rule` indexes `info`.
    groups: Vec<Group>,
    info: Vec<Known>,
    /// The patterns, sorted, to tell whether some bytes could be the start
    /// of one (a partial match at the end of a stream).
    sorted: Vec<Vec<u8>>,
    first: [bool; 256],
    longest: usize,
}

/// One group of keywords searched together, each mapped to its rule.
#[derive(Debug)]
struct Group {
    searcher: Searcher,
    patterns: Vec<Vec<u8>>,
    rule: Vec<usize>,
}

#[derive(Debug)]
enum Searcher {
    Packed(packed::Searcher),
    Ac(AhoCorasick),
}

/// The keyword prefilter. Token prefixes (`ghp_`, `AKIA`) are matched as
/// written, in SIMD searchers that run at several GB/s; words (`password`,
/// service names) are matched ignoring case, by the same searchers over a
/// lower-cased copy. Keywords under four bytes get searchers of their own
/// (they would make the others report a candidate at every other byte),
/// the case-insensitive ones over the lower-cased copy too: spelling out
/// their case forms instead (`aws`, `AWS`, `Aws`, ...) put 30 patterns in
/// one searcher that ran at 1.4 GB/s on English text, the slowest of all;
/// split by case, the two run at over 16 GB/s.
#[derive(Debug)]
struct Prefilter {
    exact: Vec<Group>,
    nocase: Vec<Group>,
    /// The longest keyword: how far a block's search reaches past the
    /// block's end, so that a keyword starting in the block is seen whole.
    longest: usize,
}

/// The prefilter runs over the data in blocks of this size: the lower-cased
/// copy is one block, reused, not a copy of the whole input, and each
/// searcher's pass over a block finds it in cache.
const BLOCK: usize = 32 << 10;

impl Prefilter {
    fn new(rules: &[Rule]) -> Prefilter {
        let mut exact: Vec<(Vec<u8>, usize)> = Vec::new();
        let mut nocase: Vec<(Vec<u8>, usize)> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            for k in &r.keywords {
                if r.nocase {
                    nocase.push((k.as_bytes().to_ascii_lowercase(), i));
                } else {
                    exact.push((k.as_bytes().to_vec(), i));
                }
            }
        }
        let longest = exact.iter().chain(&nocase).map(|(k, _)| k.len()).max().unwrap_or(0);
        Prefilter { exact: Group::by_length(exact), nocase: Group::by_length(nocase), longest }
    }

    /// Calls `hit(rule, start, end)` for every keyword occurrence.
    fn each(&self, data: &[u8], hit: &mut dyn FnMut(usize, usize, usize)) {
        let mut lower = Vec::new();
        let mut start = 0;
        while start < data.len() {
            let end = (start + BLOCK).min(data.len());
            // Searched up to `reach`; a hit that starts at `end` or later
            // is the next block's.
            let reach = (end + self.longest.saturating_sub(1)).min(data.len());
            let block = &data[start..reach];
            let own = end - start;
            let mut in_block = |r: usize, s: usize, e: usize| {
                if s < own {
                    hit(r, start + s, start + e);
                }
            };
            for g in &self.exact {
                g.each(block, &mut in_block);
            }
            if !self.nocase.is_empty() {
                lower.clear();
                lower.extend(block.iter().map(u8::to_ascii_lowercase));
                for g in &self.nocase {
                    g.each(&lower, &mut in_block);
                }
            }
            start = end;
        }
    }
}

impl Group {
    /// Searchers for keywords: those of `PACKED_MIN` bytes and more
    /// together, shorter ones apart. A searcher's fingerprint is as long as
    /// its shortest pattern: the two-byte keywords alone, so the three-byte
    /// ones keep three.
    fn by_length(v: Vec<(Vec<u8>, usize)>) -> Vec<Group> {
        let (long, short): (Vec<_>, Vec<_>) = v.into_iter().partition(|(k, _)| k.len() >= PACKED_MIN);
        let (two, three): (Vec<_>, Vec<_>) = short.into_iter().partition(|(k, _)| k.len() < 3);
        let mut out = Group::split(long);
        out.extend(Group::split(three));
        out.extend(Group::split(two));
        out
    }

    /// Searchers for `(pattern, tag)` pairs, matched as written, in groups
    /// small enough for the packed searchers to stay fast.
    fn split(mut v: Vec<(Vec<u8>, usize)>) -> Vec<Group> {
        v.sort();
        v.dedup();
        v.chunks(PACKED_MAX).map(|c| Group::new(c.to_vec())).collect()
    }

    fn new(pats: Vec<(Vec<u8>, usize)>) -> Group {
        let patterns: Vec<Vec<u8>> = pats.iter().map(|(p, _)| p.clone()).collect();
        let rule = pats.iter().map(|(_, r)| *r).collect();
        // `None` where the CPU has no SSSE3/AVX2: an automaton then.
        let packed = packed::Config::new().heuristic_pattern_limits(false).builder().extend(&patterns).build();
        let searcher = match packed {
            Some(s) => Searcher::Packed(s),
            None => Searcher::Ac(
                AhoCorasickBuilder::new()
                    .kind(Some(AhoCorasickKind::DFA))
                    .match_kind(MatchKind::Standard)
                    .build(&patterns)
                    .unwrap_or_else(|e| panic!("keyword automaton: {e}")),
            ),
        };
        Group { searcher, patterns, rule }
    }

    fn each(&self, data: &[u8], hit: &mut dyn FnMut(usize, usize, usize)) {
        match &self.searcher {
            Searcher::Ac(ac) => {
                for m in ac.find_overlapping_iter(data) {
                    hit(self.rule[m.pattern().as_usize()], m.start(), m.end());
                }
            }
            Searcher::Packed(s) => {
                // The packed searcher reports one leftmost match at a time;
                // search again from the next byte, and check every pattern
                // at a hit, so keywords that overlap are all seen.
                let mut at = 0;
                while at < data.len() {
                    let Some(m) = s.find_in(data, Span::from(at..data.len())) else { break };
                    let tail = &data[m.start()..];
                    for (p, rule) in self.patterns.iter().zip(&self.rule) {
                        if tail.starts_with(p) {
                            hit(*rule, m.start(), m.start() + p.len());
                        }
                    }
                    at = m.start() + 1;
                }
            }
        }
    }
}

/// A compiled detector. Build once, share freely (`Sync`).
#[derive(Debug)]
pub struct Detector {
    rules: Vec<Rule>,
    prefilter: Prefilter,
    known: Option<KnownSet>,
    overlap: usize,
}

impl Detector {
    /// The built-in rules, no known secrets.
    pub fn builtin() -> Detector {
        Detector::new(builtin_rules())
    }

    pub fn new(rules: Vec<Rule>) -> Detector {
        let prefilter = Prefilter::new(&rules);
        Detector { rules, prefilter, known: None, overlap: 2 * WINDOW }
    }

    /// A detector for known secrets only: what a proxy scans responses with.
    pub fn known_only<N: Into<String>, V: AsRef<[u8]>>(secrets: impl IntoIterator<Item = (N, V)>) -> Detector {
        let mut d = Detector::new(Vec::new());
        d.overlap = 0;
        d.with_known(secrets)
    }

    /// Adds exact secrets to look for, by name. Empty and very short values
    /// (under 8 bytes) are skipped: they would match everywhere.
    pub fn with_known<N: Into<String>, V: AsRef<[u8]>>(
        mut self,
        secrets: impl IntoIterator<Item = (N, V)>,
    ) -> Detector {
        let mut pats: Vec<(Vec<u8>, usize)> = Vec::new();
        let mut info = Vec::new();
        for (name, value) in secrets {
            let name = name.into();
            let value = value.as_ref();
            if value.len() < 8 {
                continue;
            }
            for (encoding, pat) in encode::variants(value) {
                self.overlap = self.overlap.max(pat.len() * 2);
                pats.push((pat, info.len()));
                info.push(Known { name: name.clone(), encoding });
            }
        }
        if !pats.is_empty() {
            let mut sorted: Vec<Vec<u8>> = pats.iter().map(|(p, _)| p.clone()).collect();
            sorted.sort();
            sorted.dedup();
            let mut first = [false; 256];
            for p in &sorted {
                if let Some(&b) = p.first() {
                    first[b as usize] = true;
                }
            }
            let longest = sorted.iter().map(Vec::len).max().unwrap_or(0);
            self.known = Some(KnownSet { groups: Group::split(pats), info, sorted, first, longest });
        }
        self
    }

    /// Whether any known secret was given (and long enough to look for).
    pub fn has_known(&self) -> bool {
        self.known.is_some()
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
    pub fn stream(&self) -> Stream<&Detector> {
        Stream::new(self)
    }

    fn scan_known_into(&self, data: &[u8], base: u64, out: &mut Vec<Hit>) {
        let Some(k) = &self.known else { return };
        for g in &k.groups {
            g.each(data, &mut |i, start, end| {
                let info = &k.info[i];
                out.push(Hit {
                    finding: Finding {
                        rule: format!("known-secret:{}", info.name),
                        encoding: Some(info.encoding),
                        range: base + start as u64..base + end as u64,
                    },
                    match_end: base + end as u64,
                });
            });
        }
    }

    fn scan_into(&self, data: &[u8], base: u64, out: &mut Vec<Hit>) {
        self.scan_known_into(data, base, out);
        if self.rules.is_empty() {
            return;
        }
        // Merge the windows around keyword hits, per rule.
        let mut windows: Vec<Vec<Range<usize>>> = vec![Vec::new(); self.rules.len()];
        self.prefilter.each(data, &mut |r, start, end| {
            let lo = start.saturating_sub(WINDOW);
            let hi = (end + WINDOW).min(data.len());
            let w = &mut windows[r];
            match w.last_mut() {
                Some(last) if lo <= last.end && hi >= last.start => {
                    last.start = last.start.min(lo);
                    last.end = last.end.max(hi);
                }
                _ => w.push(lo..hi),
            }
        });
        for ws in &mut windows {
            // Hits arrive per searcher, so a rule's windows may be out of
            // order: sort and merge.
            if ws.len() > 1 {
                ws.sort_by_key(|w| w.start);
                let mut merged: Vec<Range<usize>> = Vec::with_capacity(ws.len());
                for w in ws.drain(..) {
                    match merged.last_mut() {
                        Some(last) if w.start <= last.end => last.end = last.end.max(w.end),
                        _ => merged.push(w),
                    }
                }
                *ws = merged;
            }
        }
        for (r, ws) in windows.iter().enumerate() {
            let rule = &self.rules[r];
            for w in ws {
                let hay = &data[w.clone()];
                for caps in rule.regex().captures_iter(hay) {
                    let Some(m) = caps.get_group(rule.group) else { continue };
                    let secret = &hay[m.range()];
                    if rule.entropy.is_some_and(|min| entropy(secret) < min) {
                        continue;
                    }
                    if rule.group > 0 && looks_like_placeholder(secret) {
                        continue;
                    }
                    if rule.mixed
                        && !(secret.iter().any(u8::is_ascii_digit) && secret.iter().any(u8::is_ascii_alphabetic))
                    {
                        continue;
                    }
                    let whole = caps.get_match();
                    if let Some(whole) = whole
                        && rule.allow.iter().any(|a| a.is_match(&hay[whole.range()]))
                    {
                        continue;
                    }
                    let start = base + (w.start + m.start) as u64;
                    let end = base + (w.start + m.end) as u64;
                    let whole = whole.map_or(m.end, |w0| w0.end());
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
pub struct Stream<D> {
    det: D,
    tail: Vec<u8>,
    tail_start: u64,
    /// Findings already reported that may be seen again in the tail.
    seen: HashSet<(String, u64)>,
}

impl<D: std::ops::Deref<Target = Detector>> Stream<D> {
    /// A stream over `det`: a reference, or an `Arc` for a stream that must
    /// move between threads on its own.
    pub fn new(det: D) -> Stream<D> {
        Stream { det, tail: Vec::new(), tail_start: 0, seen: HashSet::new() }
    }

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

/// What known-secret redaction puts in place of each matched byte. Same
/// length, so framing (`Content-Length`, WebSocket frame lengths) holds.
pub const MASK: u8 = b'*';

impl Detector {
    /// Masks every known secret in `data` in place (same length); returns
    /// what was masked. Rules are not applied: redaction is for the values
    /// this detector was given.
    pub fn redact_known(&self, data: &mut [u8]) -> Vec<Finding> {
        let mut hits = Vec::new();
        self.scan_known_into(data, 0, &mut hits);
        for h in &hits {
            let (s, e) = (h.finding.range.start as usize, h.finding.range.end as usize);
            data[s..e].fill(MASK);
        }
        hits.into_iter().map(|h| h.finding).collect()
    }

    /// Length of the longest suffix of `data` that is the start of some
    /// known secret's form (0 if none): the bytes a stream must hold back
    /// until it knows whether the secret follows.
    pub fn partial_known(&self, data: &[u8]) -> usize {
        let Some(k) = &self.known else { return 0 };
        let from = data.len().saturating_sub(k.longest.saturating_sub(1));
        for i in from..data.len() {
            if !k.first[data[i] as usize] {
                continue;
            }
            let tail = &data[i..];
            let at = k.sorted.partition_point(|p| p.as_slice() < tail);
            if k.sorted.get(at).is_some_and(|p| p.starts_with(tail)) {
                return data.len() - i;
            }
        }
        0
    }

    /// A streaming redactor of known secrets (see [`Redactor`]).
    pub fn redactor(&self) -> Redactor<'_> {
        Redactor { det: self, pending: Vec::new(), offset: 0 }
    }
}

/// Masks known secrets in data that arrives in chunks, releasing every byte
/// as soon as it cannot be part of one: only a tail that could still grow
/// into a secret is held back. A stream of small events (server-sent
/// events, say) therefore flows without delay.
#[derive(Debug)]
pub struct Redactor<'d> {
    det: &'d Detector,
    pending: Vec<u8>,
    /// Stream offset of `pending[0]`.
    offset: u64,
}

impl Redactor<'_> {
    /// Takes the next chunk; returns the bytes now safe to release (masked)
    /// and what was masked in them.
    pub fn feed(&mut self, chunk: &[u8]) -> (Vec<u8>, Vec<Finding>) {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(chunk);
        let mut found = self.det.redact_known(&mut buf);
        for f in &mut found {
            f.range = f.range.start + self.offset..f.range.end + self.offset;
        }
        let hold = self.det.partial_known(&buf);
        let keep = buf.len() - hold;
        self.pending = buf.split_off(keep);
        self.offset += keep as u64;
        (buf, found)
    }

    /// Whether bytes are held back waiting for more.
    pub fn holding(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream: the held-back tail (it never became a secret).
    pub fn finish(&mut self) -> Vec<u8> {
        self.offset += self.pending.len() as u64;
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prefilter searches block by block; a keyword that starts near a
    /// block's end and runs past it must still open its rule's window.
    #[test]
    fn keywords_across_a_block_boundary_are_found() {
        let det = Detector::builtin();
        let mut checked = 0;
        for r in det.rules() {
            for ex in &r.examples {
                let wrapped = format!("let x = \"{ex}\";\n");
                let hay = if r.nocase { wrapped.to_ascii_lowercase() } else { wrapped.clone() };
                let Some((at, len)) = r.keywords.iter().find_map(|k| {
                    let k = if r.nocase { k.to_ascii_lowercase() } else { k.clone() };
                    hay.find(&k).map(|at| (at, k.len()))
                }) else {
                    continue;
                };
                // The keyword starts 1 .. len bytes before the boundary, or on it.
                for before in 0..len {
                    let mut data = vec![b'\n'; BLOCK - before - at];
                    data.extend_from_slice(wrapped.as_bytes());
                    let found = det.scan(&data);
                    assert!(found.iter().any(|f| f.rule == r.id), "{}: {ex:?} at {before} before the boundary", r.id);
                    checked += 1;
                }
            }
        }
        assert!(checked > 500, "only {checked} placements checked");
    }
}
