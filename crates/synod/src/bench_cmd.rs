//! `synod bench`: load through etcd's v3 API against any endpoints — synod's
//! or etcd's — so the two can be compared on one machine with the same
//! client (`bench/vs-etcd` runs it against both).

use clap::{Args, ValueEnum};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use synod_etcd::pb::etcdserverpb as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// What each client does in a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Op {
    /// Put a value under one of `--keys` keys.
    Put,
    /// Linearizable range of one key (the keys are written first).
    Get,
    /// Serializable range of one key: answered by the member itself.
    GetSerializable,
    /// Compare-and-put: a transaction comparing the key's version, then
    /// putting it.
    Txn,
    /// Put, and time each put until a watcher on another endpoint sees it
    /// (the latency reported is put → event).
    WatchLatency,
    /// Keep-alives of `--leases` leases granted first, each client cycling
    /// through its share on one stream.
    LeaseKeepalive,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Comma-separated host:port list; clients are spread over them.
    #[arg(long, default_value = "127.0.0.1:2379,127.0.0.1:12379,127.0.0.1:22379")]
    endpoints: String,
    /// Concurrent clients (each waits for its answer before the next request).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Requests in total (ignored with --duration).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Run for this many seconds instead of a number of requests.
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of load before anything is measured.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    #[arg(long, value_enum, default_value = "put")]
    op: Op,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Authenticate as NAME:PASSWORD first and send the token with every
    /// request (the cost of auth on the request path).
    #[arg(long)]
    user: Option<String>,
    /// Leases for `--op lease-keepalive`.
    #[arg(long, default_value_t = 1000)]
    leases: usize,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> Result<ExitCode, String> {
    if args.clients == 0 || args.requests == 0 || args.keys == 0 || args.leases == 0 {
        return Err("--clients, --requests, --keys and --leases must be at least 1".into());
    }
    if args.duration.is_some_and(|d| d <= 0.0) || args.warmup < 0.0 {
        return Err("--duration must be positive and --warmup not negative".into());
    }
    if args.op == Op::WatchLatency && args.value_size < 8 {
        return Err("--op watch-latency needs --value-size of at least 8".into());
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(bench(args))
}

/// When a client stops, and from when its samples count.
#[derive(Clone, Copy)]
struct Plan {
    measure_from: Instant,
    /// `None`: stop after `per_client` requests.
    until: Option<Instant>,
    per_client: usize,
}

impl Plan {
    fn more(&self, done: usize) -> bool {
        match self.until {
            Some(t) => Instant::now() < t,
            None => done < self.per_client,
        }
    }
}

/// What one client measured.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    errors: usize,
}

impl Samples {
    fn record(&mut self, plan: &Plan, started: Instant, ok: bool) {
        if started < plan.measure_from {
            return;
        }
        if ok {
            self.latencies.push(started.elapsed());
        } else {
            self.errors += 1;
        }
    }
}

/// Adds a client's auth token to every request, as etcd's clients do.
#[derive(Clone)]
struct Token(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// A connection to one endpoint that sends the token, if any.
type Ch = tonic::service::interceptor::InterceptedService<Channel, Token>;

/// Authenticates as `user` (NAME:PASSWORD) through `ch`.
async fn login(ch: &Channel, user: &str) -> Result<Token, String> {
    let (name, password) = user
        .split_once(':')
        .ok_or_else(|| format!("--user {user:?}: give NAME:PASSWORD"))?;
    let r = pb::auth_client::AuthClient::new(ch.clone())
        .authenticate(pb::AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .map_err(|e| format!("--user {name}: {}", e.message()))?;
    let token = r.into_inner().token;
    let value = token
        .parse()
        .map_err(|_| "the server's token is not ASCII".to_string())?;
    Ok(Token(Some(value)))
}

async fn connect_as(endpoints: &str, user: Option<&str>) -> Result<Vec<Ch>, String> {
    let plain = connect(endpoints).await?;
    let token = match user {
        Some(u) => login(&plain[0], u).await?,
        None => Token(None),
    };
    Ok(plain
        .into_iter()
        .map(|ch| Ch::new(ch, token.clone()))
        .collect())
}

async fn connect(endpoints: &str) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::new();
    for ep in endpoints.split(',') {
        let url = format!("http://{}", ep.trim());
        let ch = Channel::from_shared(url.clone())
            .map_err(|e| format!("{ep}: {e}"))?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {ep}: {e}"))?;
        channels.push(ch);
    }
    Ok(channels)
}

fn key(i: usize, keys: usize) -> Vec<u8> {
    format!("bench/{:08}", i % keys).into_bytes()
}

async fn bench(args: BenchArgs) -> Result<ExitCode, String> {
    let channels = connect_as(&args.endpoints, args.user.as_deref()).await?;
    let value = vec![b'x'; args.value_size];
    if matches!(args.op, Op::Get | Op::GetSerializable) {
        let mut kv = pb::kv_client::KvClient::new(channels[0].clone());
        for i in 0..args.keys {
            kv.put(pb::PutRequest {
                key: key(i, args.keys),
                value: value.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("preparing keys: {e}"))?;
        }
    }
    let leases = if args.op == Op::LeaseKeepalive {
        grant(&channels[0], args.leases).await?
    } else {
        Vec::new()
    };
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let plan = Plan {
        measure_from,
        until: args
            .duration
            .map(|d| measure_from + Duration::from_secs_f64(d)),
        per_client: args.requests.div_ceil(args.clients),
    };
    let seen = Arc::new(std::sync::Mutex::new(Samples::default()));
    let watcher = if args.op == Op::WatchLatency {
        // On another endpoint than the first writers', when there is one.
        let ch = channels[1 % channels.len()].clone();
        Some(tokio::spawn(watch_latencies(ch, plan, start, seen.clone())))
    } else {
        None
    };
    let leases = Arc::new(leases);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let ch = channels[c % channels.len()].clone();
        let value = value.clone();
        let (op, keys, clients) = (args.op, args.keys, args.clients);
        let leases = leases.clone();
        tasks.push(tokio::spawn(async move {
            match op {
                Op::LeaseKeepalive => keep_alive(ch, plan, &leases, c, clients).await,
                _ => kv_client(ch, plan, op, c, keys, value, start).await,
            }
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        let s = t.await.map_err(|e| format!("client task: {e}"))?;
        all.latencies.extend(s.latencies);
        all.errors += s.errors;
    }
    let measured_until = Instant::now();
    if let Some(w) = watcher {
        // The last puts' events are on their way; give them a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        w.abort();
        // Only the watcher's samples mean anything for this workload.
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        all.latencies = std::mem::take(&mut seen.latencies);
    }
    let seconds = measured_until
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    let errors = all.errors;
    report(&args, channels.len(), all, seconds);
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn kv_client(
    ch: Ch,
    plan: Plan,
    op: Op,
    c: usize,
    keys: usize,
    mut value: Vec<u8>,
    start: Instant,
) -> Samples {
    let mut kv = pb::kv_client::KvClient::new(ch);
    let mut s = Samples::default();
    let mut i = 0;
    while plan.more(s.latencies.len() + s.errors) {
        let k = key(c * 7919 + i, keys);
        i += 1;
        let t = Instant::now();
        let ok = match op {
            Op::Put => kv
                .put(pb::PutRequest {
                    key: k,
                    value: value.clone(),
                    ..Default::default()
                })
                .await
                .is_ok(),
            Op::WatchLatency => {
                // The watcher reads when the put left from the value.
                let sent = start.elapsed().as_nanos() as u64;
                value[..8].copy_from_slice(&sent.to_le_bytes());
                kv.put(pb::PutRequest {
                    key: [b"bench/w/".as_slice(), &k].concat(),
                    value: value.clone(),
                    ..Default::default()
                })
                .await
                .is_ok()
            }
            Op::Get | Op::GetSerializable => kv
                .range(pb::RangeRequest {
                    key: k,
                    serializable: op == Op::GetSerializable,
                    ..Default::default()
                })
                .await
                .is_ok(),
            Op::Txn => kv.txn(compare_and_put(k, value.clone())).await.is_ok(),
            Op::LeaseKeepalive => unreachable!("keep_alive"),
        };
        s.record(&plan, t, ok);
    }
    s
}

/// Put `key` if its version is at least 0 (always): the comparison is
/// evaluated, the put applied, as in a compare-and-swap that wins.
fn compare_and_put(key: Vec<u8>, value: Vec<u8>) -> pb::TxnRequest {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Greater as i32,
            target: CompareTarget::Version as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::Version(-1)),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key,
                value,
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    }
}

/// Records put → event latencies into `seen` until aborted.
async fn watch_latencies(ch: Ch, plan: Plan, start: Instant, seen: Arc<std::sync::Mutex<Samples>>) {
    let (tx, rx) = mpsc::channel(1);
    let create = pb::WatchCreateRequest {
        key: b"bench/w/".to_vec(),
        range_end: b"bench/w0".to_vec(),
        ..Default::default()
    };
    let req = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    };
    if tx.send(req).await.is_err() {
        return;
    }
    let Ok(stream) = pb::watch_client::WatchClient::new(ch)
        .watch(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut stream = stream.into_inner();
    while let Ok(Some(r)) = stream.message().await {
        let now = start.elapsed().as_nanos() as u64;
        for e in r.events {
            let Some(v) = e.kv.as_ref().and_then(|kv| kv.value.get(..8)) else {
                continue;
            };
            let sent = u64::from_le_bytes(v.try_into().expect("8 bytes"));
            if start + Duration::from_nanos(sent) >= plan.measure_from {
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                s.latencies
                    .push(Duration::from_nanos(now.saturating_sub(sent)));
            }
        }
    }
    drop(tx);
}

async fn grant(ch: &Ch, n: usize) -> Result<Vec<i64>, String> {
    let mut lease = pb::lease_client::LeaseClient::new(ch.clone());
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let r = lease
            .lease_grant(pb::LeaseGrantRequest { ttl: 300, id: 0 })
            .await
            .map_err(|e| format!("granting leases: {e}"))?;
        ids.push(r.into_inner().id);
    }
    Ok(ids)
}

/// Keeps client `c`'s share of `leases` alive on one stream, one request at
/// a time.
async fn keep_alive(ch: Ch, plan: Plan, leases: &[i64], c: usize, clients: usize) -> Samples {
    let mut s = Samples::default();
    let mine: Vec<i64> = leases.iter().skip(c).step_by(clients).copied().collect();
    if mine.is_empty() {
        return s;
    }
    let (tx, rx) = mpsc::channel(1);
    // The first request is queued before the call: etcd sends the
    // response headers only with the first answer.
    let mut t = Instant::now();
    let first = pb::LeaseKeepAliveRequest { id: mine[0] };
    if tx.send(first).await.is_err() {
        return s;
    }
    let Ok(stream) = pb::lease_client::LeaseClient::new(ch)
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
    else {
        s.errors += 1;
        return s;
    };
    let mut stream = stream.into_inner();
    let mut i = 0;
    let mut sent = true;
    while plan.more(s.latencies.len() + s.errors) {
        if i > 0 {
            t = Instant::now();
            sent = tx
                .send(pb::LeaseKeepAliveRequest {
                    id: mine[i % mine.len()],
                })
                .await
                .is_ok();
        }
        let ok = sent && matches!(stream.message().await, Ok(Some(r)) if r.ttl > 0);
        s.record(&plan, t, ok);
        if !ok && !sent {
            break;
        }
        i += 1;
    }
    s
}

fn report(args: &BenchArgs, endpoints: usize, mut all: Samples, seconds: f64) {
    all.latencies.sort_unstable();
    let lat = &all.latencies;
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, ms)
    };
    let rate = lat.len() as f64 / seconds.max(1e-9);
    let op = args.op.to_possible_value().expect("no skipped variants");
    let op = op.get_name();
    if args.json {
        let j = serde_json::json!({
            "op": op,
            "clients": args.clients,
            "endpoints": endpoints,
            "value_size": args.value_size,
            "ops": lat.len(),
            "seconds": seconds,
            "ops_per_sec": rate,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "p999_ms": pct(0.999),
            "max_ms": lat.last().map_or(0.0, ms),
            "errors": all.errors,
            // This process's CPU (all threads, user and system) since it
            // started, warm-up included: the client shares the machine with
            // the servers it measures, and spends more per answer on some
            // servers than on others (see `bench/vs-etcd`).
            "cpu_s": own_cpu_seconds(),
        });
        println!("{j}");
    } else {
        println!(
            "{} {op} of {} B, {} clients over {endpoints} endpoints: {rate:.0} requests/s, latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, errors {}",
            lat.len(),
            args.value_size,
            args.clients,
            pct(0.50),
            pct(0.99),
            pct(0.999),
            lat.last().map_or(0.0, ms),
            all.errors
        );
    }
}

/// CPU seconds (user and system, every thread) this process has used so far,
/// or `None` if the system does not say.
fn own_cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` through the pointer, which points
    // at a live local of that type.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: getrusage succeeded, so it filled the struct (which was zeroed
    // before anyway).
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::own_cpu_seconds;

    #[test]
    fn own_cpu_seconds_grows_with_the_work_this_process_does() {
        let before = own_cpu_seconds().expect("getrusage answers on this system");
        assert!(before > 0.0, "a running test has used some CPU");
        let mut x = 0u64;
        for round in 0.. {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            if own_cpu_seconds().expect("getrusage answers") > before {
                break;
            }
            assert!(round < 10_000, "busy rounds never showed as CPU time");
        }
    }
}
