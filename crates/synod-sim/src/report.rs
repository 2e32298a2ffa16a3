//! What one run found, and the summary of many runs.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use synod_protocols::{Instant, NodeId, MS};

/// A broken property, with enough context to find it in the trace.
#[derive(Clone, Debug)]
pub struct Violation {
    pub property: &'static str,
    pub node: Option<NodeId>,
    pub at: Instant,
    pub detail: String,
}

/// The outcome of one run.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub seed: u64,
    /// The liveness goal was reached in the quiet phase.
    pub terminated: bool,
    /// The first few violations (all are counted in `violation_count`).
    pub violations: Vec<Violation>,
    pub violation_count: u64,
    /// When the first decision (or the model's equivalent) happened.
    pub decision_time: Option<Instant>,
    /// Messages sent up to `decision_time`.
    pub decision_messages: Option<u64>,
    pub messages_sent: u64,
    /// Bytes of all messages sent, if the run was set up to size them
    /// ([`crate::Simulation::with_message_size`]); else 0.
    pub bytes_sent: u64,
    pub deliveries: u64,
    pub end_time: Instant,
    /// Model-specific counts (ops_ok, committed, blocked, ...).
    pub counters: BTreeMap<&'static str, u64>,
    pub trace: Option<String>,
    /// What a picture of the run needs, if it was recorded.
    pub timeline: Option<crate::timeline::Timeline>,
}

impl RunReport {
    pub fn count(&mut self, name: &'static str, n: u64) {
        *self.counters.entry(name).or_insert(0) += n;
    }
}

/// The aggregate of many runs, as printed by `synod sim`.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub algo: String,
    pub nodes: usize,
    pub faults: String,
    pub first_seed: u64,
    pub runs: u64,
    pub decided: u64,
    pub stuck: u64,
    /// Every safety property the model checks, with the number of runs that broke it.
    pub violations: BTreeMap<&'static str, u64>,
    pub counters: BTreeMap<&'static str, u64>,
    times: Vec<Instant>,
    messages: Vec<u64>,
    pub deliveries: u64,
    /// Seeds of the first runs that broke a property or got stuck.
    pub failing_seeds: Vec<u64>,
    pub stuck_seeds: Vec<u64>,
    pub first_violation: Option<(u64, Violation)>,
}

fn percentile<T: Copy + Ord>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Summary {
    pub fn new(
        algo: &str,
        nodes: usize,
        faults: String,
        first_seed: u64,
        properties: &[&'static str],
        counters: &[&'static str],
    ) -> Summary {
        Summary {
            algo: algo.to_string(),
            nodes,
            faults,
            first_seed,
            violations: properties.iter().map(|p| (*p, 0)).collect(),
            counters: counters.iter().map(|c| (*c, 0)).collect(),
            ..Summary::default()
        }
    }

    pub fn add(&mut self, r: &RunReport) {
        self.runs += 1;
        if r.terminated {
            self.decided += 1;
        } else {
            self.stuck += 1;
            if self.stuck_seeds.len() < 10 {
                self.stuck_seeds.push(r.seed);
            }
        }
        let mut broken: Vec<&'static str> = r.violations.iter().map(|v| v.property).collect();
        broken.sort_unstable();
        broken.dedup();
        for p in &broken {
            *self.violations.entry(p).or_insert(0) += 1;
        }
        if !broken.is_empty() {
            if self.failing_seeds.len() < 10 {
                self.failing_seeds.push(r.seed);
            }
            if self.first_violation.is_none() {
                self.first_violation = Some((r.seed, r.violations[0].clone()));
            }
        }
        for (k, v) in &r.counters {
            *self.counters.entry(k).or_insert(0) += v;
        }
        if let Some(t) = r.decision_time {
            self.times.push(t);
        }
        if let Some(m) = r.decision_messages {
            self.messages.push(m);
        }
        self.deliveries += r.deliveries;
    }

    /// Folds in the summary of the seeds that follow this one's.
    pub fn merge(&mut self, other: Summary) {
        self.runs += other.runs;
        self.decided += other.decided;
        self.stuck += other.stuck;
        for (p, n) in other.violations {
            *self.violations.entry(p).or_insert(0) += n;
        }
        for (c, n) in other.counters {
            *self.counters.entry(c).or_insert(0) += n;
        }
        self.times.extend(other.times);
        self.messages.extend(other.messages);
        self.deliveries += other.deliveries;
        self.failing_seeds.extend(other.failing_seeds);
        self.failing_seeds.truncate(10);
        self.stuck_seeds.extend(other.stuck_seeds);
        self.stuck_seeds.truncate(10);
        if self.first_violation.is_none() {
            self.first_violation = other.first_violation;
        }
    }

    /// Runs that broke at least one safety property, summed over properties.
    pub fn total_violations(&self) -> u64 {
        self.violations.values().sum()
    }

    fn sorted(&self) -> (Vec<Instant>, Vec<u64>) {
        let mut t = self.times.clone();
        t.sort_unstable();
        let mut m = self.messages.clone();
        m.sort_unstable();
        (t, m)
    }

    pub fn to_json(&self) -> Value {
        let (t, m) = self.sorted();
        let ms = |x: Option<Instant>| {
            x.map(|v| json!(v as f64 / MS as f64))
                .unwrap_or(Value::Null)
        };
        let mut o = Map::new();
        o.insert("algo".into(), json!(self.algo));
        o.insert("nodes".into(), json!(self.nodes));
        o.insert("faults".into(), json!(self.faults));
        o.insert("first_seed".into(), json!(self.first_seed));
        o.insert("runs".into(), json!(self.runs));
        o.insert("decided".into(), json!(self.decided));
        o.insert("stuck".into(), json!(self.stuck));
        o.insert("violations".into(), json!(self.total_violations()));
        for (p, n) in &self.violations {
            o.insert(format!("{p}_violations"), json!(n));
        }
        for (c, n) in &self.counters {
            o.insert((*c).to_string(), json!(n));
        }
        o.insert("p50_time_ms".into(), ms(percentile(&t, 50.0)));
        o.insert("p99_time_ms".into(), ms(percentile(&t, 99.0)));
        o.insert(
            "p50_messages".into(),
            percentile(&m, 50.0)
                .map(|v| json!(v))
                .unwrap_or(Value::Null),
        );
        o.insert(
            "p99_messages".into(),
            percentile(&m, 99.0)
                .map(|v| json!(v))
                .unwrap_or(Value::Null),
        );
        o.insert("deliveries".into(), json!(self.deliveries));
        o.insert("failing_seeds".into(), json!(self.failing_seeds));
        o.insert("stuck_seeds".into(), json!(self.stuck_seeds));
        Value::Object(o)
    }

    /// The human-readable table.
    pub fn to_table(&self) -> String {
        let (t, m) = self.sorted();
        let ms = |x: Option<Instant>| {
            x.map(|v| format!("{:.1} ms", v as f64 / MS as f64))
                .unwrap_or("-".into())
        };
        let num = |x: Option<u64>| x.map(|v| v.to_string()).unwrap_or("-".into());
        let mut s = String::new();
        let mut row = |k: &str, v: String| s.push_str(&format!("  {k:<28} {v}\n"));
        row(
            "algorithm",
            format!(
                "{} ({} nodes, faults: {})",
                self.algo, self.nodes, self.faults
            ),
        );
        row(
            "seeds",
            format!(
                "{}..{}",
                self.first_seed,
                self.first_seed + self.runs.saturating_sub(1)
            ),
        );
        row("runs", self.runs.to_string());
        row("decided", self.decided.to_string());
        row("stuck", self.stuck.to_string());
        for (p, n) in &self.violations {
            row(&format!("{p} violations"), n.to_string());
        }
        for (c, n) in &self.counters {
            row(c, n.to_string());
        }
        row(
            "time to decision p50 / p99",
            format!(
                "{} / {}",
                ms(percentile(&t, 50.0)),
                ms(percentile(&t, 99.0))
            ),
        );
        row(
            "messages to decision p50 / p99",
            format!(
                "{} / {}",
                num(percentile(&m, 50.0)),
                num(percentile(&m, 99.0))
            ),
        );
        if !self.failing_seeds.is_empty() {
            row("failing seeds", format!("{:?}", self.failing_seeds));
        }
        if let Some((seed, v)) = &self.first_violation {
            row(
                "first violation",
                format!(
                    "seed {seed}: {} at {:.3} ms: {}",
                    v.property,
                    v.at as f64 / MS as f64,
                    v.detail
                ),
            );
        }
        if !self.stuck_seeds.is_empty() {
            row("stuck seeds", format!("{:?}", self.stuck_seeds));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7u64], 99.0), Some(7));
        assert_eq!(percentile::<u64>(&[], 50.0), None);
    }
}
