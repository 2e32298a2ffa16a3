//! What the service's integration tests share.

use std::sync::atomic::{AtomicU32, Ordering};

/// A loopback port nobody listens on, for a member to bind.
///
/// Taken below the kernel's ephemeral range (32768 and up on Linux), so the
/// outgoing connections that tests open in parallel can never be handed the
/// same port between this check and the member's bind; and counted per
/// process, so two tests of one binary never pick the same one.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = (std::process::id() % 100) * 200;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // 10000..32000: below the ephemeral range.
        let port = (10_000 + (base + n) % 22_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
