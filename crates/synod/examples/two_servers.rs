//! Two servers take a request to open the same account at the same time:
//! alice's reaches one, bob's the other. Each deciding alone, they keep
//! different owners for ever; both asking one write-once variable on synod,
//! they keep the same one. Run `cargo run --release -- up` first, then:
//!
//! ```text
//! $ cargo run --example two_servers
//! without consensus: server 1 says acct-1796347546 belongs to alice, server 2 says bob: diverged
//! through synod:     server 1 says acct-1796347546 belongs to bob, server 2 says bob: agreed
//! ```

use synod_client::{endpoints_from_env, stories};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let account = format!("acct-{}", now.as_secs());
    let t = stories::two_servers(&endpoints_from_env(), &account).await?;
    println!(
        "without consensus: server 1 says {account} belongs to {}, server 2 says {}: diverged",
        t.alone.0, t.alone.1
    );
    println!(
        "through synod:     server 1 says {account} belongs to {}, server 2 says {}: agreed",
        t.agreed.0, t.agreed.1
    );
    if t.agreed.0 != t.agreed.1 {
        return Err("the servers disagree through synod".into());
    }
    Ok(())
}
