//! The write-once variable on simulated nodes: the third implementation of
//! [`WriteOnce`], beside the in-process ones and the service's, so that the
//! same application code runs on all three.
//!
//! A [`SimWriteOnce`] handle stands for a client of one simulated node. Each
//! call hands the node its offer (or nothing) and runs the deterministic
//! simulation until that node knows the final value, checking agreement,
//! validity and no-decoherence on every event as the random runs do. Values
//! of any type are kept in a table; the nodes decide on indexes into it.

use crate::faults::Schedule;
use crate::models::write_once::WriteOnceModel;
use crate::report::Violation;
use crate::runner::Algo;
use crate::sim::{SimConfig, Simulation};
use crate::FaultSet;
use std::cell::RefCell;
use std::rc::Rc;
use synod_protocols::coordinator::CoordinatorNode;
use synod_protocols::majority::MajorityNode;
use synod_protocols::paxos::PaxosNode;
use synod_protocols::write_once::{Decided, WriteOnce, WriteOnceNode};
use synod_protocols::{Instant, NodeId, MS};

/// How long (simulated) a call waits for its node to learn the value.
pub const PATIENCE: Instant = 10_000 * MS;

/// Why a simulated variable gave no value.
#[derive(Clone, Debug)]
pub enum SimError {
    /// The node did not learn a value within [`PATIENCE`] of simulated time
    /// (the algorithm is stuck, or the node is down).
    Undecided { node: NodeId, at: Instant },
    /// A checker found a broken property: never from a correct algorithm.
    Violated(Vec<Violation>),
}

/// What a handle needs from the simulation, whatever the algorithm.
trait Stepper {
    fn offer(&mut self, node: NodeId, value: u64);
    /// Runs until `node` knows the value (or [`PATIENCE`] passes).
    fn learn(&mut self, node: NodeId) -> Result<u64, SimError>;
}

impl<N, B> Stepper for Simulation<WriteOnceModel<N, B>>
where
    N: synod_protocols::Node<Input = u64, Event = Decided<u64>> + WriteOnceNode<u64>,
    B: FnMut(NodeId, &N::Disk, u64) -> N,
{
    fn offer(&mut self, node: NodeId, value: u64) {
        self.model_mut().offered(node, value);
        self.input(node, value);
    }

    fn learn(&mut self, node: NodeId) -> Result<u64, SimError> {
        let limit = self.now() + PATIENCE;
        let known = |ctl: &crate::Ctl<'_, N>| ctl.node(node).and_then(|n| n.decided().copied());
        let mut value = None;
        self.run_until(limit, |_, ctl| {
            value = known(ctl);
            value.is_some()
        });
        if !self.violations().is_empty() {
            return Err(SimError::Violated(self.violations().to_vec()));
        }
        value.ok_or(SimError::Undecided {
            node,
            at: self.now(),
        })
    }
}

struct Shared<T> {
    sim: Box<dyn Stepper>,
    values: Vec<T>,
}

/// A client of one simulated node's write-once variable. Handles made by
/// one [`cluster`] call share one simulation.
pub struct SimWriteOnce<T> {
    shared: Rc<RefCell<Shared<T>>>,
    node: NodeId,
}

/// `nodes` nodes of `algo` (coordinator, majority or paxos) under
/// `schedule` (use `Schedule::default()` for none), run from `seed`: one
/// handle per node.
pub fn cluster<T: 'static>(
    algo: Algo,
    nodes: usize,
    seed: u64,
    schedule: Schedule,
) -> Vec<SimWriteOnce<T>> {
    let cfg = SimConfig::new(nodes, FaultSet::NONE);
    // One started run, whatever the node type.
    macro_rules! run {
        ($boot:expr) => {{
            let model = WriteOnceModel::with_offers(nodes, Vec::new(), $boot);
            let mut sim = Simulation::with_schedule(cfg, seed, model, schedule);
            sim.start(seed);
            Box::new(sim) as Box<dyn Stepper>
        }};
    }
    let sim = match algo {
        Algo::Coordinator => run!(move |id, disk: &_, _| CoordinatorNode::new(id, nodes, disk)),
        Algo::Majority => run!(move |id, disk: &_, _| MajorityNode::new(id, nodes, disk)),
        Algo::Paxos => run!(move |id, disk: &_, s| PaxosNode::new(id, nodes, disk, s)),
        other => panic!("{} is not a write-once algorithm", other.name()),
    };
    let shared = Rc::new(RefCell::new(Shared {
        sim,
        values: Vec::new(),
    }));
    (0..nodes as NodeId)
        .map(|node| SimWriteOnce {
            shared: shared.clone(),
            node,
        })
        .collect()
}

impl<T: Clone> SimWriteOnce<T> {
    fn value(&self, index: u64) -> T {
        self.shared.borrow().values[index as usize].clone()
    }
}

impl<T: Clone> WriteOnce<T> for SimWriteOnce<T> {
    type Error = SimError;

    async fn try_initialize(&self, value: T) -> Result<T, SimError> {
        let index = {
            let mut sh = self.shared.borrow_mut();
            sh.values.push(value);
            let index = sh.values.len() as u64 - 1;
            sh.sim.offer(self.node, index);
            index
        };
        let decided = self.shared.borrow_mut().sim.learn(self.node);
        debug_assert!(decided.as_ref().map_or(true, |d| *d <= index));
        decided.map(|d| self.value(d))
    }

    async fn final_value(&self) -> Result<T, SimError> {
        let decided = self.shared.borrow_mut().sim.learn(self.node);
        decided.map(|d| self.value(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::NodeFault;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // The simulated variable never waits on anything outside itself.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a simulated write-once call never waits"),
        }
    }

    #[test]
    fn every_algorithm_decides_the_first_offer_and_everyone_learns_it() {
        for algo in [Algo::Coordinator, Algo::Majority, Algo::Paxos] {
            let nodes = cluster::<String>(algo, 5, 7, Schedule::default());
            let first = block_on(nodes[0].try_initialize("ship".into())).unwrap();
            assert_eq!(first, "ship", "{}", algo.name());
            let second = block_on(nodes[3].try_initialize("cancel".into())).unwrap();
            assert_eq!(second, "ship", "{}", algo.name());
            for n in &nodes {
                assert_eq!(block_on(n.final_value()).unwrap(), "ship");
            }
        }
    }

    #[test]
    fn a_coordinator_down_for_good_leaves_the_variable_undecided() {
        let schedule = Schedule {
            events: vec![(
                0,
                NodeFault::Crash {
                    node: 4,
                    power_loss: false,
                    torn: false,
                    restart_after: None,
                },
            )],
            ..Schedule::default()
        };
        let nodes = cluster::<&str>(Algo::Coordinator, 5, 1, schedule.clone());
        let r = block_on(nodes[0].try_initialize("ship"));
        assert!(
            matches!(r, Err(SimError::Undecided { node: 0, .. })),
            "{r:?}"
        );
        let nodes = cluster::<&str>(Algo::Paxos, 5, 1, schedule);
        assert_eq!(block_on(nodes[0].try_initialize("ship")).unwrap(), "ship");
    }
}
