//! A stream finds exactly what a whole-buffer scan finds, however the data
//! is cut into chunks.

use bot_bottle_detect::{Detector, Finding, generate};
use proptest::prelude::*;

use super::Rng;

fn corpus(seed: u64, n: usize) -> Vec<u8> {
    let det = Detector::builtin();
    let mut rng = Rng(seed | 1);
    let mut out = Vec::new();
    for i in 0..n {
        out.extend_from_slice(b"filler text, nothing to see here; ");
        if i % 3 == 0 {
            let r = &det.rules()[(rng.next() as usize) % det.rules().len()];
            out.extend_from_slice(generate(&r.gen_template, &mut || rng.next()).as_bytes());
            out.push(b'\n');
        }
    }
    out.extend_from_slice(b"tail KNOWNSECRET-0123456789 end");
    out
}

fn stream_scan(det: &Detector, data: &[u8], cuts: &[usize]) -> Vec<Finding> {
    let mut s = det.stream();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(data.len());
    for c in cuts {
        if c > pos {
            out.extend(s.feed(&data[pos..c]));
            pos = c;
        }
    }
    out.extend(s.finish());
    out.sort_by(|a, b| (a.range.start, &a.rule).cmp(&(b.range.start, &b.rule)));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn chunking_does_not_change_findings(seed in any::<u64>(), cuts in prop::collection::vec(any::<usize>(), 0..40)) {
        let det = Detector::builtin().with_known([("K", "KNOWNSECRET-0123456789")]);
        let data = corpus(seed, 30);
        let whole = det.scan(&data);
        prop_assert!(!whole.is_empty());
        prop_assert_eq!(stream_scan(&det, &data, &cuts), whole);
    }
}

#[test]
fn byte_at_a_time() {
    let det = Detector::builtin().with_known([("K", "KNOWNSECRET-0123456789")]);
    let data = corpus(7, 4);
    let cuts: Vec<usize> = (0..data.len()).collect();
    assert_eq!(stream_scan(&det, &data, &cuts), det.scan(&data));
}
