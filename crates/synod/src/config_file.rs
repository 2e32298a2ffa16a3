//! `synod serve --config-file FILE`: etcd's YAML configuration file. Its
//! keys are the flags' names, and the TLS settings sit in two sections
//! (`client-transport-security`, `peer-transport-security`). As in etcd, a
//! configuration file replaces the command line and the `ETCD_*`
//! variables: only the file counts.

use crate::serve_cmd::ServeArgs;
use clap::{Args, FromArgMatches};
use std::path::Path;
use yaml_rust2::{Yaml, YamlLoader};

/// The flag each key of a TLS section stands for, as etcd maps them.
fn tls_flag(section: &str, key: &str) -> Option<&'static str> {
    let client = section == "client-transport-security";
    Some(match (client, key) {
        (true, "cert-file") => "cert-file",
        (true, "key-file") => "key-file",
        (true, "client-cert-auth") => "client-cert-auth",
        (true, "trusted-ca-file") => "trusted-ca-file",
        (true, "auto-tls") => "auto-tls",
        (true, "crl-file") => "client-crl-file",
        (true, "allowed-hostname") => "client-cert-allowed-hostname",
        (false, "cert-file") => "peer-cert-file",
        (false, "key-file") => "peer-key-file",
        (false, "client-cert-auth") => "peer-client-cert-auth",
        (false, "trusted-ca-file") => "peer-trusted-ca-file",
        (false, "auto-tls") => "peer-auto-tls",
        (false, "crl-file") => "peer-crl-file",
        (false, "allowed-cn") => "peer-cert-allowed-cn",
        (false, "allowed-hostname") => "peer-cert-allowed-hostname",
        _ => return None,
    })
}

/// A scalar as a flag's value; lists are comma-separated, as on the
/// command line. `None` for an empty value (YAML's null: etcd's default).
fn value(v: &Yaml) -> Result<Option<String>, String> {
    Ok(Some(match v {
        Yaml::Null => return Ok(None),
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Array(items) => {
            let mut parts = Vec::new();
            for item in items {
                if let Some(p) = value(item)? {
                    parts.push(p);
                }
            }
            parts.join(",")
        }
        _ => return Err("not a value (a string, number, boolean or list)".into()),
    }))
}

/// The flags read so far, and the keys no flag reads (etcd ignores unknown
/// keys; synod names them).
struct Reading<'a> {
    known: &'a [String],
    line: Vec<String>,
    unknown: Vec<String>,
}

impl Reading<'_> {
    fn add(&mut self, flag: &str, v: &Yaml, key: &str) -> Result<(), String> {
        if !self.known.iter().any(|k| k == flag) {
            self.unknown.push(key.to_string());
            return Ok(());
        }
        if let Some(v) = value(v).map_err(|e| format!("{key}: {e}"))? {
            self.line.push(format!("--{flag}={v}"));
        }
        Ok(())
    }

    fn section(&mut self, key: &str, section: &yaml_rust2::yaml::Hash) -> Result<(), String> {
        for (sk, sv) in section {
            let Yaml::String(sub) = sk else {
                return Err(format!("{key}: {sk:?} is not a setting's name"));
            };
            let name = format!("{key}.{sub}");
            match tls_flag(key, sub) {
                Some(flag) => self.add(flag, sv, &name)?,
                None => self.unknown.push(name),
            }
        }
        Ok(())
    }
}

/// The command line the file stands for, and the keys no flag reads.
fn command_line(text: &str, known: &[String]) -> Result<(Vec<String>, Vec<String>), String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    let mut r = Reading {
        known,
        line: vec!["synod serve".to_string()],
        unknown: Vec::new(),
    };
    let Some(doc) = docs.first() else {
        return Ok((r.line, r.unknown));
    };
    let Yaml::Hash(top) = doc else {
        return Err("the file is not a mapping of settings".into());
    };
    for (k, v) in top {
        let Yaml::String(key) = k else {
            return Err(format!("{k:?} is not a setting's name"));
        };
        match (key.as_str(), v) {
            ("client-transport-security" | "peer-transport-security", Yaml::Hash(section)) => {
                r.section(key, section)?;
            }
            ("client-transport-security" | "peer-transport-security", Yaml::Null) => {}
            ("client-transport-security" | "peer-transport-security", _) => {
                return Err(format!("{key}: not a section of settings"));
            }
            ("config-file", _) => r.unknown.push(key.clone()),
            _ => r.add(key, v, key)?,
        }
    }
    Ok((r.line, r.unknown))
}

/// Reads `path` into the flags it sets, ignoring the command line and the
/// environment, as etcd does.
pub fn load(path: &Path) -> Result<ServeArgs, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--config-file {}: {e}", path.display()))?;
    // The flags without their environment variables: the file is all.
    let cmd = ServeArgs::augment_args(clap::Command::new("synod serve"))
        .mut_args(|a| a.env(None::<&'static str>));
    let known: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    let (line, unknown) = command_line(&text, &known)
        .map_err(|e| format!("--config-file {}: {e}", path.display()))?;
    for key in unknown {
        eprintln!(
            "synod: [WARNING] --config-file {}: {key:?} is not a setting synod knows; ignored",
            path.display()
        );
    }
    let matches = cmd
        .try_get_matches_from(&line)
        .map_err(|e| format!("--config-file {}: {e}", path.display()))?;
    ServeArgs::from_arg_matches(&matches)
        .map_err(|e| format!("--config-file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        ServeArgs::augment_args(clap::Command::new("t"))
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect()
    }

    /// etcd 3.4's sample file (etcd.conf.yml.sample), its values as shipped.
    const SAMPLE: &str = "
name: 'default'
data-dir:
wal-dir:
snapshot-count: 10000
heartbeat-interval: 100
election-timeout: 1000
quota-backend-bytes: 0
listen-peer-urls: http://localhost:2380
listen-client-urls: http://localhost:2379
max-snapshots: 5
max-wals: 5
cors:
initial-advertise-peer-urls: http://localhost:2380
advertise-client-urls: http://localhost:2379
discovery:
discovery-fallback: 'proxy'
discovery-proxy:
discovery-srv:
initial-cluster:
initial-cluster-token: 'etcd-cluster'
initial-cluster-state: 'new'
strict-reconfig-check: false
enable-v2: true
enable-pprof: true
proxy: 'off'
proxy-failure-wait: 5000
proxy-refresh-interval: 30000
proxy-dial-timeout: 1000
proxy-write-timeout: 5000
proxy-read-timeout: 0
client-transport-security:
  cert-file:
  key-file:
  client-cert-auth: false
  trusted-ca-file:
  auto-tls: false
peer-transport-security:
  cert-file: /etc/ssl/peer.pem
  key-file:
  client-cert-auth: true
  trusted-ca-file:
  auto-tls: false
debug: false
logger: zap
log-outputs: [stderr]
force-new-cluster: false
auto-compaction-mode: periodic
auto-compaction-retention: \"1\"
unheard-of: 3
";

    #[test]
    fn etcds_sample_file_is_the_command_line_it_stands_for() {
        let (line, unknown) = command_line(SAMPLE, &known()).unwrap();
        for flag in [
            "--name=default",
            "--snapshot-count=10000",
            "--strict-reconfig-check=false",
            "--log-outputs=stderr",
            "--auto-compaction-retention=1",
            "--peer-cert-file=/etc/ssl/peer.pem",
            "--peer-client-cert-auth=true",
            "--client-cert-auth=false",
            "--proxy=off",
        ] {
            assert!(line.iter().any(|l| l == flag), "{flag} not in {line:?}");
        }
        // Empty values are etcd's defaults: no flag at all.
        assert!(
            !line.iter().any(|l| l.starts_with("--data-dir")),
            "{line:?}"
        );
        assert!(!line.iter().any(|l| l.starts_with("--initial-cluster=")));
        assert_eq!(unknown, ["unheard-of"]);
    }

    #[test]
    fn a_file_that_is_not_settings_is_refused_with_the_reason() {
        let k = known();
        assert!(command_line("- a\n- b\n", &k)
            .unwrap_err()
            .contains("not a mapping"));
        assert!(command_line("name: {a: 1}\n", &k)
            .unwrap_err()
            .starts_with("name:"));
        assert!(command_line("client-transport-security: 3\n", &k)
            .unwrap_err()
            .contains("not a section"));
        assert!(command_line("name: [unclosed\n", &k).is_err());
    }
}
