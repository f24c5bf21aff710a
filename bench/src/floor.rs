//! The floors: what a JSON library alone does with the exact watch bytes lookout was served,
//! on one core. They run in `lookout-bench-floor` (`bench/floor/`), a crate outside the
//! workspace, so serde_json is built with its default features as most users get it (the
//! workspace unifies `preserve_order` into it, roughly half the speed), next to the fastest
//! JSON crates (sonic-rs, simd-json) as the physical limit.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Events per second of each crate, one value per pass.
#[derive(Debug, Clone)]
pub struct Floors {
    /// serde_json, default features.
    pub serde_json: Vec<f64>,
    /// sonic-rs.
    pub sonic_rs: Vec<f64>,
    /// simd-json.
    pub simd_json: Vec<f64>,
    /// Events measured.
    pub events: usize,
    /// Their bytes.
    pub bytes: usize,
}

/// Writes `lines` to `dir/floor-input.jsonl` and runs the floor binary on them.
///
/// # Errors
/// The binary is missing (`make bench` builds it) or failed.
pub fn measure(bin: &Path, dir: &Path, lines: &[Vec<u8>], passes: usize) -> Result<Floors, String> {
    let input = dir.join("floor-input.jsonl");
    let mut data = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        data.extend_from_slice(l);
        data.push(b'\n');
    }
    std::fs::write(&input, data).map_err(|e| format!("{}: {e}", input.display()))?;
    let out = Command::new(bin)
        .arg(&input)
        .arg(passes.to_string())
        .output()
        .map_err(|e| {
            format!(
                "{} ({e}): `make bench` builds it from bench/floor",
                bin.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let rates = |k: &str| -> Vec<f64> {
        v["floors"][k]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    Ok(Floors {
        serde_json: rates("serde_json"),
        sonic_rs: rates("sonic_rs"),
        simd_json: rates("simd_json"),
        events: v["events"].as_u64().unwrap_or(0) as usize,
        bytes: v["bytes"].as_u64().unwrap_or(0) as usize,
    })
}
