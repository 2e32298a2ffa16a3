//! Twenty pickers, each on its own connection, each offer a different user
//! of the day to one write-once variable held by synod; every picker learns
//! the same winner. Run `cargo run --release -- up` first, then:
//!
//! ```text
//! $ cargo run --example user_of_the_day
//! day 2026-12-04: 20 pickers offered 20 different users
//! winner: user-16 (learned by all 20)
//! ```
//!
//! Endpoints: `synod up`'s, or `SYNOD_ENDPOINTS=host:port,...`. Run it again
//! for the same day and the winner does not change: the variable is decided.

use synod_client::{endpoints_from_env, stories};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let day = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "2026-12-04".into());
    let picks = stories::user_of_the_day(&endpoints_from_env(), &day, 20).await?;
    println!(
        "day {day}: {} pickers offered {} different users",
        picks.offered.len(),
        picks.offered.len()
    );
    let winner = &picks.learned[0];
    let agree = picks.learned.iter().filter(|l| *l == winner).count();
    println!("winner: {winner} (learned by all {agree})");
    if agree != picks.learned.len() {
        return Err("pickers disagree".into());
    }
    Ok(())
}
