//! The floor: what `serde_json` alone does with the same payloads, on one core.

use std::time::Instant;

use serde_json::Value;

/// Parse each payload into a `Value` and serialize it again; best of `reps` runs.
/// Returns (payloads/s, bytes/s).
pub fn parse_serialize(payloads: &[Vec<u8>], reps: usize) -> (f64, f64) {
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let mut best = f64::MAX;
    let mut sink = 0usize;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        for p in payloads {
            let v: Value = serde_json::from_slice(p).expect("valid json");
            sink += serde_json::to_vec(&v).expect("json").len();
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    (payloads.len() as f64 / best, bytes as f64 / best)
}
