//! The human `text` format: one terminal line per change.
//!
//! `12:00:01.123 update Deployment shop/web: spec.replicas 3 → 5`
//!
//! Paths are written `a.b[0].c`; changes below one parent are grouped
//! (`status.containerStatuses[0].{restartCount 3 → 4, state.waiting.reason …}`); bookkeeping
//! that changes with every write (`resourceVersion`, `generation`) is left out; the line is
//! cut with `…` at the terminal's width. Colour only on a terminal, and never with `NO_COLOR`.

use std::io::IsTerminal;

use json_patch::PatchOperation;
use serde_json::Value;

use crate::event::diff::op_path;
use crate::event::{Envelope, Op};

/// Values longer than this are shortened.
const MAX_VALUE: usize = 40;
/// Line width when the terminal's is unknown (not a terminal, no `COLUMNS`).
const DEFAULT_WIDTH: usize = 120;
/// Changes that come with every write and say nothing to a person.
const NOISE: &[&str] = &["/metadata/resourceVersion", "/metadata/generation"];

/// How lines are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextStyle {
    /// Visible characters per line, at least 20.
    pub width: usize,
    /// ANSI colours.
    pub colour: bool,
}

impl Default for TextStyle {
    fn default() -> Self {
        Self {
            width: DEFAULT_WIDTH,
            colour: false,
        }
    }
}

impl TextStyle {
    /// For standard output: the terminal's width (`COLUMNS` wins, else asked of the
    /// terminal, else 120) and colour when it is a terminal and `NO_COLOR` is not set.
    pub fn for_stdout() -> Self {
        let terminal = std::io::stdout().is_terminal();
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse().ok())
            .or_else(|| terminal.then(terminal_width).flatten())
            .unwrap_or(DEFAULT_WIDTH);
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            width: width.max(20),
            colour: terminal && !no_color,
        }
    }
}

/// The width of the terminal on standard output, if it says.
fn terminal_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we own; fd 1 is only read.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// Colour of a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paint {
    Plain,
    Dim,
    Bold,
    Green,
    Yellow,
    Red,
    Cyan,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Paint::Plain => "",
            Paint::Dim => "\x1b[2m",
            Paint::Bold => "\x1b[1m",
            Paint::Green => "\x1b[32m",
            Paint::Yellow => "\x1b[33m",
            Paint::Red => "\x1b[31m",
            Paint::Cyan => "\x1b[36m",
        }
    }
}

/// A line being built: text spans with their colour.
#[derive(Default)]
struct Line(Vec<(String, Paint)>);

impl Line {
    fn push(&mut self, text: impl Into<String>, paint: Paint) {
        self.0.push((text.into(), paint));
    }

    /// Cut to `width` visible characters (the last one `…` when cut), then render.
    fn render(self, style: TextStyle) -> String {
        let mut left = style.width;
        let total: usize = self.0.iter().map(|(t, _)| t.chars().count()).sum();
        let cut = total > style.width;
        if cut {
            left -= 1;
        }
        let mut out = String::new();
        for (text, paint) in self.0 {
            if left == 0 {
                break;
            }
            let n = text.chars().count();
            let shown: String = if n > left {
                text.chars().take(left).collect()
            } else {
                text
            };
            left -= shown.chars().count();
            if style.colour && paint != Paint::Plain {
                out.push_str(paint.code());
                out.push_str(&shown);
                out.push_str("\x1b[0m");
            } else {
                out.push_str(&shown);
            }
        }
        if cut {
            out.push('…');
        }
        out
    }
}

/// The line for `e` without colour at the default width.
pub fn render_text(e: &Envelope) -> String {
    render_line(e, TextStyle::default())
}

/// The line for `e`.
pub fn render_line(e: &Envelope, style: TextStyle) -> String {
    let mut line = Line::default();
    let time = e.time_rfc3339();
    // `2026-11-27T06:05:50.168Z` → `06:05:50.168`: the date is the same all screen long.
    line.push(time.get(11..23).unwrap_or(&time).to_string(), Paint::Dim);
    line.push(" ", Paint::Plain);
    let (op, paint) = match e.op {
        Op::Add => ("add   ", Paint::Green),
        Op::Update => ("update", Paint::Yellow),
        Op::Delete => ("delete", Paint::Red),
    };
    line.push(op, paint);
    line.push(" ", Paint::Plain);
    line.push(e.kind.to_string(), Paint::Cyan);
    line.push(" ", Paint::Plain);
    line.push(e.display_name(), Paint::Bold);
    if e.initial_list {
        line.push(" (initial list)", Paint::Dim);
    } else if let Some(mark) = e.snapshot {
        line.push(format!(" (snapshot: {})", mark.as_str()), Paint::Dim);
    }
    if let Some(by) = e.changed_by.as_deref().filter(|b| !b.is_empty()) {
        let names: Vec<&str> = by.iter().map(|w| &*w.manager).collect();
        line.push(format!(" by {}", names.join(", ")), Paint::Dim);
    }
    if e.final_state_unknown {
        line.push(" (final state unknown)", Paint::Dim);
    }
    if e.op == Op::Update
        && let Some(patch) = &e.patch
    {
        let changes: Vec<(Vec<String>, Change)> = patch
            .0
            .iter()
            .filter(|op| !NOISE.contains(&op_path(op).as_str()))
            .flat_map(|op| changes_of(op, e.old.as_deref().map(|o| &**o)))
            .collect();
        if !changes.is_empty() {
            line.push(":", Paint::Plain);
        }
        for (i, group) in group(&changes).into_iter().enumerate() {
            line.push(if i == 0 { " " } else { "; " }, Paint::Plain);
            let Group { parent, items } = group;
            let grouped = items.len() > 1;
            if grouped {
                line.push(format!("{}.{{", dotted(parent)), Paint::Plain);
            }
            for (j, (rest, change)) in items.iter().enumerate() {
                if j > 0 {
                    line.push(", ", Paint::Plain);
                }
                let path = if grouped {
                    dotted(rest)
                } else {
                    dotted(&[parent, rest].concat())
                };
                line.push(path, Paint::Plain);
                change.push_to(&mut line);
            }
            if grouped {
                line.push("}", Paint::Plain);
            }
        }
    }
    line.render(style)
}

/// What happened at one path.
enum Change {
    Added(String),
    Removed(String),
    Replaced(String, String),
    Moved,
}

impl Change {
    fn push_to(&self, line: &mut Line) {
        match self {
            Change::Added(v) => {
                line.push(" + ", Paint::Dim);
                line.push(v.clone(), Paint::Green);
            }
            Change::Removed(v) => {
                line.push(" ", Paint::Plain);
                line.push(v.clone(), Paint::Red);
                line.push(" → removed", Paint::Dim);
            }
            Change::Replaced(old, new) => {
                line.push(" ", Paint::Plain);
                line.push(old.clone(), Paint::Red);
                line.push(" → ", Paint::Dim);
                line.push(new.clone(), Paint::Green);
            }
            Change::Moved => line.push(" moved", Paint::Dim),
        }
    }
}

/// The changes one patch operation makes, by path. An added map shows as its leaves
/// (`state.waiting.reason + CrashLoopBackOff`), a removed map as `{…}`.
fn changes_of(op: &PatchOperation, old: Option<&Value>) -> Vec<(Vec<String>, Change)> {
    let path = segments(&op_path(op));
    let before = || {
        old.and_then(|o| o.pointer(&op_path(op)))
            .map_or("?".into(), |v| match v {
                Value::Object(m) if !m.is_empty() => "{…}".into(),
                v => short(v),
            })
    };
    match op {
        PatchOperation::Add(a) => {
            let mut out = Vec::new();
            leaves(&path, &a.value, &mut out);
            out
        }
        PatchOperation::Remove(_) => vec![(path, Change::Removed(before()))],
        PatchOperation::Replace(r) => vec![(path, Change::Replaced(before(), short(&r.value)))],
        _ => vec![(path, Change::Moved)],
    }
}

/// `value` added at `path`, as one addition per leaf of a (non-empty) map.
fn leaves(path: &[String], value: &Value, out: &mut Vec<(Vec<String>, Change)>) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let mut p = path.to_vec();
                p.push(k.clone());
                leaves(&p, v, out);
            }
        }
        v => out.push((path.to_vec(), Change::Added(short(v)))),
    }
}

/// Changes of consecutive paths under one parent.
struct Group<'a> {
    parent: &'a [String],
    items: Vec<(&'a [String], &'a Change)>,
}

/// Consecutive changes below one parent form a group. A group starts with the parent of
/// its first path; a lone first change whose successor shares two or more leading segments
/// with it moves the parent up to what they share.
fn group(changes: &[(Vec<String>, Change)]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group> = Vec::new();
    for (path, change) in changes {
        if let Some(g) = groups.last_mut() {
            if path.len() > g.parent.len() && path.starts_with(g.parent) {
                g.items.push((&path[g.parent.len()..], change));
                continue;
            }
            if g.items.len() == 1 {
                let first: Vec<String> = [g.parent, g.items[0].0].concat();
                let common = common_prefix(&first, path);
                if common >= 2 && common < path.len() && common < first.len() {
                    let (_, first_change) = g.items[0];
                    let full = first_path(changes, first_change);
                    g.parent = &path[..common];
                    g.items = vec![(&full[common..], first_change), (&path[common..], change)];
                    continue;
                }
            }
        }
        let parent = path.len().saturating_sub(1);
        groups.push(Group {
            parent: &path[..parent],
            items: vec![(&path[parent..], change)],
        });
    }
    groups
}

/// The path of `change` in `changes` (by identity).
fn first_path<'a>(changes: &'a [(Vec<String>, Change)], change: &Change) -> &'a [String] {
    changes
        .iter()
        .find(|(_, c)| std::ptr::eq(c, change))
        .map(|(p, _)| p.as_slice())
        .unwrap_or(&[])
}

fn common_prefix(a: &[String], b: &[String]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// `/spec/containers/0/image` → `["spec", "containers", "0", "image"]` (RFC 6901 unescaped).
fn segments(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// `["spec", "containers", "0", "image"]` → `spec.containers[0].image`.
fn dotted(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{s}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        }
    }
    out
}

/// A value for people: strings without quotes when plain, redaction hashes cut to their
/// first characters (enough to see that they changed), anything long shortened.
fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) if s.starts_with("hmac-sha256:") => {
            let hex: String = s["hmac-sha256:".len()..].chars().take(8).collect();
            return format!("hmac-sha256:{hex}…");
        }
        Value::String(s) if !s.is_empty() && !s.contains([' ', ',', ';', '{', '}']) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > MAX_VALUE {
        let cut: String = s.chars().take(MAX_VALUE - 1).collect();
        format!("{cut}…")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::event::{EnvelopeBuilder, diff};

    fn update(old: Value, new: Value) -> Envelope {
        let patch = diff::diff(&old, &new);
        EnvelopeBuilder {
            cluster: "c".into(),
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            plural: "deployments".into(),
            source: "apps/v1/Deployment".into(),
            include_old: true,
        }
        .build(
            Op::Update,
            Arc::new(new),
            Some(Arc::new(old)),
            Some(patch),
            Instant::now(),
        )
    }

    fn meta(rv: &str, generation: u64) -> Value {
        json!({"name": "web", "namespace": "shop", "uid": "u", "resourceVersion": rv,
            "generation": generation})
    }

    #[test]
    fn a_line_names_the_writers_and_the_snapshot_a_read_belongs_to() {
        use crate::event::SnapshotMark;
        use crate::event::changed_by::Managers;
        let b = EnvelopeBuilder::for_test("v1", "ConfigMap");
        let obj = Arc::new(json!({"metadata": {"name": "a", "namespace": "n",
            "managedFields": [{"manager": "kubectl-edit", "operation": "Update"}]}}));
        let mut e = b.build(Op::Add, obj.clone(), None, None, Instant::now());
        e.changed_by = Some(Managers::of(&obj).changed_since(None));
        let line = render_text(&e);
        assert!(line.ends_with("ConfigMap n/a by kubectl-edit"), "{line}");
        let mut read = b.build(Op::Add, obj, None, None, Instant::now());
        read.snapshot = Some(SnapshotMark::Last);
        let line = render_text(&read);
        assert!(line.ends_with("ConfigMap n/a (snapshot: last)"), "{line}");
    }

    #[test]
    fn an_update_is_one_line_without_bookkeeping_changes() {
        let e = update(
            json!({"metadata": meta("1", 1), "spec": {"replicas": 3}}),
            json!({"metadata": meta("2", 2), "spec": {"replicas": 5}}),
        );
        let line = render_text(&e);
        assert!(
            line.ends_with(" update Deployment shop/web: spec.replicas 3 → 5"),
            "{line}"
        );
        assert!(
            !line.contains("resourceVersion") && !line.contains("generation"),
            "{line}"
        );
    }

    #[test]
    fn changes_below_one_parent_are_grouped() {
        let e = update(
            json!({"metadata": meta("1", 1), "status": {"containerStatuses": [
                {"restartCount": 1, "ready": true}]}}),
            json!({"metadata": meta("2", 1), "status": {"containerStatuses": [
                {"restartCount": 2, "ready": false}]}}),
        );
        let line = render_text(&e);
        assert!(
            line.contains("status.containerStatuses[0].{restartCount 1 → 2, ready true → false}")
                || line.contains(
                    "status.containerStatuses[0].{ready true → false, restartCount 1 → 2}"
                ),
            "{line}"
        );
    }

    #[test]
    fn long_lines_are_cut_at_the_width_with_an_ellipsis() {
        let many: serde_json::Map<String, Value> =
            (0..40).map(|i| (format!("key{i}"), json!(i))).collect();
        let e = update(
            json!({"metadata": meta("1", 1), "data": {}}),
            json!({"metadata": meta("2", 1), "data": many}),
        );
        let style = TextStyle {
            width: 80,
            colour: false,
        };
        let line = render_line(&e, style);
        assert_eq!(line.chars().count(), 80, "{line}");
        assert!(line.ends_with('…'), "{line}");
    }

    #[test]
    fn colour_marks_the_op_and_the_values_and_keeps_the_width() {
        let e = update(
            json!({"metadata": meta("1", 1), "spec": {"replicas": 3}}),
            json!({"metadata": meta("2", 1), "spec": {"replicas": 5}}),
        );
        let plain = render_line(
            &e,
            TextStyle {
                width: 60,
                colour: false,
            },
        );
        let coloured = render_line(
            &e,
            TextStyle {
                width: 60,
                colour: true,
            },
        );
        assert!(coloured.contains("\x1b[33mupdate\x1b[0m"), "{coloured:?}");
        let stripped = coloured
            .split('\x1b')
            .enumerate()
            .map(|(i, part)| {
                if i == 0 {
                    part
                } else {
                    part.split_once('m').map_or("", |(_, rest)| rest)
                }
            })
            .collect::<String>();
        assert_eq!(stripped, plain);
    }

    #[test]
    fn redaction_hashes_are_shortened_so_a_rotation_fits() {
        let h = |c: char| Value::String(format!("hmac-sha256:{}", c.to_string().repeat(64)));
        assert_eq!(short(&h('a')), "hmac-sha256:aaaaaaaa…");
        assert_ne!(short(&h('a')), short(&h('b')));
    }
}
