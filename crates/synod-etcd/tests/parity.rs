//! synod answers as etcd 3.4 does: each scenario of `scenarios/` runs against
//! an in-memory member and its transcript must equal the one recorded from a
//! real etcd in `golden/` (see `golden/README.md` to record them again).

mod common;
mod scenarios;

use synod_etcd::Limits;
use tonic::transport::Channel;

#[tokio::test]
async fn transcripts_match_etcd() {
    let mut differ = Vec::new();
    for (name, scenario) in scenarios::SCENARIOS {
        // A fresh member per scenario, as the recording uses a fresh etcd.
        let addr = common::serve(Limits::default()).await;
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let got = scenario(channel).await;
        let path = format!("{}/tests/golden/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let want: serde_json::Value = serde_json::from_str(&text).expect("golden file is JSON");
        if got != want {
            differ.push(format!("{name}:\n etcd:  {want}\n synod: {got}"));
        }
    }
    assert!(
        differ.is_empty(),
        "differs from etcd:\n{}",
        differ.join("\n")
    );
}
