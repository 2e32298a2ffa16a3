//! `synod serve`: one member in this process, configured with etcd's flags
//! (and their `ETCD_*` environment variables), so that the systemd units,
//! manifests and scripts written for etcd start synod unchanged.

use crate::etcd_flags::{go_duration, EtcdOnlyArgs};
use crate::signals::stop_signal;
use clap::Args;
use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use synod_etcd::Limits;
use synod_server::cluster::{start_member_on, ClusterSpec, GrpcTuning, Listen, MemberSpec, Tuning};
use synod_server::compactor::AutoCompaction;
use synod_server::engines::EngineChoice;
use synod_server::peer::PeerTls;
use synod_server::tls::TlsFiles;

/// etcd's flags, names, defaults and meanings (etcd 3.4).
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// etcd's YAML configuration file; when given, the command line and the
    /// ETCD_* variables are ignored, as in etcd.
    #[arg(long, env = "ETCD_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// Human-readable name of this member; must appear in --initial-cluster.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Where this member keeps its WAL and snapshots (default: NAME.etcd).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,
    /// This member's client URLs as told to the rest of the cluster and to clients.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic (one).
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,
    /// This member's peer URLs as the other members reach it.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Every initial member as NAME=PEER_URL, comma-separated (the same on every member).
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER",
        default_value = "default=http://localhost:2380"
    )]
    pub initial_cluster: String,
    /// `new` to bootstrap the cluster; `existing` to restart a member on its data.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Makes the cluster's and members' ids unique to this cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Milliseconds between leader heartbeats (one tick).
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Milliseconds without a leader before a follower campaigns.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Applied entries between snapshots (etcd's default is 100,000; synod's
    /// snapshots copy the store, so it takes them more often by default). A
    /// snapshot also waits until the commands applied since the last one are
    /// as large as it, so that a large store is not rewritten every few
    /// thousand small writes.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 1000)]
    pub snapshot_count: u64,
    /// How large the commands applied since the last snapshot must be, as a
    /// percentage of it, before the next is taken (synod only). Each snapshot
    /// rewrites the whole store, and the log since the last one is held in
    /// memory: lower values hold less memory at the price of more snapshots.
    #[arg(long, env = "SYNOD_SNAPSHOT_LOG_PERCENT", default_value_t = synod_server::cluster::DEFAULT_SNAPSHOT_LOG_PERCENT)]
    pub snapshot_log_percent: u64,
    /// Largest client request accepted, in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Most operations in one transaction branch.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Seconds an auth token stays valid without use.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// Auth tokens: `simple` (synod's signed tokens), or
    /// `jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m` as in etcd.
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// bcrypt's cost for hashing passwords (4 to 31).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = synod_etcd::BCRYPT_COST)]
    pub bcrypt_cost: u32,
    /// How often a watcher that asked for progress notifications, and got
    /// no events since the last, is told the revision it is at (a Go
    /// duration; 0: the default; at least 100ms).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = go_duration
    )]
    pub experimental_watch_progress_notify_interval: Duration,
    /// Largest frame taken from a peer, in bytes (synod only; etcd has no
    /// such flag). A snapshot of the whole store travels in one frame, so
    /// this must exceed the store's encoded size.
    #[arg(long, env = "SYNOD_MAX_PEER_FRAME_BYTES", default_value_t = synod_server::peer::MAX_FRAME)]
    pub max_peer_frame_bytes: usize,
    /// Bytes the store may hold before the NOSPACE alarm refuses writes that
    /// take space; 0: etcd's default, 2 GiB; negative: no quota.
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: i64,
    /// `periodic` (keep --auto-compaction-retention of history, a duration;
    /// a bare number counts hours) or `revision` (keep that many revisions).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Auto compaction retention; 0 = off.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Refuse membership changes that would leave the cluster without a
    /// working quorum (too few started members, or peers not connected for
    /// 5 s). `--strict-reconfig-check=false` turns it off.
    #[arg(
        long,
        env = "ETCD_STRICT_RECONFIG_CHECK",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub strict_reconfig_check: bool,
    /// The consensus engine under the store: `raft` (etcd's, and the
    /// default) or `multipaxos` (the log of write-once slots; no learners,
    /// leadership moves by election only). Every member of a cluster must
    /// run the same one, and a data directory stays with the engine that
    /// wrote it.
    #[arg(long, env = "SYNOD_ENGINE", default_value = "raft")]
    pub engine: EngineChoice,
    /// A deliberate bug, to show that `synod chaos` catches it (builds with
    /// the `broken` feature only; never for real use): see
    /// `unsafe_bugs` for the names.
    #[arg(long, hide = true, value_name = "NAME")]
    pub unsafe_bug: Option<String>,
    /// More URLs to serve /metrics, /health and /version on (HTTP only, no
    /// gRPC), besides the client URLs.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    /// `capnslog` (plain lines) or `zap` (JSON lines, as etcd's zap logger
    /// writes them).
    #[arg(long, env = "ETCD_LOGGER", default_value = "capnslog")]
    pub logger: String,
    /// debug, info, warn, error, panic or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Certificate (PEM) this member presents to clients on https:// client URLs.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Demand a client certificate signed by --trusted-ca-file; its common
    /// name is the user when auth is enabled.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// CA certificates (PEM) that sign client certificates.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Serve https:// client URLs with a self-signed certificate made at
    /// first start (kept in the data directory).
    #[arg(long, env = "ETCD_AUTO_TLS", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub auto_tls: bool,
    /// Certificate (PEM) this member presents to its peers (https:// peer URLs).
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Demand a certificate signed by --peer-trusted-ca-file from every peer.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// CA certificates (PEM) that sign the peers' certificates.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Talk to peers over TLS with a self-signed certificate (encrypted, not
    /// authenticated).
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_auto_tls: bool,
    /// The rest of etcd's flags: honoured, said to have no effect, or
    /// refused (see `etcd_flags`).
    #[command(flatten)]
    pub etcd: EtcdOnlyArgs,
}

/// A parsed `http://host:port` or `https://host:port` URL.
struct Url {
    text: String,
    host: String,
    port: u16,
    /// `https`: served or dialled over TLS.
    secure: bool,
}

fn parse_url(flag: &str, text: &str) -> Result<Url, String> {
    let text = text.trim();
    let (rest, secure) = match text.split_once("://") {
        Some(("http", rest)) => (rest, false),
        Some(("https", rest)) => (rest, true),
        Some((scheme, _)) => {
            return Err(format!(
                "{flag}: {text}: URL scheme {scheme:?} is not supported; use http:// or https://"
            ))
        }
        None => {
            return Err(format!(
                "{flag}: {text}: URL must start with http:// or https://"
            ))
        }
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('/') {
        return Err(format!("{flag}: {text}: URL must not have a path"));
    }
    let (host, port) = hostport
        .rsplit_once(':')
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| format!("{flag}: {text}: URL must give a host and a port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{flag}: {text}: {port:?} is not a port"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(Url {
        text: text.to_string(),
        host,
        port,
        secure,
    })
}

fn parse_urls(flag: &str, list: &str) -> Result<Vec<Url>, String> {
    let urls: Vec<Url> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|u| parse_url(flag, u))
        .collect::<Result<_, _>>()?;
    if urls.is_empty() {
        return Err(format!("{flag}: no URL given"));
    }
    Ok(urls)
}

/// The address to bind or dial for `url`: its IPv4 address if it has one
/// (as Go resolves "localhost"), else its first.
fn resolve(flag: &str, url: &Url) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("{flag}: {}: cannot resolve {}: {e}", url.text, url.host))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{flag}: {}: {} has no address", url.text, url.host))
}

/// What a member is asked to be, checked.
#[derive(Debug)]
pub struct Plan {
    pub spec: ClusterSpec,
    pub index: usize,
    pub listen: Listen,
    /// etcd flags that were set and have no effect here, each with why.
    pub notices: Vec<String>,
    /// `--wal-dir`: where the WAL goes, linked from the data directory.
    pub wal_dir: Option<PathBuf>,
    /// Where the log goes (`--log-outputs`).
    pub log_outputs: Vec<crate::logs::Output>,
}

/// etcd's quota when `--quota-backend-bytes` is 0.
const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

/// Checks the flags as etcd does and builds the member's plan; every refusal
/// names the flag.
pub fn plan(a: &ServeArgs) -> Result<Plan, String> {
    check_values(a)?;
    let mut notices = a.etcd.check()?;
    let log_outputs = crate::logs::outputs(&a.logger, &a.etcd.log_outputs)
        .map_err(|e| format!("--log-outputs: {e}"))?;
    if a.heartbeat_interval == 0 {
        return Err("--heartbeat-interval must be > 0 ms".into());
    }
    if 5 * a.heartbeat_interval > a.election_timeout {
        return Err(format!(
            "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
            a.election_timeout, a.heartbeat_interval
        ));
    }
    if a.election_timeout > 50_000 {
        return Err(format!(
            "--election-timeout[{}ms] is too long, and should be set less than 50000ms",
            a.election_timeout
        ));
    }
    if a.max_txn_ops == 0 || a.max_request_bytes == 0 {
        return Err("--max-txn-ops and --max-request-bytes must be > 0".into());
    }
    let advertise_peers = parse_urls(
        "--initial-advertise-peer-urls",
        &a.initial_advertise_peer_urls,
    )?;
    let advertise_clients = parse_urls("--advertise-client-urls", &a.advertise_client_urls)?;
    let listen_clients = parse_urls("--listen-client-urls", &a.listen_client_urls)?;
    let listen_peers = parse_urls("--listen-peer-urls", &a.listen_peer_urls)?;
    // One scheme between members: all of them speak TLS, or none does.
    let peer_secure = listen_peers[0].secure;
    let client_secure = listen_clients.iter().any(|u| u.secure);
    let mut unchecked = |applies: bool, flag: &str, what: &str| {
        if applies {
            notices.push(format!(
                "{flag} has no effect: the {what} URLs are http://, so no certificate is presented"
            ));
        }
    };
    unchecked(
        !peer_secure && a.etcd.peer_allowed()?.is_some(),
        "--peer-cert-allowed-cn/hostname",
        "peer",
    );
    unchecked(
        !client_secure && a.etcd.client_allowed()?.is_some(),
        "--client-cert-allowed-hostname",
        "client",
    );
    unchecked(
        !peer_secure && !client_secure && a.etcd.cipher_suites()?.is_some(),
        "--cipher-suites",
        "client and peer",
    );
    if let Some(u) = advertise_peers.iter().find(|u| u.secure != peer_secure) {
        return Err(format!(
            "--initial-advertise-peer-urls {}: peer URLs must all be http:// or all https://",
            u.text
        ));
    }
    if listen_peers.len() > 1 {
        return Err("--listen-peer-urls: synod listens for peers on one URL only".into());
    }
    // etcd: a member named other than "default" with the default
    // --initial-cluster is a cluster of itself alone.
    let initial_cluster =
        if a.initial_cluster == "default=http://localhost:2380" && a.name != "default" {
            advertise_peers
                .iter()
                .map(|u| format!("{}={}", a.name, u.text))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            a.initial_cluster.clone()
        };
    let members = initial_members(&initial_cluster)?;
    let Some(mine) = members.iter().find(|m| m.name == a.name) else {
        return Err(format!(
            "--initial-cluster has no member named {:?} (--name); it lists {}",
            a.name,
            members
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let mut listed: Vec<&str> = mine.peer_urls.iter().map(String::as_str).collect();
    let mut advertised: Vec<&str> = advertise_peers.iter().map(|u| u.text.as_str()).collect();
    listed.sort_unstable();
    advertised.sort_unstable();
    if listed != advertised {
        return Err(format!(
            "--initial-cluster gives {} the peer URLs {}, but --initial-advertise-peer-urls says {}",
            a.name,
            listed.join(","),
            advertised.join(",")
        ));
    }
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", a.name)));
    let has_data = std::fs::read_dir(&data_dir).is_ok_and(|mut d| d.next().is_some());
    let wal_dir = a.etcd.wal_dir();
    crate::wal_dir::check(&data_dir, wal_dir.as_deref())?;
    let joining = match a.initial_cluster_state.as_str() {
        "new" => false,
        "existing" => true,
        other => {
            return Err(format!(
                "--initial-cluster-state: {other:?} is neither \"new\" nor \"existing\""
            ))
        }
    };
    let mut specs = Vec::new();
    for m in &members {
        let first = parse_url("--initial-cluster", &m.peer_urls[0])?;
        let me = m.name == a.name;
        specs.push(MemberSpec {
            name: m.name.clone(),
            member_id: 0,
            client: if me {
                resolve("--advertise-client-urls", &advertise_clients[0])?
            } else {
                SocketAddr::from(([0, 0, 0, 0], 0))
            },
            client_urls: if me {
                advertise_clients.iter().map(|u| u.text.clone()).collect()
            } else {
                Vec::new()
            },
            peer: resolve("--initial-cluster", &first)?,
            peer_urls: m.peer_urls.clone(),
            data_dir: data_dir.clone(),
        });
    }
    let tick = Duration::from_millis(a.heartbeat_interval);
    let election = Duration::from_millis(a.election_timeout);
    let (bugs, api_bugs) = unsafe_bugs(a.unsafe_bug.as_deref())?;
    let tuning = Tuning {
        tick,
        election,
        snapshot_every: a.snapshot_count,
        snapshot_log_percent: a.snapshot_log_percent,
        limits: Limits {
            max_request_bytes: a.max_request_bytes,
            max_txn_ops: a.max_txn_ops,
            min_lease_ttl: Limits::min_lease_ttl_for(tick, election),
            auth_token_ttl: Duration::from_secs(a.auth_token_ttl),
            bcrypt_cost: bcrypt_cost(a.bcrypt_cost),
            watch_progress_notify_interval: progress_interval(
                a.experimental_watch_progress_notify_interval,
            ),
        },
        max_peer_frame: a.max_peer_frame_bytes,
        quota_bytes: match a.quota_backend_bytes {
            0 => DEFAULT_QUOTA_BYTES,
            q if q < 0 => 0,
            q => q as u64,
        },
        auto_compaction: AutoCompaction::parse(
            &a.auto_compaction_mode,
            &a.auto_compaction_retention,
        )?,
        strict_reconfig: a.strict_reconfig_check,
        engine: a.engine,
        bugs,
        api_bugs,
        jwt: match a.auth_token.starts_with("jwt") {
            true => Some(Arc::new(
                synod_etcd::JwtKeys::from_options(&a.auth_token)
                    .map_err(|e| format!("--auth-token: {e}"))?,
            )),
            false => None,
        },
        pre_vote: a.etcd.pre_vote.unwrap_or(true),
        grpc: GrpcTuning {
            max_concurrent_streams: a.etcd.max_concurrent_streams,
            keepalive_interval: a.etcd.grpc_keepalive_interval,
            keepalive_timeout: a.etcd.grpc_keepalive_timeout,
            handling_times: a.etcd.metrics == "extensive",
        },
        cors: synod_etcd::Cors::parse(&a.etcd.cors),
        host_whitelist: synod_etcd::HostWhitelist::parse(&a.etcd.host_whitelist),
    };
    let peer_files = TlsFiles {
        cert_file: a.peer_cert_file.clone(),
        key_file: a.peer_key_file.clone(),
        trusted_ca_file: a.peer_trusted_ca_file.clone(),
        client_cert_auth: a.peer_client_cert_auth,
        auto_tls: a.peer_auto_tls,
        crl_file: a.etcd.peer_crl_file(),
        allowed: a.etcd.peer_allowed()?,
        cipher_suites: a.etcd.cipher_suites()?.map(|c| c.tls12),
    };
    let peer_tls = if peer_secure {
        let hosts: Vec<String> = advertise_peers.iter().map(|u| u.host.clone()).collect();
        let dir = data_dir.join("fixtures").join("peer");
        let server = peer_files.server_config(&dir, &hosts);
        let client = peer_files.client_config(&dir, &hosts);
        let (server, client) = server
            .and_then(|s| client.map(|c| (s, c)))
            .map_err(|e| format!("--listen-peer-urls {}: {e}", listen_peers[0].text))?;
        let tls = PeerTls::new((*server).clone(), client);
        Some(Arc::new(
            match a.etcd.experimental_peer_skip_client_san_verification {
                Some(true) => tls.skip_address_check(),
                _ => tls,
            },
        ))
    } else {
        None
    };
    if let Some(u) = members
        .iter()
        .flat_map(|m| &m.peer_urls)
        .find(|u| u.starts_with("https://") != peer_secure)
    {
        return Err(format!(
            "--initial-cluster: {u}: peer URLs must all be http:// or all https://"
        ));
    }
    let mut spec = ClusterSpec::new(&a.initial_cluster_token, specs, tuning);
    if joining {
        let mine: Vec<String> = advertise_peers.iter().map(|u| u.text.clone()).collect();
        existing_cluster(
            &mut spec,
            &a.name,
            &mine,
            &data_dir,
            has_data,
            peer_tls.as_deref(),
        )?;
    }
    let index = spec.index_of(&a.name).expect("this member is in the spec");
    let client_files = TlsFiles {
        cert_file: a.cert_file.clone(),
        key_file: a.key_file.clone(),
        trusted_ca_file: a.trusted_ca_file.clone(),
        client_cert_auth: a.client_cert_auth,
        auto_tls: a.auto_tls,
        crl_file: a.etcd.client_crl_file(),
        allowed: a.etcd.client_allowed()?,
        cipher_suites: a.etcd.cipher_suites()?.map(|c| c.tls12),
    };
    let resolve_all = |urls: &[&Url]| {
        urls.iter()
            .map(|u| resolve("--listen-client-urls", u))
            .collect::<Result<Vec<_>, _>>()
    };
    let (secure, plain): (Vec<&Url>, Vec<&Url>) = listen_clients.iter().partition(|u| u.secure);
    let client_tls = if secure.is_empty() {
        None
    } else {
        let hosts: Vec<String> = secure.iter().map(|u| u.host.clone()).collect();
        if let Some(suites) = &client_files.cipher_suites {
            synod_server::tls::check_http2_suites(suites)?;
        }
        let cfg = client_files
            .server_config(&data_dir.join("fixtures").join("client"), &hosts)
            .map_err(|e| format!("--listen-client-urls {}: {e}", secure[0].text))?;
        Some(cfg)
    };
    let listen = Listen {
        clients: resolve_all(&plain)?,
        secure_clients: resolve_all(&secure)?,
        client_tls,
        peer: resolve("--listen-peer-urls", &listen_peers[0])?,
        peer_tls,
        metrics: if a.listen_metrics_urls.trim().is_empty() {
            Vec::new()
        } else {
            parse_urls("--listen-metrics-urls", &a.listen_metrics_urls)?
                .iter()
                .map(|u| match u.secure {
                    true => Err(format!(
                        "--listen-metrics-urls: {}: metrics are served without TLS; use http://",
                        u.text
                    )),
                    false => Ok(u),
                })
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .map(|u| resolve("--listen-metrics-urls", u))
                .collect::<Result<_, _>>()?
        },
    };
    Ok(Plan {
        spec,
        index,
        listen,
        notices,
        wal_dir,
        log_outputs,
    })
}

/// `--initial-cluster-state existing`: the member belongs to a running
/// cluster whose id, and its own, do not follow from the flags (a member
/// added with `etcdctl member add` gets an id of its own). On its data it
/// reads them from its WAL; without data it asks the other members listed
/// in `--initial-cluster`, finds itself by its peer URLs, and joins.
fn existing_cluster(
    spec: &mut ClusterSpec,
    name: &str,
    my_peer_urls: &[String],
    data_dir: &std::path::Path,
    has_data: bool,
    tls: Option<&PeerTls>,
) -> Result<(), String> {
    spec.joining = true;
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    if has_data {
        let owner = synod_storage::owner(&synod_storage::RealFs, &data_dir.join("wal"))
            .map_err(|e| format!("{}: {e}", data_dir.display()))?
            .ok_or_else(|| {
                format!(
                    "--initial-cluster-state existing: {} holds no WAL to restart from; \
                     empty the directory to join the cluster afresh",
                    data_dir.display()
                )
            })?;
        spec.cluster_id = owner.cluster_id;
        for m in &mut spec.members {
            if m.name == name {
                m.member_id = owner.node_id;
            }
        }
        spec.members.sort_by_key(|m| m.member_id);
        return Ok(());
    }
    let mut why = Vec::new();
    let mut info = None;
    for m in spec.members.iter().filter(|m| m.name != name) {
        match synod_server::peer::ask_cluster(m.peer, tls) {
            Ok(i) => {
                info = Some(i);
                break;
            }
            Err(e) => why.push(format!("{} ({}): {e}", m.name, m.peer)),
        }
    }
    let Some(info) = info else {
        return Err(format!(
            "--initial-cluster-state existing: could not retrieve the cluster's members from \
             any other member of --initial-cluster{}",
            if why.is_empty() {
                " (it lists no other member)".to_string()
            } else {
                format!(": {}", why.join("; "))
            }
        ));
    };
    let Some(me) = info
        .members
        .iter()
        .find(|m| sorted(&m.peer_urls) == sorted(my_peer_urls))
    else {
        return Err(format!(
            "--initial-cluster-state existing: cluster {:x} has no member with the peer URLs {} \
             (add it first: etcdctl member add {name} --peer-urls={})",
            info.cluster_id,
            my_peer_urls.join(","),
            my_peer_urls.join(",")
        ));
    };
    spec.cluster_id = info.cluster_id;
    for m in &mut spec.members {
        let known = info
            .members
            .iter()
            .find(|i| sorted(&i.peer_urls) == sorted(&m.peer_urls));
        if m.name == name {
            m.member_id = me.id;
        } else if let Some(k) = known {
            m.member_id = k.id;
        }
    }
    spec.members.sort_by_key(|m| m.member_id);
    Ok(())
}

struct Initial {
    name: String,
    peer_urls: Vec<String>,
}

/// `--initial-cluster`: NAME=URL pairs; a name may repeat for several URLs.
fn initial_members(list: &str) -> Result<Vec<Initial>, String> {
    let mut members: Vec<Initial> = Vec::new();
    let mut urls = BTreeSet::new();
    for pair in list.split(',').filter(|s| !s.trim().is_empty()) {
        let (name, url) = pair
            .trim()
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: {pair:?} is not NAME=URL"))?;
        let url = parse_url("--initial-cluster", url)?.text;
        if !urls.insert(url.clone()) {
            return Err(format!("--initial-cluster: {url} is listed twice"));
        }
        match members.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url),
            None => members.push(Initial {
                name: name.to_string(),
                peer_urls: vec![url],
            }),
        }
    }
    if members.is_empty() {
        return Err("--initial-cluster: no member given".into());
    }
    Ok(members)
}

/// The bugs `--unsafe-bug` can plant, by name: each one a way a real
/// member could break linearizability or durability.
pub const UNSAFE_BUGS: &[&str] = &[
    "follower-reads-own-commit",
    "reply-before-persist",
    "vote-without-log-check",
    "commit-old-term-by-counting",
    "watch-resume-skips-one",
    "short-leases",
    "retry-unsettled-forwards",
];

/// `--unsafe-bug NAME` as the member's deliberate bugs.
pub fn unsafe_bugs(
    name: Option<&str>,
) -> Result<(synod_kv::replica::ReplicaBugs, synod_etcd::ApiBugs), String> {
    let mut bugs = synod_kv::replica::ReplicaBugs::default();
    let mut api = synod_etcd::ApiBugs::default();
    let Some(name) = name else {
        return Ok((bugs, api));
    };
    if !synod_server::CAN_PLANT_BUGS {
        return Err("--unsafe-bug: this synod was built without the `broken` feature".into());
    }
    let raft = &mut bugs.raft;
    match name {
        "follower-reads-own-commit" => raft.follower_reads_own_commit = true,
        "reply-before-persist" => raft.reply_before_persist = true,
        "vote-without-log-check" => raft.vote_without_log_check = true,
        "commit-old-term-by-counting" => raft.commit_old_term_by_counting = true,
        "watch-resume-skips-one" => api.watch_resume_skips_one = true,
        "short-leases" => bugs.short_leases = true,
        "retry-unsettled-forwards" => bugs.retry_unsettled_forwards = true,
        _ => {
            return Err(format!(
                "--unsafe-bug: no bug {name:?}; there are: {}",
                UNSAFE_BUGS.join(", ")
            ))
        }
    }
    Ok((bugs, api))
}

/// `--bcrypt-cost`, or etcd's default with a warning when it is outside
/// bcrypt's range (4 to 31), as etcd does.
fn bcrypt_cost(asked: u32) -> u32 {
    if (4..=31).contains(&asked) {
        return asked;
    }
    let cost = synod_etcd::BCRYPT_COST;
    eprintln!("synod: [WARNING] --bcrypt-cost {asked} is outside bcrypt's 4 to 31; using {cost}");
    cost
}

/// Values etcd would refuse are refused. (What synod does not implement
/// yet, `https://` peer and metrics URLs, is refused where URLs are read,
/// never ignored.)
fn check_values(a: &ServeArgs) -> Result<(), String> {
    match a.auth_token.split(',').next().unwrap_or("") {
        "simple" | "jwt" => {}
        other => {
            return Err(format!(
                "--auth-token: {other:?} is not a token kind (simple or jwt)"
            ))
        }
    }

    if !matches!(a.logger.as_str(), "capnslog" | "zap") {
        return Err(format!(
            "--logger: {:?} is neither \"capnslog\" nor \"zap\"",
            a.logger
        ));
    }
    if !matches!(
        a.log_level.as_str(),
        "debug" | "info" | "warn" | "error" | "panic" | "fatal"
    ) {
        return Err(format!(
            "--log-level: {:?} is not one of debug, info, warn, error, panic, fatal",
            a.log_level
        ));
    }
    Ok(())
}

/// The progress notification interval asked for: 0 is etcd's default, and
/// less than etcd's minimum is raised to it, with etcd's warning.
fn progress_interval(asked: Duration) -> Duration {
    use synod_etcd::{MIN_PROGRESS_NOTIFY_INTERVAL, PROGRESS_NOTIFY_INTERVAL};
    if asked.is_zero() {
        return PROGRESS_NOTIFY_INTERVAL;
    }
    if asked < MIN_PROGRESS_NOTIFY_INTERVAL {
        eprintln!(
            "synod: [WARNING] adjusting watch progress notify interval to minimum period {:?}",
            MIN_PROGRESS_NOTIFY_INTERVAL
        );
        return MIN_PROGRESS_NOTIFY_INTERVAL;
    }
    asked
}

/// Warns of `ETCD_*` variables that no flag reads, as etcd does. The flags'
/// own variables are the known ones, so a new flag cannot be forgotten here.
fn warn_unknown_env() {
    use clap::Args as _;
    let flags = ServeArgs::augment_args(clap::Command::new("serve"));
    let known: Vec<String> = flags
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for (k, v) in std::env::vars() {
        if k.starts_with("ETCD_") && !known.contains(&k) {
            eprintln!("synod: [WARNING] unrecognized environment variable {k}={v}");
        }
    }
}

/// Logs go where `--log-outputs` says, in `--logger`'s form (see
/// `logs.rs`), at `--log-level` (etcd's names; `panic` and `fatal` show
/// errors only; `--debug` is etcd's older way to ask for debug).
fn init_logs(a: &ServeArgs, outputs: &[crate::logs::Output]) -> Result<(), String> {
    use tracing_subscriber::filter::LevelFilter;
    let level = match a.log_level.as_str() {
        _ if a.etcd.debug == Some(true) => LevelFilter::DEBUG,
        "debug" => LevelFilter::DEBUG,
        "info" => LevelFilter::INFO,
        "warn" => LevelFilter::WARN,
        _ => LevelFilter::ERROR,
    };
    crate::logs::init(&a.logger, outputs, level)
}

/// The runtime that serves the client API. With one API thread
/// (`TOKIO_WORKER_THREADS=1`, what `synod up` gives each of three members on
/// two cores) it is tokio's current-thread scheduler, which runs woken tasks
/// in the order they were woken: the requests a round answers
/// ([`synod_server::replies`]) all run before their connection does, which
/// then writes their answers with one `writev`. The multi-thread scheduler
/// runs a task woken by another right after it, so the connection wrote each
/// answer on its own, a system call and a TCP segment each.
fn api_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    if std::env::var(crate::up_cmd::API_THREADS_VAR).is_ok_and(|n| n.trim() == "1") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    }
}

pub fn run(args: ServeArgs) -> Result<ExitCode, String> {
    let args = match &args.config_file {
        Some(file) => crate::config_file::load(file)?,
        None => {
            warn_unknown_env();
            args
        }
    };
    let plan = plan(&args)?;
    init_logs(&args, &plan.log_outputs)?;
    for n in &plan.notices {
        eprintln!("synod: [WARNING] {n}");
    }
    let me = &plan.spec.members[plan.index];
    if let Some(w) = &plan.wal_dir {
        crate::wal_dir::link(&me.data_dir, w)?;
    }
    let runtime = api_runtime().map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        let member = start_member_on(&plan.spec, plan.index, &plan.listen).await?;
        crate::release_freed_memory();
        println!(
            "synod: member {} ({:x}) of cluster {:x} serving clients on {} (peers on {}), data in {}",
            me.name,
            me.member_id,
            plan.spec.cluster_id,
            args.listen_client_urls,
            args.listen_peer_urls,
            me.data_dir.display()
        );
        let signal = tokio::select! {
            s = stop_signal() => s?,
            never = collect_freed_memory() => match never {},
            why = member.ended() => {
                eprintln!("synod: member {}: {why}", me.name);
                member.stop().await;
                return Ok(ExitCode::FAILURE);
            }
        };
        println!("synod: member {}: {signal}: stopping", me.name);
        member.stop().await;
        println!("synod: member {} stopped", me.name);
        Ok(ExitCode::SUCCESS)
    })
}

/// Hands memory back to the system now and then, on this thread. The
/// member was recovered here (its snapshot decoded, its log replayed), and
/// much of that is freed later on the member's thread: the log's commands
/// once every member holds them. mimalloc takes such memory back only when
/// its owner collects, and this thread may do nothing else but wait for a
/// signal (with more than one API thread; with one it also serves the
/// API): without this a restarted member kept 1.5x the memory it had before
/// the restart (1,000,000 keys).
async fn collect_freed_memory() -> std::convert::Infallible {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        every.tick().await;
        crate::release_freed_memory();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(flags: &[&str]) -> ServeArgs {
        Cli::parse_from(std::iter::once("serve").chain(flags.iter().copied())).serve
    }

    const THREE: &str =
        "infra1=http://127.0.0.1:12380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380";

    fn member(name: &str, peer: u16, client: u16) -> Vec<String> {
        [
            "--name",
            name,
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--initial-cluster-token",
            "etcd-cluster-1",
            "--initial-cluster",
            THREE,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn plan_of(flags: &[String]) -> Result<Plan, String> {
        plan(&args(&flags.iter().map(String::as_str).collect::<Vec<_>>()))
    }

    #[test]
    fn every_member_numbers_the_cluster_the_same_way() {
        let a = plan_of(&member("infra1", 12380, 2379)).unwrap();
        let b = plan_of(&member("infra3", 32380, 32379)).unwrap();
        assert_eq!(a.spec.cluster_id, b.spec.cluster_id);
        let ids = |p: &Plan| {
            p.spec
                .members
                .iter()
                .map(|m| m.member_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(a.spec.members[a.index].name, "infra1");
        assert_eq!(b.spec.members[b.index].name, "infra3");
        // Another token is another cluster.
        let mut other = member("infra1", 12380, 2379);
        other[11] = "etcd-cluster-2".into();
        assert_ne!(plan_of(&other).unwrap().spec.cluster_id, a.spec.cluster_id);
    }

    #[test]
    fn bad_configurations_are_refused_naming_the_flag() {
        let mut f = member("infra9", 12380, 2379);
        assert!(plan_of(&f)
            .unwrap_err()
            .contains("no member named \"infra9\""));
        f = member("infra1", 12381, 2379);
        assert!(plan_of(&f)
            .unwrap_err()
            .contains("--initial-advertise-peer-urls"));
        f = member("infra1", 12380, 2379);
        f.extend(["--auto-compaction-retention".into(), "soon".into()]);
        assert!(plan_of(&f)
            .unwrap_err()
            .contains("--auto-compaction-retention"));
        f = member("infra1", 12380, 2379);
        f.extend([
            "--listen-metrics-urls".into(),
            "ftp://127.0.0.1:2381".into(),
        ]);
        assert!(plan_of(&f).unwrap_err().contains("--listen-metrics-urls"));
        f = member("infra1", 12380, 2379);
        f.extend(["--election-timeout".into(), "300".into()]);
        assert!(plan_of(&f)
            .unwrap_err()
            .contains("should be at least as 5 times"));
        f = member("infra1", 12380, 2379);
        f[7] = "https://127.0.0.1:2379".into();
        assert!(plan_of(&f).unwrap_err().contains("TLS"));
        f = member("infra1", 12380, 2379);
        f.extend(["--auth-token".into(), "jwt,sign-method=RS256".into()]);
        assert!(plan_of(&f).unwrap_err().contains("pub-key is missing"));
        f = member("infra1", 12380, 2379);
        f[3] = "https://127.0.0.1:12380".into();
        assert!(plan_of(&f)
            .unwrap_err()
            .contains("all be http:// or all https://"));
        f = member("infra1", 12380, 2379);
        f.extend(["--initial-cluster-state".into(), "existing".into()]);
        f.extend(["--data-dir".into(), "/nonexistent/synod-test".into()]);
        assert!(plan_of(&f)
            .unwrap_err()
            .contains("could not retrieve the cluster's members"));
    }

    #[test]
    fn a_named_member_alone_is_its_own_cluster_as_in_etcd() {
        let p = plan(&args(&[
            "--name",
            "solo",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:42380",
            "--initial-cluster-token",
            "tkn-1",
        ]))
        .unwrap();
        assert_eq!(p.spec.members.len(), 1);
        // The id etcd 3.4.23 gives this member (see synod_server::ids).
        assert_eq!(p.spec.members[0].member_id, 0x88c8b1c64f7aa886);
        assert_eq!(p.spec.members[0].data_dir, PathBuf::from("solo.etcd"));
    }

    /// The flags of kubeadm's etcd manifest, as it writes them (booleans
    /// with `=true`), start a member; what synod does not do is said.
    #[test]
    fn etcds_other_flags_are_honoured_noted_or_refused() {
        let mut flags = member("infra1", 12380, 2379);
        flags.extend(
            [
                "--client-cert-auth=false",
                "--peer-client-cert-auth=false",
                "--experimental-initial-corrupt-check=true",
                "--experimental-watch-progress-notify-interval=5s",
                "--snapshot-count=10000",
                "--max-wals=5",
                "--pre-vote=false",
                "--max-concurrent-streams=64",
                "--grpc-keepalive-timeout=3s",
                "--metrics=extensive",
            ]
            .map(String::from),
        );
        let p = plan_of(&flags).unwrap();
        assert_eq!(
            p.notices,
            [
                "--experimental-initial-corrupt-check has no effect on synod: synod runs no \
              corruption check; compare members with `etcdctl endpoint hashkv`"
            ]
        );
        let a = args(&flags.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(a.etcd.pre_vote, Some(false));
        // Certificate rules on plain URLs: nothing to check, and said so.
        let mut plain = member("infra1", 12380, 2379);
        plain.push("--peer-cert-allowed-cn=etcd-peer".into());
        plain.push("--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into());
        let notices = plan_of(&plain).unwrap().notices;
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert!(notices[0].starts_with("--peer-cert-allowed-cn/hostname has no effect"));
        assert!(notices[1].starts_with("--cipher-suites has no effect"));
        assert_eq!(a.etcd.max_concurrent_streams, Some(64));
        assert_eq!(a.etcd.grpc_keepalive_timeout, Some(Duration::from_secs(3)));
        for (flag, says) in [
            ("--force-new-cluster", "--force-new-cluster"),
            ("--proxy=on", "--proxy"),
            ("--discovery=https://discovery.etcd.io/x", "--discovery"),
            ("--cipher-suites=TLS_NO_SUCH_SUITE", "--cipher-suites"),
            (
                "--client-cert-allowed-hostname=not a host",
                "--client-cert-allowed-hostname",
            ),
            ("--log-outputs=/var/log/etcd.log", "--log-outputs"),
        ] {
            let mut f = member("infra1", 12380, 2379);
            f.push(flag.into());
            let err = plan_of(&f).unwrap_err();
            assert!(err.starts_with(says), "{flag}: {err}");
        }
    }
}
