//! Figures (every one measured in several runs: median, min, max), the human table,
//! `report.json`, and the BENCHMARKS.md tables generated from `report.json`.

use serde_json::{Value, json};

/// What a figure must reach (judged on its median).
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// At least this value.
    AtLeast(f64),
    /// At most this value.
    AtMost(f64),
    /// Between these values (inclusive).
    Between(f64, f64),
}

impl Target {
    fn met(self, v: f64) -> bool {
        match self {
            Target::AtLeast(t) => v >= t,
            Target::AtMost(t) => v <= t,
            Target::Between(lo, hi) => (lo..=hi).contains(&v),
        }
    }

    fn text(self) -> String {
        match self {
            Target::AtLeast(t) => format!(">= {}", fmt(t)),
            Target::AtMost(t) => format!("<= {}", fmt(t)),
            Target::Between(lo, hi) => format!("{} .. {}", fmt(lo), fmt(hi)),
        }
    }
}

/// One measured figure: a value per run.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Which section measured it.
    pub section: &'static str,
    /// What was measured.
    pub name: String,
    /// One value per run, in run order.
    pub runs: Vec<f64>,
    /// Its unit.
    pub unit: &'static str,
    /// The target, when this figure has one.
    pub target: Option<Target>,
    /// Where the target comes from (`issue 16`), or another remark.
    pub note: Option<String>,
}

impl Figure {
    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.runs.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median of the runs (the figure's value).
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    fn result(&self) -> Option<bool> {
        self.target.map(|t| t.met(self.median()))
    }
}

/// Every figure of one harness run, plus context.
#[derive(Debug, Default)]
pub struct Report {
    /// In the order measured.
    pub figures: Vec<Figure>,
    /// Sections not run, and why.
    pub skipped: Vec<(String, String)>,
}

impl Report {
    /// Adds a figure without a target.
    pub fn info(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        runs: Vec<f64>,
        unit: &'static str,
    ) {
        self.push(section, name, runs, unit, None, None);
    }

    /// Adds a figure with a target.
    pub fn target(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        runs: Vec<f64>,
        unit: &'static str,
        target: Target,
    ) {
        self.push(
            section,
            name,
            runs,
            unit,
            Some(target),
            Some("issue 16".into()),
        );
    }

    fn push(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        runs: Vec<f64>,
        unit: &'static str,
        target: Option<Target>,
        note: Option<String>,
    ) {
        let f = Figure {
            section,
            name: name.into(),
            runs,
            unit,
            target,
            note,
        };
        eprintln!("  {}", line(&f));
        self.figures.push(f);
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<11} {:<58} {:>11} {:>11} {:>11} {:<9} {:<14} {}\n",
            "section", "figure", "median", "min", "max", "unit", "target", "result"
        ));
        out.push_str(&format!("{}\n", "-".repeat(140)));
        for f in &self.figures {
            out.push_str(&line(f));
            out.push('\n');
        }
        for (s, why) in &self.skipped {
            out.push_str(&format!("{s:<11} not run: {why}\n"));
        }
        out
    }

    /// `report.json`.
    pub fn json(&self, context: Value) -> Value {
        json!({
            "context": context,
            "figures": self.figures.iter().map(|f| json!({
                "section": f.section,
                "name": f.name,
                "unit": f.unit,
                "runs": f.runs,
                "median": f.median(),
                "min": f.min(),
                "max": f.max(),
                "target": f.target.map(|t| t.text()),
                "pass": f.result(),
                "note": f.note,
            })).collect::<Vec<_>>(),
            "skipped": self.skipped.iter().map(|(s, w)| json!({"section": s, "why": w})).collect::<Vec<_>>(),
        })
    }
}

fn line(f: &Figure) -> String {
    let (target, result) = match f.target {
        Some(t) => (t.text(), if t.met(f.median()) { "PASS" } else { "MISS" }),
        None => (String::new(), ""),
    };
    format!(
        "{:<11} {:<58} {:>11} {:>11} {:>11} {:<9} {:<14} {}",
        f.section,
        f.name,
        fmt(f.median()),
        fmt(f.min()),
        fmt(f.max()),
        f.unit,
        target,
        result
    )
}

/// A number as the tables show it: 3 significant-ish digits, thousands without decimals.
pub fn fmt(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 1000.0 {
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Where the generated part of BENCHMARKS.md starts and ends; prose outside is kept.
pub const BEGIN: &str = "<!-- lookout-bench: generated from report.json, do not edit by hand -->";
/// See [`BEGIN`].
pub const END: &str = "<!-- lookout-bench: end of generated part -->";

/// The Markdown tables of a `report.json`.
pub fn markdown(report: &Value) -> String {
    let ctx = &report["context"];
    let m = &ctx["machine"];
    let mut out = String::new();
    out.push_str(&format!(
        "Run of `{}` (commit `{}`{}), {} s, on {} × {}, {} GiB, Linux {}. Load average before: {}; after: {}. \
         Every figure is the median of {} runs (min and max beside it); sections ran in this order: {}.\n\n",
        ctx["command"].as_str().unwrap_or("make bench"),
        ctx["commit"].as_str().unwrap_or("?"),
        if ctx["dirty"] == true { ", uncommitted changes" } else { "" },
        ctx["seconds"],
        m["cpus"],
        m["cpu"].as_str().unwrap_or("?"),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        ctx["loadavg_before"].as_str().unwrap_or("?"),
        ctx["loadavg_after"].as_str().unwrap_or("?"),
        ctx["params"]["runs"],
        ctx["order"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" → "))
            .unwrap_or_default(),
    ));
    let figures = report["figures"].as_array().cloned().unwrap_or_default();
    let mut sections: Vec<&str> = Vec::new();
    for f in &figures {
        let s = f["section"].as_str().unwrap_or("");
        if !sections.contains(&s) {
            sections.push(s);
        }
    }
    for s in sections {
        out.push_str(&format!("### {s}\n\n| figure | median | min | max | unit | target | |\n|---|---:|---:|---:|---|---|---|\n"));
        for f in figures.iter().filter(|f| f["section"] == s) {
            let n = |k: &str| f[k].as_f64().map(fmt).unwrap_or_else(|| "n/a".into());
            let pass = match f["pass"].as_bool() {
                Some(true) => "PASS",
                Some(false) => "**MISS**",
                None => "",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                f["name"].as_str().unwrap_or(""),
                n("median"),
                n("min"),
                n("max"),
                f["unit"].as_str().unwrap_or(""),
                f["target"].as_str().unwrap_or(""),
                pass
            ));
        }
        out.push('\n');
    }
    if let Some(skipped) = report["skipped"].as_array().filter(|s| !s.is_empty()) {
        out.push_str("Not run:\n\n");
        for s in skipped {
            out.push_str(&format!(
                "- **{}**: {}\n",
                s["section"].as_str().unwrap_or(""),
                s["why"].as_str().unwrap_or("")
            ));
        }
        out.push('\n');
    }
    out
}

/// How far a full run's ratios moved from the previous full run's (`prev`): one row per
/// figure with unit `ratio` in both, its median in each and the change, and a verdict on
/// every ratio agreeing within `tolerance` (0.15: 15 %).
pub fn comparison(prev: &Value, cur: &Value, tolerance: f64) -> String {
    let figures = |r: &Value| r["figures"].as_array().cloned().unwrap_or_default();
    let before = figures(prev);
    let mut rows = String::new();
    let (mut agree, mut total) = (0, 0);
    for f in figures(cur).iter().filter(|f| f["unit"] == "ratio") {
        let Some(b) = before
            .iter()
            .find(|b| b["section"] == f["section"] && b["name"] == f["name"])
        else {
            continue;
        };
        let (Some(old), Some(new)) = (b["median"].as_f64(), f["median"].as_f64()) else {
            continue;
        };
        // Relative to the larger of the two, so the figure is symmetric in the two runs.
        let change = if old == new {
            0.0
        } else {
            (new - old) / old.abs().max(new.abs())
        };
        let ok = change.abs() <= tolerance;
        total += 1;
        agree += usize::from(ok);
        rows.push_str(&format!(
            "| {} | {} | {} | {} | {:+.1} % | {} |\n",
            f["section"].as_str().unwrap_or(""),
            f["name"].as_str().unwrap_or(""),
            fmt(old),
            fmt(new),
            change * 100.0,
            if ok { "yes" } else { "**no**" }
        ));
    }
    let ctx = |r: &Value, k: &str| r["context"][k].as_str().unwrap_or("?").to_string();
    format!(
        "### Against the previous run\n\nPrevious run: commit `{}`, load average before {} / after {}. \
         **{agree} of {total} ratios agree within {:.0} %** (change relative to the larger of \
         the two medians).\n\n| section | ratio | previous | this run | change | within {:.0} % |\n\
         |---|---|---:|---:|---:|---|\n{rows}\n",
        ctx(prev, "commit"),
        ctx(prev, "loadavg_before"),
        ctx(prev, "loadavg_after"),
        tolerance * 100.0,
        tolerance * 100.0,
    )
}

/// `doc` with its generated part replaced by `generated` (appended when there is none).
pub fn splice(doc: &str, generated: &str) -> String {
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => format!(
            "{}{BEGIN}\n\n{generated}{END}{}",
            &doc[..b],
            &doc[e + END.len()..]
        ),
        _ => format!("{doc}\n{BEGIN}\n\n{generated}{END}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_comparison_counts_ratios_that_moved_more_than_the_tolerance() {
        let run = |a: Vec<f64>, b: Vec<f64>| {
            let mut r = Report::default();
            r.target("s", "a", a, "ratio", Target::AtLeast(0.6));
            r.info("s", "b", b, "ratio");
            r.info("s", "rate", vec![100.0], "events/s");
            r.json(json!({"commit": "c1"}))
        };
        let text = comparison(&run(vec![1.0], vec![2.0]), &run(vec![1.1], vec![1.0]), 0.15);
        assert!(
            text.contains("**1 of 2 ratios agree within 15 %**"),
            "{text}"
        );
        assert!(
            text.contains("| s | a | 1.00 | 1.10 | +9.1 % | yes |"),
            "{text}"
        );
        assert!(
            text.contains("| s | b | 2.00 | 1.00 | -50.0 % | **no** |"),
            "{text}"
        );
        assert!(!text.contains("rate"), "only ratios are compared: {text}");
    }

    #[test]
    fn the_median_of_runs_and_the_target_is_judged_on_it() {
        let mut r = Report::default();
        r.target(
            "s",
            "ratio",
            vec![0.5, 0.9, 0.7],
            "ratio",
            Target::AtLeast(0.6),
        );
        let j = r.json(json!({}));
        let f = &j["figures"][0];
        assert_eq!(
            (f["median"].as_f64(), f["min"].as_f64(), f["max"].as_f64()),
            (Some(0.7), Some(0.5), Some(0.9))
        );
        assert_eq!(f["pass"], true);
    }

    #[test]
    fn splicing_keeps_the_prose_around_the_generated_part() {
        let doc = format!("intro\n{BEGIN}\nold\n{END}\noutro\n");
        let out = splice(&doc, "new\n");
        assert_eq!(out, format!("intro\n{BEGIN}\n\nnew\n{END}\noutro\n"));
        assert_eq!(splice(&out, "new\n"), out, "idempotent");
    }
}
