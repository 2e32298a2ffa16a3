//! Where `synod serve` writes its log, and in which form, as etcd 3.4's
//! `--logger` and `--log-outputs` choose:
//!
//! - `--logger=capnslog` (3.4's default): plain lines, to one output only:
//!   `default` or `stderr`, or `stdout`;
//! - `--logger=zap`: one JSON object per line, with zap's `level`, `ts`,
//!   `caller` and `msg` first, to any number of outputs: `stderr`, `stdout`,
//!   files (appended to), or `default` alone. `journal` writes to stderr,
//!   which systemd's journal collects from a unit anyway.
//!
//! Log pipelines written for etcd's JSON read synod's the same way.

use std::path::PathBuf;
use std::sync::Arc;
use tracing_subscriber::field::Visit;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// One place the log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stderr,
    Stdout,
    /// Appended to, created if missing.
    File(PathBuf),
}

/// The outputs `--log-outputs` names, by etcd's rules for `logger`.
pub fn outputs(logger: &str, list: &str) -> Result<Vec<Output>, String> {
    let names: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let names = if names.is_empty() {
        vec!["default"]
    } else {
        names
    };
    if logger == "capnslog" {
        if names.len() != 1 {
            return Err(format!(
                "--logger=capnslog supports only 1 value in '--log-outputs', got {names:?}"
            ));
        }
        return match names[0] {
            "default" | "stderr" => Ok(vec![Output::Stderr]),
            "stdout" => Ok(vec![Output::Stdout]),
            other => Err(format!(
                "unknown log-output {other:?} (only supports \"default\", \"stderr\", \"stdout\")"
            )),
        };
    }
    if names.len() > 1 && names.contains(&"default") {
        return Err("multi logoutput for \"default\" is not supported yet".into());
    }
    let mut out = Vec::new();
    for name in names {
        let o = match name {
            "default" | "stderr" | "journal" => Output::Stderr,
            "stdout" => Output::Stdout,
            path => Output::File(path.into()),
        };
        if !out.contains(&o) {
            out.push(o);
        }
    }
    Ok(out)
}

/// All of `outputs` as one writer; files are opened here, so a path that
/// cannot be written stops the member before it starts.
fn writer(outputs: &[Output]) -> Result<BoxMakeWriter, String> {
    let mut all: Option<BoxMakeWriter> = None;
    for o in outputs {
        let one = match o {
            Output::Stderr => BoxMakeWriter::new(std::io::stderr),
            Output::Stdout => BoxMakeWriter::new(std::io::stdout),
            Output::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("--log-outputs: {}: {e}", path.display()))?;
                BoxMakeWriter::new(Arc::new(file))
            }
        };
        all = Some(match all {
            None => one,
            Some(before) => BoxMakeWriter::new(before.and(one)),
        });
    }
    Ok(all.unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr)))
}

/// Installs the process's logger.
pub fn init(
    logger: &str,
    outputs: &[Output],
    level: tracing_subscriber::filter::LevelFilter,
) -> Result<(), String> {
    let logs = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_writer(writer(outputs)?);
    // A second call (tests start several members in one process) keeps
    // the first logger.
    let _ = match logger {
        "zap" => logs.event_format(ZapJson).try_init(),
        _ => logs.try_init(),
    };
    Ok(())
}

/// zap's production encoding, as etcd configures it: `level`, `ts`
/// (ISO 8601, milliseconds, UTC), `caller`, `msg`, then the event's fields.
struct ZapJson;

impl<S, N> FormatEvent<S, N> for ZapJson
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let caller = format!(
            "{}:{}",
            meta.file()
                .map(|f| f.strip_prefix("crates/").unwrap_or(f))
                .unwrap_or("?"),
            meta.line().unwrap_or(0)
        );
        let line = zap_line(
            &meta.level().as_str().to_ascii_lowercase(),
            &now_iso8601(),
            &caller,
            &fields.message,
            &fields.rest,
        );
        writeln!(w, "{line}")
    }
}

/// One log line in zap's JSON.
fn zap_line(
    level: &str,
    ts: &str,
    caller: &str,
    msg: &str,
    fields: &[(String, serde_json::Value)],
) -> String {
    let s = |v: &str| serde_json::Value::from(v).to_string();
    let mut line = format!(
        "{{\"level\":{},\"ts\":{},\"caller\":{},\"msg\":{}",
        s(level),
        s(ts),
        s(caller),
        s(msg)
    );
    for (k, v) in fields {
        line.push_str(&format!(",{}:{v}", s(k)));
    }
    line.push('}');
    line
}

/// The current time as zap writes it: `2026-12-07T22:48:46.190Z`.
fn now_iso8601() -> String {
    use time::format_description::well_known::iso8601::{Config, Iso8601, TimePrecision};
    const FORMAT: u128 = Config::DEFAULT
        .set_time_precision(TimePrecision::Second {
            decimal_digits: std::num::NonZeroU8::new(3),
        })
        .encode();
    time::OffsetDateTime::now_utc()
        .format(&Iso8601::<FORMAT>)
        .unwrap_or_default()
}

/// An event's fields: its message, and the rest as JSON values.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(String, serde_json::Value)>,
}

impl Fields {
    fn put(&mut self, field: &tracing::field::Field, value: serde_json::Value) {
        match (field.name(), value) {
            ("message", serde_json::Value::String(s)) => self.message = s,
            (name, value) => self.rest.push((name.to_string(), value)),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_follow_etcds_rules_for_each_logger() {
        assert_eq!(outputs("capnslog", "default").unwrap(), [Output::Stderr]);
        assert_eq!(outputs("capnslog", "stdout").unwrap(), [Output::Stdout]);
        let err = outputs("capnslog", "stderr,stdout").unwrap_err();
        assert!(err.contains("supports only 1 value"), "{err}");
        let err = outputs("capnslog", "/var/log/etcd.log").unwrap_err();
        assert!(err.starts_with("unknown log-output"), "{err}");
        assert_eq!(
            outputs("zap", "stderr, /var/log/etcd.log").unwrap(),
            [Output::Stderr, Output::File("/var/log/etcd.log".into())]
        );
        assert_eq!(outputs("zap", "").unwrap(), [Output::Stderr]);
        let err = outputs("zap", "default,stdout").unwrap_err();
        assert!(err.contains("not supported"), "{err}");
    }

    #[test]
    fn a_zap_line_is_json_with_zaps_keys_first() {
        let line = zap_line(
            "warn",
            "2026-12-07T22:48:46.190Z",
            "synod-server/src/peer.rs:1162",
            "refused a \"peer\"",
            &[
                ("peer".into(), "127.0.0.1:5".into()),
                ("n".into(), 3.into()),
            ],
        );
        assert_eq!(
            line,
            r#"{"level":"warn","ts":"2026-12-07T22:48:46.190Z","caller":"synod-server/src/peer.rs:1162","msg":"refused a \"peer\"","peer":"127.0.0.1:5","n":3}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["msg"], "refused a \"peer\"");
        let ts = now_iso8601();
        assert_eq!(ts.len(), "2026-12-07T22:48:46.190Z".len(), "{ts}");
        assert!(ts.ends_with('Z'), "{ts}");
    }
}
