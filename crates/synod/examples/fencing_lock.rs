//! A lock with a timeout and a resource that checks fencing tokens. The
//! first holder takes the lock under a 2 s lease, then stalls without
//! renewing it; the lease runs out, a second holder takes the lock (a higher
//! token) and writes; the first wakes and writes with its old token, and the
//! resource refuses. Run `cargo run --release -- up` first, then:
//!
//! ```text
//! $ cargo run --example fencing_lock
//! first holder: token 4, then stalls past its 2 s lease
//! second holder: token 5, write accepted
//! first holder wakes: rejected "first holder's late update": token 4 is older than 5
//! resource log: ["second holder's update (token 5)"]
//! ```

use synod_client::{endpoints_from_env, stories};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let f = stories::fencing_lock(&endpoints_from_env(), "examples/fencing", 2).await?;
    println!(
        "first holder: token {}, then stalls past its 2 s lease",
        f.stale_token
    );
    match &f.next_write {
        Ok(()) => println!("second holder: token {}, write accepted", f.next_token),
        Err(e) => println!("second holder: token {}, {e}", f.next_token),
    }
    match &f.stale_write {
        Ok(()) => println!("first holder wakes: write ACCEPTED (fencing failed)"),
        Err(e) => println!("first holder wakes: {e}"),
    }
    println!("resource log: {:?}", f.log);
    if f.stale_write.is_ok() {
        return Err("a stale holder's write got through".into());
    }
    Ok(())
}
