//! Three candidate processes campaign for one election; an observer prints
//! the leader; the leader's process is killed (SIGKILL: no resignation), and
//! once its 2 s lease runs out another candidate takes over, which the
//! observer sees. Run `cargo run --release -- up` first, then:
//!
//! ```text
//! $ cargo run --example leader_election
//! observed leader: candidate-0
//! killed candidate-0's process; its lease runs out
//! observed leader: candidate-1 (took over)
//! ```
//!
//! The candidates are this program run again as `leader_election candidate NAME`.

use synod_client::{endpoints_from_env, stories};

const ELECTION: &str = "examples/pilot";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let eps = endpoints_from_env();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("candidate") {
        let name = args.get(2).ok_or("usage: leader_election candidate NAME")?;
        stories::candidate(&eps, ELECTION, name, 2).await?;
        return Ok(());
    }
    let me = std::env::current_exe()?;
    let s = stories::leader_election(&eps, ELECTION, 3, |name| {
        std::process::Command::new(&me)
            .args(["candidate", name])
            .spawn()
            .expect("a candidate process starts")
    })
    .await?;
    println!("observed leader: {}", s.observed[0]);
    println!("killed {}'s process; its lease runs out", s.killed);
    println!("observed leader: {} (took over)", s.observed[1]);
    Ok(())
}
