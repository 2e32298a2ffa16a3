//! Four pushers push five commits each to one branch ref at the same time.
//! A push is a compare-and-swap on the ref's revision; a pusher that lost
//! the race rebases on the new head and tries again. The branch ends with
//! every push exactly once, in one order. Run `cargo run --release -- up`
//! first, then:
//!
//! ```text
//! $ cargo run --example branch_pushes
//! feature-1796347546: 20 commits, 28 pushes lost a race and rebased
//! history: p0c0 p0c1 p0c2 p3c0 p3c1 p2c0 p3c2 p2c1 p1c0 p0c3 p0c4 p1c1 p3c3 p3c4 p1c2 p2c2 p2c3 p1c3 p2c4 p1c4
//! ```

use synod_client::{endpoints_from_env, stories};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let branch = format!("feature-{}", now.as_secs());
    let b = stories::branch_pushes(&endpoints_from_env(), &branch, 4, 5).await?;
    println!(
        "{branch}: {} commits, {} pushes lost a race and rebased",
        b.history.len(),
        b.retries
    );
    println!("history: {}", b.history.join(" "));
    let mut unique = b.history.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != 20 || b.history.len() != 20 {
        return Err("a push was lost or applied twice".into());
    }
    Ok(())
}
