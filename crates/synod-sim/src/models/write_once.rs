//! The write-once variable decided among `n` nodes, by any of the distributed
//! algorithms in `synod_protocols` (coordinator, majority vote, Paxos).
//!
//! Clients: the first `proposers` nodes are each offered a distinct value at a
//! random time in the first half of the fault phase (and again whenever they
//! restart, as a client would retry).
//!
//! Checked on every run:
//! * **agreement** — no two nodes ever decide different values;
//! * **validity** — a decided value is one that was proposed;
//! * **decoherence** — a node's decision never changes or disappears, restarts
//!   included (the seeds' no-decoherence);
//! * **termination** — in the quiet phase every up node decides (else the run is
//!   stuck).

use crate::report::RunReport;
use crate::sim::{Ctl, Model};
use rand::Rng;
use synod_protocols::write_once::{Decided, WriteOnceNode};
use synod_protocols::{Node, NodeId, MS};

const FIRST_OFFER: u64 = 1;

pub const PROPERTIES: &[&str] = &["agreement", "validity", "decoherence"];

/// The value proposer `i` offers: distinct per proposer, and easy to spot in traces.
pub fn proposal_of(i: NodeId) -> u64 {
    100 + i
}

/// One client's offer: a value, at a node, at a fixed time or (`None`) at a
/// random one drawn from the seed.
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    pub node: NodeId,
    pub value: u64,
    pub at: Option<u64>,
}

pub struct WriteOnceModel<N, B> {
    boot: B,
    offers: Vec<Offer>,
    decided: Vec<Option<u64>>,
    /// When each node first reported its decision.
    decided_at: Vec<Option<u64>>,
    first: Option<u64>,
    /// When the first offer was made, and how many messages had been sent by then.
    first_offer: Option<(u64, u64)>,
    decision_time: Option<u64>,
    decision_messages: Option<u64>,
    _node: std::marker::PhantomData<N>,
}

impl<N, B> WriteOnceModel<N, B>
where
    N: Node<Input = u64, Event = Decided<u64>> + WriteOnceNode<u64>,
    B: FnMut(NodeId, &N::Disk, u64) -> N,
{
    /// The first `proposers` nodes each offer their [`proposal_of`] at a
    /// random time.
    pub fn new(nodes: usize, proposers: usize, boot: B) -> Self {
        let offers = (0..proposers.min(nodes) as NodeId)
            .map(|i| Offer {
                node: i,
                value: proposal_of(i),
                at: None,
            })
            .collect();
        Self::with_offers(nodes, offers, boot)
    }

    /// These offers and no others (a scenario, or none at all for a driver
    /// that offers values itself with [`WriteOnceModel::offered`]).
    pub fn with_offers(nodes: usize, offers: Vec<Offer>, boot: B) -> Self {
        WriteOnceModel {
            boot,
            offers,
            decided: vec![None; nodes],
            decided_at: vec![None; nodes],
            first: None,
            first_offer: None,
            decision_time: None,
            decision_messages: None,
            _node: std::marker::PhantomData,
        }
    }

    fn is_proposed(&self, v: u64) -> bool {
        self.offers.iter().any(|o| o.value == v)
    }

    /// Records an offer that the driver hands to `node` itself, so that the
    /// checks know the value and the client retries it after a restart.
    pub fn offered(&mut self, node: NodeId, value: u64) {
        self.offers.push(Offer {
            node,
            value,
            at: Some(0),
        });
    }

    /// What each node has decided so far (`None`: nothing yet).
    pub fn decisions(&self) -> &[Option<u64>] {
        &self.decided
    }

    /// When each node first reported its decision (simulated time).
    pub fn decision_times(&self) -> &[Option<u64>] {
        &self.decided_at
    }
}

impl<N, B> Model for WriteOnceModel<N, B>
where
    N: Node<Input = u64, Event = Decided<u64>> + WriteOnceNode<u64>,
    B: FnMut(NodeId, &N::Disk, u64) -> N,
{
    type Node = N;

    fn boot(&mut self, id: NodeId, disk: &N::Disk, seed: u64) -> N {
        (self.boot)(id, disk, seed)
    }

    fn on_start(&mut self, ctl: &mut Ctl<'_, N>) {
        // Offers arrive at random times in the first half of the fault phase, so
        // that crashes and partitions hit every stage of the protocol, and later
        // proposers must discover (not overwrite) what earlier ones chose.
        let spread = ctl.config().fault_phase / 2;
        let mut first = u64::MAX;
        for o in &self.offers {
            let delay = match o.at {
                Some(at) => at,
                None => ctl.rng().gen_range(0..spread.max(1)),
            };
            first = first.min(delay);
            ctl.input(o.node, o.value, delay);
        }
        // Decision time and messages are measured from the first offer.
        if first != u64::MAX {
            ctl.wake(first, FIRST_OFFER);
        }
    }

    fn on_wake(&mut self, ctl: &mut Ctl<'_, N>, token: u64) {
        if token == FIRST_OFFER {
            self.first_offer = Some((ctl.now(), ctl.messages_sent()));
        }
    }

    fn on_event(&mut self, ctl: &mut Ctl<'_, N>, node: NodeId, Decided(v): Decided<u64>) {
        if !self.is_proposed(v) {
            ctl.violation(
                "validity",
                Some(node),
                format!("decided {v}, which nobody proposed"),
            );
        }
        match self.first {
            None => {
                self.first = Some(v);
                let (t0, m0) = self.first_offer.unwrap_or((0, 0));
                self.decision_time = Some(ctl.now().saturating_sub(t0));
                self.decision_messages = Some(ctl.messages_sent().saturating_sub(m0));
            }
            Some(f) if f != v => {
                ctl.violation(
                    "agreement",
                    Some(node),
                    format!("decided {v}, but {f} was decided before"),
                );
            }
            Some(_) => {}
        }
        match self.decided[node as usize] {
            Some(old) if old != v => ctl.violation(
                "decoherence",
                Some(node),
                format!("decided {v} after having decided {old}"),
            ),
            _ => {
                self.decided[node as usize] = Some(v);
                self.decided_at[node as usize].get_or_insert(ctl.now());
            }
        }
    }

    fn on_restart(&mut self, ctl: &mut Ctl<'_, N>, node: NodeId) {
        let now_knows = ctl.node(node).and_then(|n| n.decided().copied());
        if let Some(before) = self.decided[node as usize] {
            match now_knows {
                Some(v) if v == before => {}
                Some(v) => ctl.violation(
                    "decoherence",
                    Some(node),
                    format!("restarted believing {v}, had decided {before}"),
                ),
                None => ctl.violation(
                    "decoherence",
                    Some(node),
                    format!("restarted having forgotten its decision {before}"),
                ),
            }
        }
        // A client retries its offer with the restarted node.
        for o in self.offers.iter().filter(|o| o.node == node) {
            ctl.input(node, o.value, MS);
        }
    }

    fn on_quiet(&mut self, ctl: &mut Ctl<'_, N>) {
        // A client whose node is gone for good fails over, as a real client
        // would: it offers its value to a node that is up. Without this, a
        // run whose every proposer crashed for good has nothing to decide.
        let Some(live) = (0..ctl.nodes() as NodeId).find(|&j| !ctl.is_down_for_good(j)) else {
            return;
        };
        for o in &self.offers {
            if ctl.is_down_for_good(o.node) {
                ctl.input(live, o.value, MS);
            }
        }
    }

    fn done(&self, ctl: &Ctl<'_, N>) -> bool {
        (0..ctl.nodes() as NodeId).all(|i| match ctl.node(i) {
            Some(n) => n.decided().is_some(),
            None => true,
        })
    }

    fn finish(&mut self, _ctl: &mut Ctl<'_, N>, _terminated: bool, report: &mut RunReport) {
        report.decision_time = self.decision_time;
        report.decision_messages = self.decision_messages;
    }
}
