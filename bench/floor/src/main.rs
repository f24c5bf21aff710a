//! `lookout-bench-floor FILE PASSES`: parse + serialize every line of FILE (one watch event
//! per line, exactly the bytes lookout was served) with each JSON crate, one core, `PASSES`
//! timed passes each; prints `{"events":…,"bytes":…,"floors":{"serde_json":[events/s per
//! pass],…}}` on stdout.
//!
//! Each pass builds the crate's document tree of the whole watch event (`type` and `object`,
//! managedFields included) and serializes it again: the least any tree-building agent does
//! per event.

use std::hint::black_box;
use std::time::Instant;

use simd_json::prelude::Writable;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(passes)) = (args.next(), args.next()) else {
        eprintln!("usage: lookout-bench-floor FILE PASSES");
        std::process::exit(2);
    };
    let passes: usize = passes.parse().expect("PASSES is a number");
    let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();

    // Every crate must agree with serde_json on what the lines mean before it is timed.
    for l in lines.iter().take(100) {
        let a: serde_json::Value = serde_json::from_slice(l).expect("valid JSON");
        let b: serde_json::Value = serde_json::from_slice(
            &sonic_rs::to_vec(
                &sonic_rs::from_slice::<sonic_rs::Value>(l).expect("sonic-rs parses"),
            )
            .unwrap(),
        )
        .unwrap();
        let mut buf = l.to_vec();
        let c: serde_json::Value = serde_json::from_str(
            &simd_json::to_borrowed_value(&mut buf)
                .expect("simd-json parses")
                .encode(),
        )
        .unwrap();
        assert!(a == b && a == c, "the crates disagree on a line");
    }

    let mut floors = serde_json::Map::new();
    let mut run = |name: &str, f: &mut dyn FnMut(&[u8]) -> usize| {
        let rates: Vec<f64> = (0..passes)
            .map(|_| {
                let t = Instant::now();
                let mut out = 0usize;
                for l in &lines {
                    out += f(l);
                }
                black_box(out);
                lines.len() as f64 / t.elapsed().as_secs_f64()
            })
            .collect();
        floors.insert(name.to_string(), rates.into());
    };
    run("serde_json", &mut |l| {
        let v: serde_json::Value = serde_json::from_slice(l).expect("json");
        serde_json::to_vec(&v).expect("json").len()
    });
    run("sonic_rs", &mut |l| {
        let v: sonic_rs::Value = sonic_rs::from_slice(l).expect("json");
        sonic_rs::to_vec(&v).expect("json").len()
    });
    let mut buf = Vec::new();
    let mut out = Vec::new();
    run("simd_json", &mut |l| {
        // simd-json parses in place: copying the line in is part of its cost.
        buf.clear();
        buf.extend_from_slice(l);
        let v = simd_json::to_borrowed_value(&mut buf).expect("json");
        out.clear();
        v.write(&mut out).expect("write");
        out.len()
    });
    let report = serde_json::json!({"events": lines.len(), "bytes": bytes, "floors": floors});
    println!("{report}");
}
