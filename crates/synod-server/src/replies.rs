//! Answers leave a member's thread once per round: on a current-thread API
//! runtime (one API thread) as one hand-off to a task on it, instead of one
//! cross-thread wake-up per answer.
//!
//! Why: a round answers many requests at once (a dozen puts at 256
//! clients). Sent one by one from the member's thread, each answer wakes
//! the API thread on its own, which then runs that request's stream and its
//! connection before the next answer arrives: one `writev` per answer on
//! the client connection, and one wake-up of the API thread per answer. Sent
//! together from a task on the API runtime, the answers' streams all run
//! before their connection does, which then writes them in one go.
//!
//! Answers are only ever delayed by this (to the end of the round that made
//! them), never sent earlier: what a round answers was already released by
//! its sync.

use synod_kv::replica::{Answer, ReplicaError};
use tokio::sync::{mpsc, oneshot};

/// Where a client waits for its answer.
pub type Reply = oneshot::Sender<Result<Answer, ReplicaError>>;

/// The last step of a local job (handing its value to the waiting request),
/// run on the API runtime with the round's other answers.
pub type Deliver = Box<dyn FnOnce() + Send>;

enum Done {
    Answer(Reply, Result<Answer, ReplicaError>),
    Deliver(Deliver),
}

impl Done {
    fn send(self) {
        match self {
            // A client that gave up no longer waits: nothing to do.
            Done::Answer(reply, result) => drop(reply.send(result)),
            Done::Deliver(deliver) => deliver(),
        }
    }
}

/// The answers of the round under way, until [`Replies::flush`].
pub struct Replies {
    pending: Vec<Done>,
    /// The task on the API runtime that sends them; `None` without a
    /// current-thread runtime (the member's thread sends them).
    to: Option<mpsc::UnboundedSender<Vec<Done>>>,
}

impl Replies {
    /// Starts the sending task on the runtime of the calling thread, if it
    /// has one and it is a current-thread runtime. The multi-thread scheduler
    /// runs the connection right after each stream anyway, so there the hop
    /// through a task only cost (three members with two API threads each,
    /// three rounds: no gain for puts, linearizable gets 3-16% fewer): the
    /// member's thread sends the round's answers itself.
    pub fn start() -> Replies {
        let current_thread = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|rt| rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        let to = current_thread.map(|rt| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Done>>();
            rt.spawn(async move {
                while let Some(batch) = rx.recv().await {
                    batch.into_iter().for_each(Done::send);
                }
            });
            tx
        });
        Replies {
            pending: Vec::new(),
            to,
        }
    }

    pub fn answer(&mut self, reply: Reply, result: Result<Answer, ReplicaError>) {
        self.pending.push(Done::Answer(reply, result));
    }

    pub fn deliver(&mut self, deliver: Deliver) {
        self.pending.push(Done::Deliver(deliver));
    }

    /// Sends the round's answers: through the task on the API runtime if
    /// there is one, else from this thread.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        match &self.to {
            Some(to) => {
                // The runtime is gone only when the process stops: its
                // clients are gone with it.
                let _ = to.send(batch);
            }
            None => batch.into_iter().for_each(Done::send),
        }
    }
}

/// A member that stops mid-round (asked to, or on a storage failure) still
/// sends what the round answered so far: a forwarded write the leader
/// answered is not turned into "member gone".
impl Drop for Replies {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_kv::replica::Answer;

    fn ttl(n: i64) -> Result<Answer, ReplicaError> {
        Ok(Answer::KeepAlive { ttl: n })
    }

    /// Answers through `replies`, which sends from the flushing thread.
    fn sent_at_the_flush(mut replies: Replies) {
        assert!(replies.to.is_none());
        let (tx, mut rx) = oneshot::channel();
        replies.answer(tx, ttl(5));
        assert!(rx.try_recv().is_err(), "held until the round ends");
        replies.flush();
        assert!(matches!(
            rx.try_recv(),
            Ok(Ok(Answer::KeepAlive { ttl: 5 }))
        ));
    }

    #[test]
    fn what_a_stopping_member_answered_still_leaves() {
        let mut replies = Replies::start();
        let (tx, mut rx) = oneshot::channel();
        replies.answer(tx, ttl(9));
        drop(replies);
        assert!(matches!(
            rx.try_recv(),
            Ok(Ok(Answer::KeepAlive { ttl: 9 }))
        ));
    }

    #[test]
    fn without_a_runtime_the_members_thread_sends_them() {
        sent_at_the_flush(Replies::start());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn on_a_multi_thread_runtime_the_members_thread_sends_them() {
        sent_at_the_flush(Replies::start());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_round_flushed_from_another_thread_reaches_the_runtime_in_order() {
        let mut replies = Replies::start();
        let (order_tx, mut order) = mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for n in 0..3 {
            let (tx, rx) = oneshot::channel();
            replies.answer(tx, ttl(n));
            let order_tx = order_tx.clone();
            replies.deliver(Box::new(move || {
                let _ = order_tx.send(n);
            }));
            waiting.push(rx);
        }
        // Flushed from another thread, as a member's thread does.
        let flushed = std::thread::spawn(move || {
            replies.flush();
            replies
        });
        for (n, rx) in waiting.into_iter().enumerate() {
            let got = rx.await.expect("answered");
            assert!(matches!(got, Ok(Answer::KeepAlive { ttl }) if ttl == n as i64));
        }
        for n in 0..3 {
            assert_eq!(order.recv().await, Some(n));
        }
        let mut replies = flushed.join().expect("flushed");
        replies.flush();
        assert!(replies.pending.is_empty());
    }
}
