//! Records what an etcd endpoint answers to the parity scenarios of
//! `tests/scenarios/`, one JSON file per scenario, for `tests/parity.rs` to hold
//! synod to. Run by `tests/golden/record.sh` against a fresh etcd:
//! `cargo run -p synod-etcd --example record_golden -- http://127.0.0.1:24379 OUT_DIR`.

#[path = "../tests/scenarios/mod.rs"]
mod scenarios;

use tonic::transport::Channel;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next().ok_or("usage: record_golden ENDPOINT OUT_DIR")?;
    let out = std::path::PathBuf::from(args.next().ok_or("usage: record_golden ENDPOINT OUT_DIR")?);
    for (name, scenario) in scenarios::SCENARIOS {
        let channel = Channel::from_shared(endpoint.clone())?.connect().await?;
        let transcript = scenario(channel).await;
        let path = out.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&transcript)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
