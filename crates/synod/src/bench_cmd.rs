//! `synod bench`: load through etcd's v3 API against any endpoints — synod's
//! or etcd's — so the two can be compared on one machine.

use clap::Args;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use synod_etcd::pb::etcdserverpb as pb;
use tonic::transport::Channel;

#[derive(Args)]
pub struct BenchArgs {
    /// Comma-separated host:port list; clients are spread over them.
    #[arg(long, default_value = "127.0.0.1:2379,127.0.0.1:12379,127.0.0.1:22379")]
    endpoints: String,
    /// Concurrent clients (each waits for its answer before the next request).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Requests in total.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// `put`, or `get` (linearizable reads of keys written first).
    #[arg(long, default_value = "put")]
    op: String,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
}

pub fn run(args: BenchArgs) -> Result<ExitCode, String> {
    if args.clients == 0 || args.requests == 0 || args.keys == 0 {
        return Err("--clients, --requests and --keys must be at least 1".into());
    }
    if args.op != "put" && args.op != "get" {
        return Err(format!("--op must be put or get, not {:?}", args.op));
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(bench(args))
}

async fn bench(args: BenchArgs) -> Result<ExitCode, String> {
    let mut channels = Vec::new();
    for ep in args.endpoints.split(',') {
        let url = format!("http://{}", ep.trim());
        let ch = Channel::from_shared(url.clone())
            .map_err(|e| format!("{ep}: {e}"))?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {ep}: {e}"))?;
        channels.push(ch);
    }
    let value = vec![b'x'; args.value_size];
    let key = |i: usize| format!("bench/{:08}", i % args.keys).into_bytes();
    if args.op == "get" {
        let mut kv = pb::kv_client::KvClient::new(channels[0].clone());
        for i in 0..args.keys {
            kv.put(pb::PutRequest {
                key: key(i),
                value: value.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("preparing keys: {e}"))?;
        }
    }
    let per_client = args.requests.div_ceil(args.clients);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut kv = pb::kv_client::KvClient::new(channels[c % channels.len()].clone());
        let value = value.clone();
        let op = args.op.clone();
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            let mut errors = 0usize;
            for i in 0..per_client {
                let k = format!("bench/{:08}", (c * per_client + i) % keys).into_bytes();
                let t = Instant::now();
                let ok = if op == "put" {
                    kv.put(pb::PutRequest {
                        key: k,
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                } else {
                    kv.range(pb::RangeRequest {
                        key: k,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                };
                if ok {
                    latencies.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all: Vec<Duration> = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| format!("client task: {e}"))?;
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{} {}s of {} B, {} clients over {} endpoints: {:.0} requests/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}",
        all.len(),
        args.op,
        args.value_size,
        args.clients,
        channels.len(),
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        all.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        errors
    );
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
