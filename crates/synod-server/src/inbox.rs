//! A member's inbox: a bounded channel whose one receiver, the member's
//! thread, sleeps in `ppoll` over its peers' sockets and an eventfd rather
//! than on the channel, so that a message from a peer wakes the member
//! itself instead of a reader thread that would then have to wake it.
//!
//! A sender that finds the receiver asleep rings the eventfd (the bell),
//! once per sleep however many send meanwhile. The receiver says it is
//! going to sleep before it looks at the channel a last time, and the
//! senders look whether it sleeps after they queued, both sequentially
//! consistent: either the receiver sees the message, or the sender sees the
//! receiver asleep and rings. A message is never left waiting for a
//! timeout.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Wakes the receiver from `ppoll`.
struct Bell {
    fd: OwnedFd,
    /// The receiver is (about to be) in `ppoll`.
    sleeping: AtomicBool,
    /// Someone rang since the receiver last woke.
    rung: AtomicBool,
}

impl Bell {
    fn new() -> io::Result<Bell> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new
        // descriptor that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Bell {
            // SAFETY: `fd` was just opened and is owned here alone.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
            rung: AtomicBool::new(false),
        })
    }

    /// After a message was queued: wakes the receiver if it sleeps.
    fn ring(&self) {
        fence(SeqCst);
        if self.sleeping.load(SeqCst) && !self.rung.swap(true, SeqCst) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to our eventfd. It
            // cannot fail but by overflow (2^64 - 1 rings), and a full
            // counter is readable, which is all a ring is for.
            let _ = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
        }
    }

    /// Empties the eventfd (after `ppoll` saw it readable).
    fn drain(&self) {
        let mut n = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer; EAGAIN (nothing
        // to read) is fine.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), n.as_mut_ptr().cast(), 8) };
    }
}

/// The sending half; cloned by every thread that hands the member work.
pub struct InboxTx<T> {
    tx: mpsc::SyncSender<T>,
    bell: Arc<Bell>,
}

impl<T> Clone for InboxTx<T> {
    fn clone(&self) -> Self {
        InboxTx {
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl<T> InboxTx<T> {
    /// Queues `m`, waiting while the inbox is full.
    pub fn send(&self, m: T) -> Result<(), mpsc::SendError<T>> {
        self.tx.send(m)?;
        self.bell.ring();
        Ok(())
    }

    /// Queues `m` unless the inbox is full.
    pub fn try_send(&self, m: T) -> Result<(), mpsc::TrySendError<T>> {
        self.tx.try_send(m)?;
        self.bell.ring();
        Ok(())
    }
}

/// The receiving half, the member thread's.
pub struct InboxRx<T> {
    rx: mpsc::Receiver<T>,
    bell: Arc<Bell>,
    fds: Vec<libc::pollfd>,
}

/// An inbox of at most `capacity` queued messages.
pub fn inbox<T>(capacity: usize) -> io::Result<(InboxTx<T>, InboxRx<T>)> {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let bell = Arc::new(Bell::new()?);
    let rx = InboxRx {
        rx,
        bell: bell.clone(),
        fds: Vec::new(),
    };
    Ok((InboxTx { tx, bell }, rx))
}

/// What [`InboxRx::wait`] woke for.
pub enum Woke<T> {
    Message(T),
    /// One of the sockets may be read, or the time ran out.
    Other,
}

impl<T> InboxRx<T> {
    pub fn try_recv(&self) -> Result<T, mpsc::TryRecvError> {
        self.rx.try_recv()
    }

    /// Waits up to `timeout` for a message, or for one of `sockets` to have
    /// something to read (data, its end, or an error). An error once every
    /// sender is gone.
    pub fn wait(
        &mut self,
        sockets: impl Iterator<Item = RawFd>,
        timeout: Duration,
    ) -> Result<Woke<T>, mpsc::RecvTimeoutError> {
        match self.rx.try_recv() {
            Ok(m) => return Ok(Woke::Message(m)),
            Err(mpsc::TryRecvError::Disconnected) => {
                return Err(mpsc::RecvTimeoutError::Disconnected)
            }
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let poll = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        self.fds.clear();
        self.fds.push(poll(self.bell.fd.as_raw_fd()));
        self.fds.extend(sockets.map(poll));
        self.bell.sleeping.store(true, SeqCst);
        fence(SeqCst);
        // The last look, now that senders know to ring.
        let queued = self.rx.try_recv();
        if !matches!(queued, Err(mpsc::TryRecvError::Empty)) {
            self.bell.sleeping.store(false, SeqCst);
            return match queued {
                Ok(m) => Ok(Woke::Message(m)),
                Err(_) => Err(mpsc::RecvTimeoutError::Disconnected),
            };
        }
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a live, initialised array of `fds.len()` entries,
        // and `ts` a live timespec; no signal mask is passed.
        let n = unsafe {
            libc::ppoll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        self.bell.sleeping.store(false, SeqCst);
        self.bell.rung.store(false, SeqCst);
        if n > 0 && self.fds[0].revents != 0 {
            self.bell.drain();
        }
        match self.rx.try_recv() {
            Ok(m) => Ok(Woke::Message(m)),
            Err(mpsc::TryRecvError::Disconnected) => Err(mpsc::RecvTimeoutError::Disconnected),
            Err(mpsc::TryRecvError::Empty) => Ok(Woke::Other),
        }
    }
}

/// Whether any of `sockets` has something to read now (one `poll` that
/// does not wait; false for none).
pub fn any_readable(sockets: impl Iterator<Item = RawFd>) -> bool {
    let mut fds: [libc::pollfd; 8] = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 8];
    let mut n = 0;
    for fd in sockets {
        if n == fds.len() {
            // More peers than a cluster has: say yes rather than look.
            return true;
        }
        fds[n].fd = fd;
        n += 1;
    }
    if n == 0 {
        return false;
    }
    // SAFETY: the first `n` entries of a live array of pollfds.
    unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, 0) > 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sender on another thread wakes a receiver asleep with a long
    /// timeout, every time: a lost ring would show as a wait of seconds.
    #[test]
    fn a_send_wakes_a_sleeping_receiver() {
        let (tx, mut rx) = inbox::<u32>(16).unwrap();
        let rounds = 200;
        let sender = std::thread::spawn(move || {
            for i in 0..rounds {
                tx.send(i).unwrap();
                if i % 7 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let started = Instant::now();
        let mut got = Vec::new();
        while got.len() < rounds as usize {
            match rx
                .wait(std::iter::empty(), Duration::from_secs(30))
                .unwrap()
            {
                Woke::Message(m) => got.push(m),
                Woke::Other => {
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "woke with nothing: a ring was lost"
                    );
                }
            }
            while let Ok(m) = rx.try_recv() {
                got.push(m);
            }
        }
        sender.join().unwrap();
        assert_eq!(got, (0..rounds).collect::<Vec<_>>());
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    /// A readable socket ends the wait, with no message.
    #[test]
    fn a_readable_socket_wakes_the_receiver() {
        use std::io::Write;
        let (_tx, mut rx) = inbox::<u32>(1).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.write_all(b"x").unwrap();
        let woke = rx.wait([b.as_raw_fd()].into_iter(), Duration::from_secs(30));
        assert!(matches!(woke, Ok(Woke::Other)));
        let idle = rx.wait(std::iter::empty(), Duration::from_millis(1));
        assert!(matches!(idle, Ok(Woke::Other)));
    }

    #[test]
    fn the_receiver_hears_that_every_sender_is_gone() {
        let (tx, mut rx) = inbox::<u32>(1).unwrap();
        drop(tx);
        let woke = rx.wait(std::iter::empty(), Duration::from_secs(30));
        assert!(matches!(woke, Err(mpsc::RecvTimeoutError::Disconnected)));
    }
}
