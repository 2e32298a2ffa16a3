//! What a picture of a run needs: every message with its send and arrival
//! (or loss), crashes, restarts, partitions, and what each node says of
//! itself when that changes. Recorded by the simulator when asked
//! ([`crate::SimConfig::timeline`]); [`crate::picture`] draws it.

use synod_protocols::{Instant, NodeId};

/// One thing that happened, placed in virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A message: delivered at `arrived`, or lost at `lost` (in a partition,
    /// to the loss fault, or because its receiver was down).
    Message {
        from: NodeId,
        to: NodeId,
        sent: Instant,
        arrived: Option<Instant>,
        lost: Option<Instant>,
        /// The message's kind (its type's variant name).
        label: String,
    },
    Crash {
        node: NodeId,
        at: Instant,
        power_loss: bool,
    },
    Restart {
        node: NodeId,
        at: Instant,
    },
    /// The network split into `groups` from `from` until `until` (`None`:
    /// the end of the run).
    Partition {
        from: Instant,
        until: Option<Instant>,
        groups: Vec<Vec<NodeId>>,
    },
    /// What the node says of itself from `at` on ([`synod_protocols::Node::describe`]).
    State {
        node: NodeId,
        at: Instant,
        text: String,
    },
}

/// Every mark of one run, in the order they happened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    pub nodes: usize,
    pub end: Instant,
    pub marks: Vec<Mark>,
    /// Lines written under the picture: what the run cannot show by itself
    /// (a story's commentary).
    pub notes: Vec<String>,
    /// The last state each node was described in (to record changes only).
    last_state: Vec<String>,
}

/// The variant name a message's `Debug` output starts with.
pub fn label_of(debug: &str) -> String {
    debug
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .find(|s| !s.is_empty())
        .unwrap_or("message")
        .to_string()
}

impl Timeline {
    pub fn new(nodes: usize) -> Timeline {
        Timeline {
            nodes,
            end: 0,
            marks: Vec::new(),
            notes: Vec::new(),
            last_state: vec![String::new(); nodes],
        }
    }

    /// Ends the picture `margin` after the last thing that is not a message
    /// (a change of state, a crash, a restart, a split), if the run went on
    /// longer: a stuck run repeats itself for seconds, and its picture is
    /// the moment it got stuck. Returns the end of the run that was cut.
    pub fn cut_quiet_tail(&mut self, margin: Instant) -> Option<Instant> {
        let last_change = self
            .marks
            .iter()
            .filter_map(|m| match m {
                Mark::State { at, .. } | Mark::Crash { at, .. } | Mark::Restart { at, .. } => {
                    Some(*at)
                }
                Mark::Partition { from, until, .. } => Some(until.unwrap_or(*from)),
                Mark::Message { .. } => None,
            })
            .max()?;
        let cut = last_change + margin;
        if cut >= self.end {
            return None;
        }
        self.marks
            .retain(|m| !matches!(m, Mark::Message { sent, .. } if *sent > cut));
        Some(std::mem::replace(&mut self.end, cut))
    }

    /// Records a message sent now; returns its mark's index, which the
    /// delivery names.
    pub fn sent(&mut self, from: NodeId, to: NodeId, at: Instant, label: String) -> usize {
        self.marks.push(Mark::Message {
            from,
            to,
            sent: at,
            arrived: None,
            lost: None,
            label,
        });
        self.marks.len() - 1
    }

    pub fn arrived(&mut self, mark: usize, at: Instant) {
        if let Some(Mark::Message { arrived, .. }) = self.marks.get_mut(mark) {
            *arrived = Some(at);
        }
    }

    pub fn lost(&mut self, mark: usize, at: Instant) {
        if let Some(Mark::Message { lost, .. }) = self.marks.get_mut(mark) {
            *lost = Some(at);
        }
    }

    pub fn push(&mut self, mark: Mark) {
        self.marks.push(mark);
    }

    /// The partition in force ends at `at`.
    pub fn healed(&mut self, at: Instant) {
        for m in self.marks.iter_mut().rev() {
            if let Mark::Partition { until, .. } = m {
                if until.is_none() {
                    *until = Some(at);
                }
                return;
            }
        }
    }

    /// Records what `node` says of itself, if that changed.
    pub fn state(&mut self, node: NodeId, at: Instant, text: String) {
        let Some(last) = self.last_state.get_mut(node as usize) else {
            return;
        };
        if *last != text {
            last.clone_from(&text);
            self.marks.push(Mark::State { node, at, text });
        }
    }

    /// A crashed node forgets what it said: its next description is new.
    pub fn forget_state(&mut self, node: NodeId) {
        if let Some(last) = self.last_state.get_mut(node as usize) {
            last.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_variant_names() {
        assert_eq!(label_of("Prepare { ballot: 3 }"), "Prepare");
        assert_eq!(label_of("AppendEntries(Foo)"), "AppendEntries");
        assert_eq!(label_of(""), "message");
    }

    #[test]
    fn only_changes_of_state_are_recorded() {
        let mut t = Timeline::new(2);
        t.state(0, 1, "follower t1".into());
        t.state(0, 2, "follower t1".into());
        t.state(0, 3, "leader t1".into());
        t.forget_state(0);
        t.state(0, 4, "leader t1".into());
        assert_eq!(t.marks.len(), 3);
    }
}
