//! Reading a child's stdout as it arrives: one timestamp per interesting line.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines seen so far: `(key, arrival)` for each line the classifier picked.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<(u64, Instant)>>>);

impl Seen {
    /// How many.
    pub fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    /// A copy.
    pub fn snapshot(&self) -> Vec<(u64, Instant)> {
        self.0.lock().expect("lock").clone()
    }

    /// Waits until at least `n` were seen.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Waits until the count stops growing for `quiet` (after at least one).
    pub fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> usize {
        let end = Instant::now() + timeout;
        let mut last = (self.len(), Instant::now());
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
            let n = self.len();
            if n != last.0 {
                last = (n, Instant::now());
            } else if n > 0 && last.1.elapsed() >= quiet {
                break;
            }
        }
        self.len()
    }
}

/// Reads `r` on a thread; `pick` turns a line into a key, or `None` to skip it.
pub fn follow(
    r: impl Read + Send + 'static,
    pick: impl Fn(&[u8]) -> Option<u64> + Send + 'static,
) -> Seen {
    let seen = Seen::default();
    let out = seen.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 20, r);
        let mut line = Vec::with_capacity(64 * 1024);
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if let Some(k) = pick(&line) {
                        let now = Instant::now();
                        out.0.lock().expect("lock").push((k, now));
                    }
                }
            }
        }
    });
    seen
}

/// The top-level `resourceVersion` of an envelope line (it precedes `object`).
pub fn envelope_rv(line: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"resourceVersion\":\"";
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &line[at..];
    let end = rest.iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Percentile (0..=100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
