//! Which faults a run may inject, and the schedule of them drawn from a seed.
//!
//! The schedule depends only on the seed, the node count and the fault set, never
//! on the protocol under test, so every algorithm faces exactly the same crashes,
//! restarts and partitions for a given seed.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::fmt;
use synod_protocols::{Instant, NodeId, MS};

/// One kind of fault the simulator knows how to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// A process crash: volatile state is lost; writes already handed to the OS
    /// survive, messages not yet sent do not. On its own this is the textbook
    /// *crash-stop* model: at most f nodes crash and none comes back. With
    /// [`Fault::Restart`] in the set it becomes *crash-recovery*: a crashed node
    /// is restarted after a while, and at most f stay down for good.
    Crash,
    /// Someone restarts crashed processes: `crash` victims come back (all but at
    /// most f), and nodes also go through quick crash-and-restart cycles.
    Restart,
    /// Power loss: like a crash, but writes that were not yet synced are lost.
    PowerLoss,
    /// The network splits into groups that cannot talk to each other, then heals.
    Partition,
    /// Messages are dropped.
    Loss,
    /// Messages are delivered twice.
    Duplicate,
    /// Messages get extra random latency, so they overtake one another.
    Reorder,
    /// Slow nodes and slow links: long delays on some messages.
    Delay,
    /// A power loss may leave the last write half on disk (torn at a sector).
    TornWrite,
    /// The disk returns flipped bits for something that was written correctly.
    Corruption,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::Crash,
        Fault::Restart,
        Fault::PowerLoss,
        Fault::Partition,
        Fault::Loss,
        Fault::Duplicate,
        Fault::Reorder,
        Fault::Delay,
        Fault::TornWrite,
        Fault::Corruption,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::Restart => "restart",
            Fault::PowerLoss => "power-loss",
            Fault::Partition => "partition",
            Fault::Loss => "loss",
            Fault::Duplicate => "duplicate",
            Fault::Reorder => "reorder",
            Fault::Delay => "delay",
            Fault::TornWrite => "torn-write",
            Fault::Corruption => "corruption",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of faults.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultSet(u16);

impl FaultSet {
    pub const NONE: FaultSet = FaultSet(0);

    pub fn all() -> FaultSet {
        Fault::ALL.iter().fold(FaultSet::NONE, |s, f| s.with(*f))
    }

    pub fn with(self, f: Fault) -> FaultSet {
        FaultSet(self.0 | f.bit())
    }

    pub fn without(self, f: Fault) -> FaultSet {
        FaultSet(self.0 & !f.bit())
    }

    pub fn has(self, f: Fault) -> bool {
        self.0 & f.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Fault> {
        Fault::ALL.into_iter().filter(move |f| self.has(*f))
    }

    /// Parses `none`, `all`, or a comma-separated list of fault names.
    pub fn parse(s: &str) -> Result<FaultSet, String> {
        let mut set = FaultSet::NONE;
        for part in s.split(',').map(str::trim) {
            match part {
                "all" => set = FaultSet::all(),
                "none" => {}
                "" => return Err(format!("empty fault name in {s:?}")),
                name => match Fault::ALL.iter().find(|f| f.name() == name) {
                    Some(f) => set = set.with(*f),
                    None => {
                        let known: Vec<_> = Fault::ALL.iter().map(|f| f.name()).collect();
                        return Err(format!(
                            "unknown fault {name:?}; expected one of: {}, all, none",
                            known.join(", ")
                        ));
                    }
                },
            }
        }
        Ok(set)
    }
}

impl fmt::Debug for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return write!(f, "none");
        }
        let names: Vec<_> = self.iter().map(|x| x.name()).collect();
        write!(f, "{}", names.join(","))
    }
}

/// A node-level fault at a point in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeFault {
    /// Crash `node`; if `restart_after` is `None` it stays down for good (it is
    /// one of the at most f nodes that are still down in the quiet phase).
    Crash {
        node: NodeId,
        power_loss: bool,
        torn: bool,
        restart_after: Option<Instant>,
    },
    /// Split the cluster into these groups until `heal_after` has passed.
    Partition {
        groups: Vec<Vec<NodeId>>,
        heal_after: Instant,
    },
    /// Make every message to or from `node` slow for `duration`.
    Slow {
        node: NodeId,
        extra: Instant,
        duration: Instant,
    },
    /// Corrupt one durable record of `node` (what the disk returns on next read).
    Corrupt { node: NodeId },
}

/// Per-message fault rates for the fault phase.
#[derive(Clone, Debug, Default)]
pub struct NetRates {
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub delay: f64,
}

/// Everything the seed decides about faults, before the run starts.
#[derive(Clone, Debug, Default)]
pub struct Schedule {
    pub events: Vec<(Instant, NodeFault)>,
    pub rates: NetRates,
    /// Nodes that are down for good from some point on: at most f of them.
    pub permanently_down: Vec<NodeId>,
}

impl Schedule {
    /// Draws a schedule for `n` nodes over a fault phase of `phase` microseconds.
    /// `f` bounds how many nodes may be down for good.
    pub fn draw(
        rng: &mut ChaCha8Rng,
        n: usize,
        f: usize,
        faults: FaultSet,
        phase: Instant,
    ) -> Schedule {
        let mut s = Schedule::default();
        let n64 = n as u64;
        // Without `restart` nobody restarts a crashed process (crash-stop); a
        // power loss still ends in a reboot, since power comes back.
        let crash_stop = !faults.has(Fault::Restart);
        let crash_kinds: Vec<Fault> = [Fault::Crash, Fault::Restart, Fault::PowerLoss]
            .into_iter()
            .filter(|k| faults.has(*k))
            .collect();
        if !crash_kinds.is_empty() && n > 0 {
            let count = rng.gen_range(1..=2 * n);
            for _ in 0..count {
                let at = rng.gen_range(0..phase);
                let node = rng.gen_range(0..n64);
                let kind = crash_kinds[rng.gen_range(0..crash_kinds.len())];
                let torn =
                    faults.has(Fault::TornWrite) && kind == Fault::PowerLoss && rng.gen_bool(0.5);
                let restart_after = match kind {
                    Fault::Restart => Some(rng.gen_range(0..5 * MS)),
                    Fault::Crash if crash_stop => {
                        // Crash-stop: a node crashes once, for good, and at
                        // most f of them do.
                        if s.permanently_down.contains(&node) || s.permanently_down.len() >= f {
                            continue;
                        }
                        s.permanently_down.push(node);
                        None
                    }
                    _ => {
                        let forever = s.permanently_down.len() < f
                            && !s.permanently_down.contains(&node)
                            && rng.gen_bool(0.25);
                        if forever {
                            s.permanently_down.push(node);
                            None
                        } else {
                            Some(rng.gen_range(10 * MS..phase / 2 + 20 * MS))
                        }
                    }
                };
                s.events.push((
                    at,
                    NodeFault::Crash {
                        node,
                        power_loss: kind != Fault::Crash,
                        torn,
                        restart_after,
                    },
                ));
            }
        }
        if faults.has(Fault::TornWrite) && faults.has(Fault::PowerLoss) && n > 0 {
            // Power losses aimed at a write in flight (the simulator waits
            // for the node's next write), so that recovery from a torn
            // tail happens in most runs, not only when a random power loss
            // happens to find a sync under way.
            let count = rng.gen_range(2..=2 * n);
            for _ in 0..count {
                let at = rng.gen_range(0..phase);
                let node = rng.gen_range(0..n64);
                let restart_after = Some(rng.gen_range(10 * MS..phase / 2 + 20 * MS));
                s.events.push((
                    at,
                    NodeFault::Crash {
                        node,
                        power_loss: true,
                        torn: true,
                        restart_after,
                    },
                ));
            }
        }
        if faults.has(Fault::Partition) && n > 1 {
            let count = rng.gen_range(1..=4);
            for _ in 0..count {
                let at = rng.gen_range(0..phase);
                let k = rng.gen_range(2..=3.min(n));
                let mut groups = vec![Vec::new(); k];
                for node in 0..n64 {
                    groups[rng.gen_range(0..k)].push(node);
                }
                groups.retain(|g| !g.is_empty());
                let heal_after = rng.gen_range(20 * MS..phase / 2 + 40 * MS);
                s.events
                    .push((at, NodeFault::Partition { groups, heal_after }));
            }
        }
        if faults.has(Fault::Delay) && n > 0 {
            let count = rng.gen_range(1..=3);
            for _ in 0..count {
                let at = rng.gen_range(0..phase);
                let node = rng.gen_range(0..n64);
                let extra = rng.gen_range(20 * MS..300 * MS);
                let duration = rng.gen_range(50 * MS..phase / 2 + 60 * MS);
                s.events.push((
                    at,
                    NodeFault::Slow {
                        node,
                        extra,
                        duration,
                    },
                ));
            }
            s.rates.delay = rng.gen_range(0.0..0.05);
        }
        if faults.has(Fault::Corruption) && n > 0 {
            // A node that finds its disk corrupt stays down, so corrupted nodes
            // count toward the f that may be down in the quiet phase: only nodes
            // that are not already down for good are corrupted, and at most
            // f - permanently_down distinct ones. A drawn node that does not
            // qualify is replaced by the next one that does (no extra draws, so
            // the rest of the schedule is what it was before this rule).
            let mut corrupted: Vec<NodeId> = Vec::new();
            let count = rng.gen_range(0..=2);
            for _ in 0..count {
                let at = rng.gen_range(0..phase);
                let drawn = rng.gen_range(0..n64);
                let room = corrupted.len() + s.permanently_down.len() < f;
                let node = (0..n64)
                    .map(|k| (drawn + k) % n64)
                    .find(|x| !s.permanently_down.contains(x) && (corrupted.contains(x) || room));
                let Some(node) = node else { continue };
                if !corrupted.contains(&node) {
                    corrupted.push(node);
                }
                s.events.push((at, NodeFault::Corrupt { node }));
            }
        }
        if faults.has(Fault::Loss) {
            s.rates.loss = rng.gen_range(0.0..0.2);
        }
        if faults.has(Fault::Duplicate) {
            s.rates.duplicate = rng.gen_range(0.0..0.1);
        }
        if faults.has(Fault::Reorder) {
            s.rates.reorder = rng.gen_range(0.0..0.3);
        }
        // Stable order: by time, ties by the order drawn.
        s.events.sort_by_key(|(at, _)| *at);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn parse_lists_and_rejects_unknown_names() {
        let s = FaultSet::parse("crash,loss").unwrap();
        assert!(s.has(Fault::Crash) && s.has(Fault::Loss) && !s.has(Fault::Partition));
        assert_eq!(FaultSet::parse("all").unwrap(), FaultSet::all());
        assert_eq!(FaultSet::parse("none").unwrap(), FaultSet::NONE);
        let err = FaultSet::parse("crash,meteor").unwrap_err();
        assert!(
            err.contains("meteor") && err.contains("power-loss"),
            "{err}"
        );
        assert_eq!(
            FaultSet::parse("crash,power-loss").unwrap().to_string(),
            "crash,power-loss"
        );
    }

    #[test]
    fn crash_alone_is_crash_stop_and_restart_brings_nodes_back() {
        let crashes = |faults: &str, seed: u64| {
            let s = Schedule::draw(
                &mut ChaCha8Rng::seed_from_u64(seed),
                5,
                2,
                FaultSet::parse(faults).unwrap(),
                2_000 * MS,
            );
            let events: Vec<(NodeId, Option<Instant>)> = s
                .events
                .iter()
                .filter_map(|(_, e)| match e {
                    NodeFault::Crash {
                        node,
                        restart_after,
                        ..
                    } => Some((*node, *restart_after)),
                    _ => None,
                })
                .collect();
            (events, s.permanently_down)
        };
        let mut restarted = 0;
        for seed in 0..200 {
            let (events, down) = crashes("crash", seed);
            assert!(!events.is_empty() && events.len() <= 2, "seed {seed}");
            assert!(events.iter().all(|(_, r)| r.is_none()), "seed {seed}");
            let mut nodes: Vec<NodeId> = events.iter().map(|(n, _)| *n).collect();
            let mut down = down;
            nodes.sort_unstable();
            down.sort_unstable();
            assert_eq!(nodes, down, "seed {seed}: every crashed node stays down");
            let (events, down) = crashes("crash,restart", seed);
            assert!(down.len() <= 2);
            restarted += events.iter().filter(|(_, r)| r.is_some()).count();
        }
        assert!(restarted > 200, "crash,restart brings nodes back");
    }

    #[test]
    fn schedule_depends_only_on_seed_and_respects_f() {
        for seed in 0..200 {
            let draw = || {
                Schedule::draw(
                    &mut ChaCha8Rng::seed_from_u64(seed),
                    5,
                    2,
                    FaultSet::all(),
                    2_000 * MS,
                )
            };
            let (a, b) = (draw(), draw());
            assert_eq!(a.events, b.events);
            assert!(a.permanently_down.len() <= 2);
            let mut down = a.permanently_down.clone();
            for (_, e) in &a.events {
                if let NodeFault::Corrupt { node } = e {
                    if !down.contains(node) {
                        down.push(*node);
                    }
                }
            }
            assert!(down.len() <= 2, "seed {seed}: {down:?} down or corrupted");
        }
    }
}
