//! A writer rolls out ten versions of a configuration key; a watcher on each
//! member applies every version, in the order written. Run
//! `cargo run --release -- up` first, then:
//!
//! ```text
//! $ cargo run --example config_watch
//! written: replicas=1, replicas=2, replicas=3, replicas=4, replicas=5, replicas=6, replicas=7, replicas=8, replicas=9, replicas=10
//! watcher on 127.0.0.1:2379: applied 10 versions: every version, in order
//! watcher on 127.0.0.1:12379: applied 10 versions: every version, in order
//! watcher on 127.0.0.1:22379: applied 10 versions: every version, in order
//! ```

use synod_client::{endpoints_from_env, stories};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let eps = endpoints_from_env();
    let c = stories::config_watch(&eps, "config/app", 10).await?;
    println!("written: {}", c.written.join(", "));
    for (ep, applied) in eps.iter().zip(&c.applied) {
        let verdict = if applied == &c.written {
            "every version, in order"
        } else {
            "MISSED OR REORDERED"
        };
        println!(
            "watcher on {ep}: applied {} versions: {verdict}",
            applied.len()
        );
    }
    if c.applied.iter().any(|a| a != &c.written) {
        return Err("a watcher missed or reordered a version".into());
    }
    Ok(())
}
