//! The write-once variable: the smallest thing consensus decides.
//!
//! `try_initialize(v)` offers a value; the first offer to take effect wins and
//! every later one is ignored. `final_value()` yields the winner to everyone,
//! forever. The local and shared versions here decide within one process; the
//! distributed versions ([`crate::coordinator`], [`crate::majority`],
//! [`crate::paxos`]) decide among many nodes and report the same outcome as a
//! [`Decided`] event.

use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex};
use std::task::{Context, Poll, Waker};

/// The event every distributed write-once node reports when it learns the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided<V>(pub V);

/// A distributed write-once node: lets checkers ask what it currently knows.
pub trait WriteOnceNode<V> {
    /// The value this node knows to be final, if it knows one.
    fn decided(&self) -> Option<&V>;
}

/// The write-once variable as an application uses it, wherever it lives: in
/// this process ([`LocalWriteOnce`], [`SharedWriteOnce`]), on simulated nodes
/// (`synod_sim::sim_write_once`) or in a synod cluster (`synod_client`). The
/// same application code runs on all of them.
///
/// Both calls resolve to the *final* value, not to whether this caller won:
/// an application that offered a value learns what was decided either way,
/// which is the only thing it may act on.
pub trait WriteOnce<T> {
    /// Why a variable could not answer (never for the in-process ones).
    type Error: std::fmt::Debug;

    /// Offers `value`; resolves to the value that won, this one or an
    /// earlier offer.
    fn try_initialize(&self, value: T) -> impl Future<Output = Result<T, Self::Error>>;

    /// Resolves to the value once one has won, waiting until then.
    fn final_value(&self) -> impl Future<Output = Result<T, Self::Error>>;
}

impl<T: Clone> WriteOnce<T> for LocalWriteOnce<T> {
    type Error = std::convert::Infallible;

    async fn try_initialize(&self, value: T) -> Result<T, Self::Error> {
        LocalWriteOnce::try_initialize(self, value);
        Ok(self
            .get()
            .expect("decided by the offer just made or an earlier one"))
    }

    async fn final_value(&self) -> Result<T, Self::Error> {
        Ok(LocalWriteOnce::final_value(self).await)
    }
}

impl<T: Clone> WriteOnce<T> for SharedWriteOnce<T> {
    type Error = std::convert::Infallible;

    async fn try_initialize(&self, value: T) -> Result<T, Self::Error> {
        SharedWriteOnce::try_initialize(self, value);
        Ok(self
            .get()
            .expect("decided by the offer just made or an earlier one"))
    }

    async fn final_value(&self) -> Result<T, Self::Error> {
        Ok(SharedWriteOnce::final_value(self).await)
    }
}

/// A write-once variable for one thread.
#[derive(Debug, Default)]
pub struct LocalWriteOnce<T> {
    value: RefCell<Option<T>>,
    waiters: RefCell<Vec<Waker>>,
}

impl<T: Clone> LocalWriteOnce<T> {
    pub fn new() -> Self {
        LocalWriteOnce {
            value: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
        }
    }

    /// Offers `value`; returns true if this call decided the variable.
    pub fn try_initialize(&self, value: T) -> bool {
        let mut slot = self.value.borrow_mut();
        if slot.is_some() {
            return false;
        }
        *slot = Some(value);
        drop(slot);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
        true
    }

    /// The decided value, if any (polling form).
    pub fn get(&self) -> Option<T> {
        self.value.borrow().clone()
    }

    /// A future that resolves to the decided value.
    pub fn final_value(&self) -> FinalValue<'_, Self> {
        FinalValue { var: self }
    }
}

/// A write-once variable shared between threads.
#[derive(Debug, Default)]
pub struct SharedWriteOnce<T> {
    state: Mutex<(Option<T>, Vec<Waker>)>,
    set: Condvar,
}

impl<T: Clone> SharedWriteOnce<T> {
    pub fn new() -> Self {
        SharedWriteOnce {
            state: Mutex::new((None, Vec::new())),
            set: Condvar::new(),
        }
    }

    /// Offers `value`; returns true if this call decided the variable.
    pub fn try_initialize(&self, value: T) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0.is_some() {
            return false;
        }
        st.0 = Some(value);
        let wakers = std::mem::take(&mut st.1);
        drop(st);
        self.set.notify_all();
        wakers.into_iter().for_each(Waker::wake);
        true
    }

    /// The decided value, if any (polling form).
    pub fn get(&self) -> Option<T> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Blocks the calling thread until the variable is decided.
    pub fn wait(&self) -> T {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = &st.0 {
                return v.clone();
            }
            st = self.set.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A future that resolves to the decided value.
    pub fn final_value(&self) -> FinalValue<'_, Self> {
        FinalValue { var: self }
    }
}

/// Something a [`FinalValue`] future can wait on.
pub trait Awaitable {
    type Value;
    fn poll_value(&self, cx: &mut Context<'_>) -> Poll<Self::Value>;
}

impl<T: Clone> Awaitable for LocalWriteOnce<T> {
    type Value = T;
    fn poll_value(&self, cx: &mut Context<'_>) -> Poll<T> {
        match self.get() {
            Some(v) => Poll::Ready(v),
            None => {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T: Clone> Awaitable for SharedWriteOnce<T> {
    type Value = T;
    fn poll_value(&self, cx: &mut Context<'_>) -> Poll<T> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &st.0 {
            Some(v) => Poll::Ready(v.clone()),
            None => {
                // Registered under the lock, so a concurrent try_initialize cannot slip
                // between the check and the registration and leave us asleep.
                st.1.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The future returned by `final_value()`.
pub struct FinalValue<'a, W> {
    var: &'a W,
}

impl<W: Awaitable> Future for FinalValue<'_, W> {
    type Output = W::Value;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<W::Value> {
        self.var.poll_value(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn local_first_offer_wins_and_wakes_the_waiter() {
        let v = LocalWriteOnce::new();
        let counter = Arc::new(CountWake(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = v.final_value();
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        assert!(v.try_initialize("ship"));
        assert!(!v.try_initialize("cancel"));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready("ship"));
        assert_eq!(v.get(), Some("ship"));
    }

    #[test]
    fn shared_many_threads_one_value() {
        let v = Arc::new(SharedWriteOnce::new());
        let threads: Vec<_> = (0..16u64)
            .map(|t| {
                let v = v.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut won = 0;
                    for i in 0..1_000u64 {
                        if v.try_initialize(t * 1_000 + i) {
                            won += 1;
                        }
                        if let Some(x) = v.get() {
                            seen.push(x);
                        }
                    }
                    (won, seen, v.wait())
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: u32 = results.iter().map(|r| r.0).sum();
        assert_eq!(winners, 1, "exactly one offer takes effect");
        let decided = v.get().unwrap();
        for (_, seen, waited) in &results {
            assert_eq!(*waited, decided);
            assert!(
                seen.iter().all(|x| *x == decided),
                "a reader saw a second value"
            );
        }
    }
}
