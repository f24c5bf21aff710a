//! Figures, the human table and `report.json`.

use serde_json::{Value, json};

/// What a figure must reach.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// At least this value.
    AtLeast(f64),
    /// At most this value.
    AtMost(f64),
}

impl Target {
    fn met(self, v: f64) -> bool {
        match self {
            Target::AtLeast(t) => v >= t,
            Target::AtMost(t) => v <= t,
        }
    }

    fn text(self) -> String {
        match self {
            Target::AtLeast(t) => format!(">= {}", fmt(t)),
            Target::AtMost(t) => format!("<= {}", fmt(t)),
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Which part of the benchmark (`floor`, `throughput`, ...).
    pub section: &'static str,
    /// What was measured.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// The target, when this figure has one.
    pub target: Option<Target>,
}

/// Every figure of one run plus context.
#[derive(Debug, Default)]
pub struct Report {
    /// In the order measured.
    pub figures: Vec<Figure>,
    /// Sections not run, and why.
    pub skipped: Vec<(String, String)>,
}

impl Report {
    /// Adds a figure without target.
    pub fn info(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) {
        self.push(section, name, value, unit, None);
    }

    /// Adds a figure with a target.
    pub fn target(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: Target,
    ) {
        self.push(section, name, value, unit, Some(target));
    }

    fn push(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: Option<Target>,
    ) {
        let f = Figure {
            section,
            name: name.into(),
            value,
            unit,
            target,
        };
        eprintln!("  {}", line(&f));
        self.figures.push(f);
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<12} {:<58} {:>14} {:<9} {:<12} {}\n",
            "section", "figure", "value", "unit", "target", "result"
        ));
        out.push_str(&format!("{}\n", "-".repeat(116)));
        for f in &self.figures {
            out.push_str(&line(f));
            out.push('\n');
        }
        for (s, why) in &self.skipped {
            out.push_str(&format!("{s:<12} skipped: {why}\n"));
        }
        out
    }

    /// `report.json`.
    pub fn json(&self, machine: Value, params: Value) -> Value {
        json!({
            "machine": machine,
            "params": params,
            "figures": self.figures.iter().map(|f| json!({
                "section": f.section,
                "name": f.name,
                "value": f.value,
                "unit": f.unit,
                "target": f.target.map(|t| t.text()),
                "pass": f.target.map(|t| t.met(f.value)),
            })).collect::<Vec<_>>(),
            "skipped": self.skipped.iter().map(|(s, w)| json!({"section": s, "why": w})).collect::<Vec<_>>(),
        })
    }
}

fn line(f: &Figure) -> String {
    let (target, result) = match f.target {
        Some(t) => (t.text(), if t.met(f.value) { "PASS" } else { "MISS" }),
        None => (String::new(), ""),
    };
    format!(
        "{:<12} {:<58} {:>14} {:<9} {:<12} {}",
        f.section,
        f.name,
        fmt(f.value),
        f.unit,
        target,
        result
    )
}

fn fmt(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{:.0}", v)
    } else if v.abs() >= 10.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.3}", v)
    }
}
