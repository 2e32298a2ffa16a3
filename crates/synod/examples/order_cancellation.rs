//! A shipper and a canceller race to decide an order's fate through one
//! write-once variable: exactly one wins, and both learn which. Run
//! `cargo run --release -- up` first, then:
//!
//! ```text
//! $ cargo run --example order_cancellation
//! order o-1796347424: shipper learned "cancelled", canceller learned "cancelled"
//! ```

use synod_client::{endpoints_from_env, stories};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let order = std::env::args().nth(1).unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("o-{}", now.as_secs())
    });
    let fate = stories::order_cancellation(&endpoints_from_env(), &order).await?;
    println!(
        "order {order}: shipper learned {:?}, canceller learned {:?}",
        fate.shipper_learned, fate.canceller_learned
    );
    if fate.shipper_learned != fate.canceller_learned {
        return Err("the order has two fates".into());
    }
    Ok(())
}
