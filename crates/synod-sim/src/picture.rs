//! Space-time diagrams of a run: one lane per node, time running to the
//! right, messages as arrows from send to arrival (a lost one ends in a
//! cross), crashes and restarts on the lanes, partitions as shaded bands,
//! and what each node says of itself written where it changes. [`svg`] is a
//! static picture; [`html`] the same picture in one self-contained page with
//! a time slider and step buttons that replay the run.

use crate::timeline::{Mark, Timeline};
use std::fmt::Write as _;
use synod_protocols::{Instant, NodeId, MS};

const LEFT: f64 = 64.0;
const RIGHT: f64 = 40.0;
const TOP: f64 = 70.0;
const LANE: f64 = 86.0;
/// Height of one line of notes under the lanes.
const NOTE: f64 = 17.0;
/// Widest and narrowest picture, in pixels, before zooming.
const MAX_WIDTH: f64 = 2400.0;
const MIN_WIDTH: f64 = 720.0;

/// Colours for message kinds and decided values, picked by a stable hash.
const PALETTE: [&str; 8] = [
    "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
];
/// Colours of decided values: red and blue first, as the seeds' stories
/// paint them.
const VALUES: [&str; 6] = [
    "#d62728", "#1f4fd6", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn hash(s: &str) -> usize {
    s.bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
        .try_into()
        .unwrap_or(0)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Where things go on the page.
struct Layout {
    end: Instant,
    px_per_us: f64,
    nodes: usize,
    notes: usize,
}

impl Layout {
    fn new(t: &Timeline) -> Layout {
        let end = t.end.max(MS);
        let width = (end as f64 / MS as f64 * 2.0).clamp(MIN_WIDTH, MAX_WIDTH);
        Layout {
            end,
            px_per_us: (width - LEFT - RIGHT) / end as f64,
            nodes: t.nodes,
            notes: t.notes.len(),
        }
    }

    fn x(&self, at: Instant) -> f64 {
        LEFT + at.min(self.end) as f64 * self.px_per_us
    }

    fn y(&self, node: NodeId) -> f64 {
        TOP + 30.0 + node as f64 * LANE
    }

    fn width(&self) -> f64 {
        self.x(self.end) + RIGHT
    }

    /// Where the lanes end and the notes begin.
    fn lanes_bottom(&self) -> f64 {
        self.y(self.nodes as NodeId) + 10.0
    }

    fn height(&self) -> f64 {
        match self.notes {
            0 => self.lanes_bottom(),
            n => self.lanes_bottom() + NOTE * n as f64 + 12.0,
        }
    }
}

/// A round step for the time axis: about ten ticks across.
fn tick_step(end: Instant) -> Instant {
    let target = end / 10;
    [
        1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000,
    ]
    .iter()
    .map(|ms| ms * MS)
    .find(|s| *s >= target)
    .unwrap_or(60_000 * MS)
}

/// The value a node's description says it decided, if any.
fn decided(text: &str) -> Option<&str> {
    let rest = &text[text.find("decided ")? + "decided ".len()..];
    rest.split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .next()
        .filter(|v| !v.is_empty())
}

fn value_colour(v: &str) -> &'static str {
    match v {
        "red" => VALUES[0],
        "blue" => VALUES[1],
        _ => VALUES[hash(v) % VALUES.len()],
    }
}

/// The diagram of `t` as a standalone SVG document.
pub fn svg(t: &Timeline, title: &str) -> String {
    let l = Layout::new(t);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="sans-serif" font-size="11">"#,
        w = l.width(),
        h = l.height()
    );
    s.push_str(
        r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="context-stroke"/></marker></defs>
<rect width="100%" height="100%" fill="white"/>
"##,
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    axis(&mut s, &l);
    partitions(&mut s, &l, t);
    lanes(&mut s, &l, t);
    messages(&mut s, &l, t);
    states(&mut s, &l, t);
    notes(&mut s, &l, t);
    s.push_str("</svg>\n");
    s
}

fn notes(s: &mut String, l: &Layout, t: &Timeline) {
    for (i, note) in t.notes.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text class="note" x="{LEFT}" y="{:.1}" font-size="13" fill="#333">{}</text>"##,
            l.lanes_bottom() + NOTE * (i as f64 + 1.0),
            escape(note)
        );
    }
}

fn axis(s: &mut String, l: &Layout) {
    let step = tick_step(l.end);
    let y = TOP - 8.0;
    let mut at = 0;
    while at <= l.end {
        let x = l.x(at);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#888">{} ms</text>"##,
            l.lanes_bottom() - 10.0,
            y - 4.0,
            at / MS
        );
        at += step;
    }
}

fn partitions(s: &mut String, l: &Layout, t: &Timeline) {
    for m in &t.marks {
        let Mark::Partition {
            from,
            until,
            groups,
        } = m
        else {
            continue;
        };
        let (x0, x1) = (l.x(*from), l.x(until.unwrap_or(l.end)));
        let names: Vec<String> = groups
            .iter()
            .map(|g| {
                let ns: Vec<String> = g.iter().map(|n| format!("n{n}")).collect();
                format!("{{{}}}", ns.join(" "))
            })
            .collect();
        let _ = writeln!(
            s,
            r##"<g class="partition" data-t="{from}"><rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#f4c7c3" fill-opacity="0.35"/><text x="{:.1}" y="{:.1}" fill="#a33">split {}</text></g>"##,
            TOP + 4.0,
            (x1 - x0).max(1.0),
            l.lanes_bottom() - TOP - 14.0,
            x0 + 3.0,
            TOP + 16.0,
            escape(&names.join(" | "))
        );
    }
}

fn lanes(s: &mut String, l: &Layout, t: &Timeline) {
    for n in 0..t.nodes as NodeId {
        let y = l.y(n);
        let _ = writeln!(
            s,
            r##"<text x="8" y="{:.1}" font-size="13" font-weight="bold">n{n}</text><line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#333" stroke-width="1.5"/>"##,
            y + 4.0,
            l.x(l.end)
        );
        // Down from each crash until the restart that follows it.
        let mut down: Option<Instant> = None;
        for m in &t.marks {
            match m {
                Mark::Crash {
                    node,
                    at,
                    power_loss,
                } if *node == n => {
                    let x = l.x(*at);
                    let what = if *power_loss { "power loss" } else { "crash" };
                    let _ = writeln!(
                        s,
                        r##"<g class="crash" data-t="{at}"><path d="M{:.1},{:.1} l10,10 m0,-10 l-10,10" stroke="#c00" stroke-width="3"/><text x="{:.1}" y="{:.1}" fill="#c00">{what}</text></g>"##,
                        x - 5.0,
                        y - 5.0,
                        x + 8.0,
                        y + 18.0
                    );
                    down = Some(*at);
                }
                Mark::Restart { node, at } if *node == n => {
                    if let Some(from) = down.take() {
                        down_segment(s, l, y, from, *at);
                    }
                    let _ = writeln!(
                        s,
                        r##"<g class="restart" data-t="{at}"><circle cx="{:.1}" cy="{y:.1}" r="5" fill="#2a2"/><text x="{:.1}" y="{:.1}" fill="#2a2">restart</text></g>"##,
                        l.x(*at),
                        l.x(*at) + 8.0,
                        y + 18.0
                    );
                }
                _ => {}
            }
        }
        if let Some(from) = down {
            down_segment(s, l, y, from, l.end);
        }
    }
}

fn down_segment(s: &mut String, l: &Layout, y: f64, from: Instant, to: Instant) {
    let _ = writeln!(
        s,
        r##"<line data-t="{from}" x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#fff" stroke-width="4"/><line data-t="{from}" x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#c00" stroke-width="1.5" stroke-dasharray="4 4"/>"##,
        l.x(from),
        l.x(to),
        l.x(from),
        l.x(to)
    );
}

/// Messages that only say "still here" (Raft's heartbeats and their
/// answers): drawn faint, and hidden in the page until asked for, so the
/// messages that move the run stand out.
fn routine(label: &str) -> bool {
    label.starts_with("Heartbeat")
}

fn messages(s: &mut String, l: &Layout, t: &Timeline) {
    for m in &t.marks {
        let Mark::Message {
            from,
            to,
            sent,
            arrived,
            lost,
            label,
        } = m
        else {
            continue;
        };
        let colour = PALETTE[hash(label) % PALETTE.len()];
        let (class, opacity) = match routine(label) {
            true => ("routine", 0.15),
            false => ("msg", 0.7),
        };
        let (x0, y0) = (l.x(*sent), l.y(*from));
        let title = format!("{label} n{from} → n{to}");
        match (arrived, lost) {
            (Some(at), _) => {
                let _ = writeln!(
                    s,
                    r#"<line class="{class}" data-t="{sent}" x1="{x0:.1}" y1="{y0:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-opacity="{opacity}" marker-end="url(#arrow)"><title>{}</title></line>"#,
                    l.x(*at),
                    l.y(*to),
                    escape(&title)
                );
            }
            (None, lost_at) => {
                // A lost message goes part of the way and ends in a cross.
                let at = lost_at.unwrap_or(*sent);
                let x1 = l.x(at).max(x0 + 6.0);
                let y1 = y0 + (l.y(*to) - y0) * 0.45;
                let _ = writeln!(
                    s,
                    r##"<g class="lost {class}" data-t="{sent}"><line x1="{x0:.1}" y1="{y0:.1}" x2="{x1:.1}" y2="{y1:.1}" stroke="{colour}" stroke-opacity="{opacity}" stroke-dasharray="3 2"><title>{} (lost)</title></line><path d="M{:.1},{:.1} l8,8 m0,-8 l-8,8" stroke="#c00" stroke-opacity="{opacity}" stroke-width="2"/></g>"##,
                    escape(&title),
                    x1 - 4.0,
                    y1 - 4.0
                );
            }
        }
    }
}

/// Labels closer than this on one lane would overlap: the later ones are
/// drawn as dots that show their text on hover, except decisions.
const LABEL_GAP: f64 = 110.0;

fn states(s: &mut String, l: &Layout, t: &Timeline) {
    let mut last_label = vec![f64::NEG_INFINITY; t.nodes];
    for m in &t.marks {
        let Mark::State { node, at, text } = m else {
            continue;
        };
        if text.is_empty() {
            continue;
        }
        let (x, y) = (l.x(*at), l.y(*node) - 9.0);
        let (fill, weight) = match decided(text) {
            Some(v) => (value_colour(v), "bold"),
            None => ("#222", "normal"),
        };
        let last = &mut last_label[*node as usize];
        let labelled = x - *last >= LABEL_GAP || weight == "bold";
        let _ = write!(
            s,
            r##"<g class="state" data-t="{at}"><circle cx="{x:.1}" cy="{:.1}" r="2.5" fill="{fill}"><title>{}</title></circle>"##,
            l.y(*node),
            escape(text)
        );
        if labelled {
            *last = x;
            let _ = write!(
                s,
                r##"<text x="{x:.1}" y="{y:.1}" fill="{fill}" font-weight="{weight}" transform="rotate(-18 {x:.1} {y:.1})">{}</text>"##,
                escape(text)
            );
        }
        s.push_str("</g>\n");
    }
}

/// The diagram in one self-contained HTML page (no network fetches), with a
/// slider and step buttons that show the run up to a moment, and zoom.
pub fn html(t: &Timeline, title: &str) -> String {
    let end = t.end.max(MS);
    let picture = svg(t, title);
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 12px; }}
#controls {{ position: sticky; top: 0; background: #fff; padding: 6px 0; display: flex; gap: 8px; align-items: center; }}
#t {{ flex: 1; }}
#picture {{ overflow: auto; border: 1px solid #ddd; }}
#picture.calm .routine {{ display: none; }}
</style></head>
<body>
<div id="controls">
<button id="first" title="start">start</button><button id="prev" title="previous event">◀</button>
<input id="t" type="range" min="0" max="{end}" step="1" value="{end}">
<button id="next" title="next event">▶</button><button id="last" title="end">end</button>
<span id="now"></span>
<label><input id="beats" type="checkbox"> heartbeats</label>
<button id="out" title="zoom out">−</button><button id="in" title="zoom in">+</button>
</div>
<div id="picture" class="calm">{picture}</div>
<script>
"use strict";
const svg = document.querySelector("#picture svg");
const marks = Array.from(svg.querySelectorAll("[data-t]"));
const times = Array.from(new Set(marks.map(m => Number(m.dataset.t)))).sort((a, b) => a - b);
const slider = document.getElementById("t");
const baseWidth = svg.width.baseVal.value, baseHeight = svg.height.baseVal.value;
let zoom = 1;
function show(t) {{
  slider.value = t;
  for (const m of marks) m.style.visibility = Number(m.dataset.t) <= t ? "visible" : "hidden";
  document.getElementById("now").textContent = (t / 1000).toFixed(1) + " ms";
}}
function step(dir) {{
  const t = Number(slider.value);
  const next = dir > 0 ? times.find(x => x > t) : times.filter(x => x < t).pop();
  show(next === undefined ? (dir > 0 ? {end} : 0) : next);
}}
function scale(f) {{
  zoom = Math.min(8, Math.max(0.25, zoom * f));
  svg.setAttribute("width", baseWidth * zoom);
  svg.setAttribute("height", baseHeight * zoom);
}}
slider.addEventListener("input", () => show(Number(slider.value)));
document.getElementById("prev").addEventListener("click", () => step(-1));
document.getElementById("next").addEventListener("click", () => step(1));
document.getElementById("first").addEventListener("click", () => show(0));
document.getElementById("last").addEventListener("click", () => show({end}));
document.getElementById("in").addEventListener("click", () => scale(1.5));
document.getElementById("out").addEventListener("click", () => scale(1 / 1.5));
document.getElementById("beats").addEventListener("change", e =>
  document.getElementById("picture").classList.toggle("calm", !e.target.checked));
show({end});
</script>
</body></html>
"##,
        title = escape(title),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Timeline {
        let mut t = Timeline::new(3);
        let m = t.sent(0, 1, 0, "Prepare".into());
        t.arrived(m, 2 * MS);
        let m = t.sent(0, 2, 0, "Prepare".into());
        t.lost(m, MS);
        t.push(Mark::Partition {
            from: 5 * MS,
            until: Some(20 * MS),
            groups: vec![vec![0], vec![1, 2]],
        });
        t.push(Mark::Crash {
            node: 2,
            at: 8 * MS,
            power_loss: true,
        });
        t.push(Mark::Restart {
            node: 2,
            at: 30 * MS,
        });
        t.state(1, 3 * MS, "decided red".into());
        t.end = 40 * MS;
        t
    }

    #[test]
    fn the_picture_has_a_lane_per_node_and_a_mark_per_event() {
        let s = svg(&sample(), "a <small> run");
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        for lane in ["n0", "n1", "n2"] {
            assert!(s.contains(&format!(">{lane}</text>")), "{lane}");
        }
        assert_eq!(s.matches(r#"class="msg""#).count(), 1);
        assert!(routine("Heartbeat") && routine("HeartbeatResp") && !routine("Append"));
        assert_eq!(s.matches(r#"class="lost msg""#).count(), 1);
        assert!(s.contains("split {n0} | {n1 n2}"));
        assert!(s.contains("power loss") && s.contains("restart"));
        assert!(s.contains(VALUES[0]), "a decision on red is drawn red");
        assert!(s.contains("a &lt;small&gt; run"), "titles are escaped");
    }

    #[test]
    fn the_page_carries_its_picture_and_needs_nothing_else() {
        let h = html(&sample(), "run");
        assert!(h.contains("<svg") && h.contains("<script>"));
        // The only URL is the SVG namespace, which is a name, not a fetch.
        assert!(
            !h.contains("src=") && !h.contains("<link"),
            "fetches nothing"
        );
        assert!(!h.contains("https://"));
    }

    #[test]
    fn decided_values_are_read_from_descriptions() {
        assert_eq!(decided("acceptor, decided blue"), Some("blue"));
        assert_eq!(decided("leader t3"), None);
    }
}
