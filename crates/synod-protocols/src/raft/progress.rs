//! The leader's view of one follower's replication.

use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// Where the follower's log matches is unknown: one `Append` at a time.
    Probe,
    /// The follower is in sync: `Append`s are pipelined, `next` is optimistic.
    Replicate,
    /// A snapshot at this index was sent; wait for its acknowledgement.
    Snapshot(u64),
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// The highest index known to match the leader's log.
    pub matched: u64,
    /// The next index to send.
    pub next: u64,
    pub state: ProgressState,
    /// Probe: an `Append` is outstanding.
    pub paused: bool,
    /// Replicate: the last index of every unacknowledged `Append`, in order.
    pub inflight: VecDeque<u64>,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// The highest heartbeat round acknowledged in this term.
    pub acked_ctx: u64,
    /// Leader tick at which `matched` last advanced, or the state changed.
    pub progress_tick: u64,
}

impl Progress {
    pub fn new(next: u64, tick: u64) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            paused: false,
            inflight: VecDeque::new(),
            recent_active: true,
            acked_ctx: 0,
            progress_tick: tick,
        }
    }

    pub fn become_probe(&mut self, tick: u64) {
        self.state = ProgressState::Probe;
        self.paused = false;
        self.inflight.clear();
        self.next = self.next.max(self.matched + 1);
        self.progress_tick = tick;
    }

    pub fn become_replicate(&mut self, tick: u64) {
        self.state = ProgressState::Replicate;
        self.paused = false;
        self.inflight.clear();
        self.next = self.matched + 1;
        self.progress_tick = tick;
    }

    /// Whether another `Append` may be sent now.
    pub fn can_send(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => !self.paused,
            ProgressState::Replicate => self.inflight.len() < max_inflight,
            ProgressState::Snapshot(_) => false,
        }
    }

    /// Records that an `Append` ending at `last` was sent.
    pub fn sent(&mut self, last: u64, carried_entries: bool) {
        match self.state {
            ProgressState::Probe => self.paused = true,
            ProgressState::Replicate => {
                if carried_entries {
                    self.next = last + 1;
                    self.inflight.push_back(last);
                }
            }
            ProgressState::Snapshot(_) => {}
        }
    }

    /// A successful acknowledgement up to `index`. Returns whether it was news.
    pub fn ack(&mut self, index: u64, tick: u64) -> bool {
        while self.inflight.front().is_some_and(|&l| l <= index) {
            self.inflight.pop_front();
        }
        if index > self.matched {
            self.matched = index;
            self.next = self.next.max(index + 1);
            self.progress_tick = tick;
            true
        } else {
            false
        }
    }
}
