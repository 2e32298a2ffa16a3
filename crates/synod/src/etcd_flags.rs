//! The rest of etcd 3.4's command line: the flags `synod serve` takes so
//! that a unit file, manifest or config file written for etcd starts synod
//! unchanged, and what each one does here. Three kinds:
//!
//! - **honoured**: gRPC keepalives and stream limits, pre-vote, debug logs,
//!   the log outputs, extensive metrics, certificate revocation lists,
//!   allowed certificate names, cipher suites, CORS origins, allowed Host
//!   names, a WAL directory of its own;
//! - **no effect**, said once at start when set to other than etcd's
//!   default: tuning of etcd's own storage (bbolt batches, freelists, WAL
//!   and snapshot file counts), Go's profiler, the v2 API, checks synod
//!   does not run;
//! - **refused** unless left at etcd's default: modes synod does not have
//!   (proxy, discovery, forcing a new cluster)
//!   and checks it will not skip. Serving without what the operator asked
//!   for would be worse than not starting.

use clap::Args;
use std::time::Duration;
use synod_server::tls::AllowedName;
use synod_server::tls::CipherChoice;

/// etcd's flags beyond those `ServeArgs` gives a meaning of their own.
#[derive(Args, Debug, Clone, Default)]
pub struct EtcdOnlyArgs {
    /// Most concurrent gRPC streams per client connection (default: no
    /// limit).
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Idle time before the server pings a client connection (default 2h).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_INTERVAL", value_parser = go_duration)]
    pub grpc_keepalive_interval: Option<Duration>,
    /// How long the server waits for a ping's answer before it closes the
    /// connection (default 20s).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT", value_parser = go_duration)]
    pub grpc_keepalive_timeout: Option<Duration>,
    /// Least time between client pings (etcd's default 5s); not enforced.
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_MIN_TIME", value_parser = go_duration)]
    pub grpc_keepalive_min_time: Option<Duration>,
    /// Ask whether an election could be won before starting one (synod's
    /// default: true; etcd 3.4's: false).
    #[arg(long, env = "ETCD_PRE_VOTE", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub pre_vote: Option<bool>,
    /// Debug-level logs (etcd's older name for --log-level debug).
    #[arg(long, env = "ETCD_DEBUG", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub debug: Option<bool>,
    /// Where logs go: default or stderr, or stdout; with --logger=zap also
    /// files, several comma-separated.
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,
    /// `basic` or `extensive` (etcd adds gRPC handling-time histograms).
    #[arg(long, env = "ETCD_METRICS", default_value = "basic")]
    pub metrics: String,
    /// Origins whose pages may call the HTTP endpoints (comma-separated;
    /// empty or `*`: all).
    #[arg(long, env = "ETCD_CORS", default_value = "*")]
    pub cors: String,
    /// Fast-forward the first election at start (on in synod, always).
    #[arg(long, env = "ETCD_INITIAL_ELECTION_TICK_ADVANCE", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub initial_election_tick_advance: Option<bool>,

    // No effect on synod.
    /// bbolt's commit interval (no effect: synod has no bbolt backend).
    #[arg(long, env = "ETCD_BACKEND_BATCH_INTERVAL", value_parser = go_duration)]
    pub backend_batch_interval: Option<Duration>,
    /// bbolt's commit batch (no effect: synod has no bbolt backend).
    #[arg(long, env = "ETCD_BACKEND_BATCH_LIMIT")]
    pub backend_batch_limit: Option<u64>,
    /// bbolt's freelist type (no effect: synod has no bbolt backend).
    #[arg(long, env = "ETCD_EXPERIMENTAL_BACKEND_BBOLT_FREELIST_TYPE")]
    pub experimental_backend_bbolt_freelist_type: Option<String>,
    /// Keys compacted per batch (no effect: synod compacts in memory).
    #[arg(long, env = "ETCD_EXPERIMENTAL_COMPACTION_BATCH_LIMIT")]
    pub experimental_compaction_batch_limit: Option<u64>,
    /// Apply time that etcd warns about (no effect).
    #[arg(long, env = "ETCD_EXPERIMENTAL_WARNING_APPLY_DURATION", value_parser = go_duration)]
    pub experimental_warning_apply_duration: Option<Duration>,
    /// Snapshot files etcd keeps (no effect: synod keeps its latest).
    #[arg(long, env = "ETCD_MAX_SNAPSHOTS")]
    pub max_snapshots: Option<u64>,
    /// WAL files etcd keeps (no effect: synod deletes the segments a
    /// snapshot covers).
    #[arg(long, env = "ETCD_MAX_WALS")]
    pub max_wals: Option<u64>,
    /// Go's profiler on the client URLs (no effect).
    #[arg(long, env = "ETCD_ENABLE_PPROF", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_pprof: Option<bool>,
    /// Log levels of etcd's Go packages (no effect).
    #[arg(long, env = "ETCD_LOG_PACKAGE_LEVELS")]
    pub log_package_levels: Option<String>,
    /// Lease remaining-time checkpoints (no effect: synod's leases restart
    /// at their full TTL under a new leader, as without checkpoints).
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub experimental_enable_lease_checkpoint: Option<bool>,
    /// etcd's corruption check against the peers at start (not run).
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub experimental_initial_corrupt_check: Option<bool>,
    /// etcd's periodic corruption check (not run).
    #[arg(long, env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", value_parser = go_duration)]
    pub experimental_corrupt_check_time: Option<Duration>,
    /// Timeouts of etcd's proxy mode (no effect without it).
    #[arg(long, env = "ETCD_PROXY_FAILURE_WAIT")]
    pub proxy_failure_wait: Option<u64>,
    #[arg(long, env = "ETCD_PROXY_REFRESH_INTERVAL")]
    pub proxy_refresh_interval: Option<u64>,
    #[arg(long, env = "ETCD_PROXY_DIAL_TIMEOUT")]
    pub proxy_dial_timeout: Option<u64>,
    #[arg(long, env = "ETCD_PROXY_WRITE_TIMEOUT")]
    pub proxy_write_timeout: Option<u64>,
    #[arg(long, env = "ETCD_PROXY_READ_TIMEOUT")]
    pub proxy_read_timeout: Option<u64>,
    /// What to do when discovery fails (no effect without discovery).
    #[arg(long, env = "ETCD_DISCOVERY_FALLBACK")]
    pub discovery_fallback: Option<String>,

    // Refused unless left at etcd's default.
    /// A directory of its own for the WAL (the data directory keeps a
    /// link `wal` to it).
    #[arg(long, env = "ETCD_WAL_DIR", default_value = "")]
    pub wal_dir: String,
    /// Start a one-member cluster from this member's data (refused: see
    /// `synod snapshot restore`).
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub force_new_cluster: Option<bool>,
    /// The v2 API (no effect: synod serves v3 only).
    #[arg(long, env = "ETCD_ENABLE_V2", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_v2: Option<bool>,
    /// The v2 API on v3 storage (no effect: synod serves v3 only).
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_V2V3", default_value = "")]
    pub experimental_enable_v2v3: String,
    /// etcd's proxy mode (refused unless off).
    #[arg(long, env = "ETCD_PROXY", default_value = "off")]
    pub proxy: String,
    /// Bootstrap through a discovery service (refused).
    #[arg(long, env = "ETCD_DISCOVERY", default_value = "")]
    pub discovery: String,
    #[arg(long, env = "ETCD_DISCOVERY_SRV", default_value = "")]
    pub discovery_srv: String,
    #[arg(long, env = "ETCD_DISCOVERY_SRV_NAME", default_value = "")]
    pub discovery_srv_name: String,
    #[arg(long, env = "ETCD_DISCOVERY_PROXY", default_value = "")]
    pub discovery_proxy: String,
    /// Host names plain HTTP requests may carry (comma-separated; `*`:
    /// all).
    #[arg(long, env = "ETCD_HOST_WHITELIST", default_value = "*")]
    pub host_whitelist: String,
    /// The TLS 1.2 cipher suites to offer, by Go's names (comma-separated;
    /// default: rustls's own). TLS 1.3's are always offered.
    #[arg(long, env = "ETCD_CIPHER_SUITES", default_value = "")]
    pub cipher_suites: String,
    /// Revoked client certificates (PEM or DER), refused at the handshake.
    #[arg(
        long = "client-crl-file",
        env = "ETCD_CLIENT_CRL_FILE",
        default_value = ""
    )]
    pub client_crl: String,
    /// Revoked peer certificates (PEM or DER), refused at the handshake.
    #[arg(long = "peer-crl-file", env = "ETCD_PEER_CRL_FILE", default_value = "")]
    pub peer_crl: String,
    /// The one host name (or IP) client certificates must be valid for.
    #[arg(long, env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME", default_value = "")]
    pub client_cert_allowed_hostname: String,
    /// The one common name peer certificates must carry.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN", default_value = "")]
    pub peer_cert_allowed_cn: String,
    /// The one host name (or IP) peer certificates must be valid for.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME", default_value = "")]
    pub peer_cert_allowed_hostname: String,
    /// Skip the check that a connecting peer's certificate is valid for
    /// the address it connects from.
    #[arg(long, env = "ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub experimental_peer_skip_client_san_verification: Option<bool>,
}

/// A duration flag, written as Go writes durations (`10m`, `1h30m`, `250ms`).
pub fn go_duration(text: &str) -> Result<Duration, String> {
    synod_server::compactor::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration (such as 10m, 30s or 250ms)"))
}

impl EtcdOnlyArgs {
    /// `--client-crl-file`, if given.
    pub fn client_crl_file(&self) -> Option<std::path::PathBuf> {
        Some(self.client_crl.trim())
            .filter(|p| !p.is_empty())
            .map(Into::into)
    }

    /// `--peer-crl-file`, if given.
    pub fn peer_crl_file(&self) -> Option<std::path::PathBuf> {
        Some(self.peer_crl.trim())
            .filter(|p| !p.is_empty())
            .map(Into::into)
    }

    /// `--wal-dir`, if given.
    pub fn wal_dir(&self) -> Option<std::path::PathBuf> {
        Some(self.wal_dir.trim())
            .filter(|p| !p.is_empty())
            .map(Into::into)
    }

    /// What client certificates must name (`--client-cert-allowed-hostname`).
    pub fn client_allowed(&self) -> Result<Option<AllowedName>, String> {
        AllowedName::from_flags("", &self.client_cert_allowed_hostname)
            .map_err(|e| format!("--client-cert-allowed-hostname: {e}"))
    }

    /// What peer certificates must name (`--peer-cert-allowed-cn` or
    /// `--peer-cert-allowed-hostname`).
    pub fn peer_allowed(&self) -> Result<Option<AllowedName>, String> {
        AllowedName::from_flags(&self.peer_cert_allowed_cn, &self.peer_cert_allowed_hostname)
            .map_err(|e| format!("--peer-cert-allowed-cn, --peer-cert-allowed-hostname: {e}"))
    }

    /// The TLS 1.2 suites `--cipher-suites` asks for (`None`: not set),
    /// with a line for each listed suite synod does not offer.
    pub fn cipher_suites(&self) -> Result<Option<CipherChoice>, String> {
        if self.cipher_suites.trim().is_empty() {
            return Ok(None);
        }
        synod_server::tls::cipher_suites(&self.cipher_suites)
            .map(Some)
            .map_err(|e| format!("--cipher-suites: {e}"))
    }

    /// Refuses what synod cannot honour; otherwise returns one line for
    /// each flag that was set and has no effect here (or less than asked).
    pub fn check(&self) -> Result<Vec<String>, String> {
        let refused = |flag: &str, why: &str| Err(format!("{flag}: {why}"));
        let set = |s: &str| !s.trim().is_empty();
        if self.force_new_cluster == Some(true) {
            return refused(
                "--force-new-cluster",
                "not supported; `synod snapshot restore` starts a new cluster from a member's data",
            );
        }
        if self.proxy != "off" {
            return refused(
                "--proxy",
                "synod has no proxy mode; only \"off\" is accepted",
            );
        }
        for (flag, value) in [
            ("--discovery", &self.discovery),
            ("--discovery-srv", &self.discovery_srv),
            ("--discovery-srv-name", &self.discovery_srv_name),
            ("--discovery-proxy", &self.discovery_proxy),
        ] {
            if set(value) {
                return refused(
                    flag,
                    "discovery is not supported; give the members with --initial-cluster",
                );
            }
        }
        self.client_allowed()?;
        self.peer_allowed()?;
        let partial = self.cipher_suites()?.map(|c| c.not_offered);
        if !matches!(self.metrics.as_str(), "basic" | "extensive") {
            return refused("--metrics", "must be \"basic\" or \"extensive\"");
        }
        let mut notices = self.no_effect();
        notices.extend(partial.into_iter().flatten());
        Ok(notices)
    }

    /// The flags that were set and do nothing here, each with the reason.
    fn no_effect(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut note = |set: bool, flag: &str, why: &str| {
            if set {
                out.push(format!("{flag} has no effect on synod: {why}"));
            }
        };
        // Set to other than etcd's default (a configuration file lists
        // every setting, most at their defaults).
        fn other<T: PartialEq>(v: &Option<T>, default: T) -> bool {
            v.as_ref().is_some_and(|v| *v != default)
        }
        let bbolt = "synod has no bbolt backend";
        note(
            other(&self.backend_batch_interval, Duration::ZERO),
            "--backend-batch-interval",
            bbolt,
        );
        note(
            other(&self.backend_batch_limit, 0),
            "--backend-batch-limit",
            bbolt,
        );
        note(
            other(
                &self.experimental_backend_bbolt_freelist_type.as_deref(),
                "map",
            ),
            "--experimental-backend-bbolt-freelist-type",
            bbolt,
        );
        note(
            other(&self.experimental_compaction_batch_limit, 1000),
            "--experimental-compaction-batch-limit",
            "synod compacts its store in memory",
        );
        note(
            other(
                &self.experimental_warning_apply_duration,
                Duration::from_millis(100),
            ),
            "--experimental-warning-apply-duration",
            "synod does not time single applies",
        );
        note(
            other(&self.max_snapshots, 5),
            "--max-snapshots",
            "synod keeps its latest snapshot only",
        );
        note(
            other(&self.max_wals, 5),
            "--max-wals",
            "synod deletes the WAL segments its snapshot covers",
        );
        note(
            self.enable_v2 == Some(true) || !self.experimental_enable_v2v3.trim().is_empty(),
            "--enable-v2",
            "synod serves the v3 API only",
        );
        note(
            self.enable_pprof == Some(true),
            "--enable-pprof",
            "Go's profiler is not part of synod",
        );
        note(
            other(&self.log_package_levels.as_deref(), ""),
            "--log-package-levels",
            "synod has no per-package log levels",
        );
        note(
            self.experimental_enable_lease_checkpoint == Some(true),
            "--experimental-enable-lease-checkpoint",
            "leases restart at their full TTL under a new leader",
        );
        let no_check =
            "synod runs no corruption check; compare members with `etcdctl endpoint hashkv`";
        note(
            self.experimental_initial_corrupt_check == Some(true),
            "--experimental-initial-corrupt-check",
            no_check,
        );
        note(
            other(&self.experimental_corrupt_check_time, Duration::ZERO),
            "--experimental-corrupt-check-time",
            no_check,
        );
        note(
            other(&self.grpc_keepalive_min_time, Duration::from_secs(5)),
            "--grpc-keepalive-min-time",
            "client pings are not limited",
        );
        note(
            self.initial_election_tick_advance == Some(false),
            "--initial-election-tick-advance=false",
            "a member always fast-forwards its first election once it hears a quorum",
        );
        let proxy_timeouts = [
            other(&self.proxy_failure_wait, 5000),
            other(&self.proxy_refresh_interval, 30000),
            other(&self.proxy_dial_timeout, 1000),
            other(&self.proxy_write_timeout, 5000),
            other(&self.proxy_read_timeout, 0),
        ];
        note(
            proxy_timeouts.contains(&true),
            "--proxy-*",
            "synod has no proxy mode",
        );
        note(
            other(&self.discovery_fallback.as_deref(), "proxy"),
            "--discovery-fallback",
            "synod has no discovery",
        );
        out
    }
}
