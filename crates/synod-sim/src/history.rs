//! Client histories of the replicated key-value store.
//!
//! A [history](Operation) is what the clients saw: one record per operation, with
//! the virtual time (microseconds) at which it was invoked, the time at which its
//! response arrived and what the response said. The [`linearizability`] checker
//! decides whether some atomic, real-time-respecting order of the operations
//! explains every response.
//!
//! An operation whose response never arrived (the client timed out, crashed, or
//! gave up) is **indefinite**: `complete_us` and `result` are both `None`. It may
//! have taken effect at any moment after its invocation, or never.
//!
//! # JSON lines format
//!
//! [`write_jsonl`] and [`read_jsonl`] use one JSON object per line, with exactly
//! these eight fields (written in this order; any order is accepted on input):
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `client` | unsigned integer | the client that issued the operation |
//! | `op` | `"put"`, `"get"`, `"delete"` or `"cas"` | the operation |
//! | `key` | string | the key it addresses |
//! | `value` | string or `null` | the value written by a put or cas; `null` for get and delete |
//! | `expected` | string or `null` | for cas, the value the key must hold for the swap to happen, `null` meaning "the key must be absent"; `null` for the other operations |
//! | `invoke_ms` | number | invocation time in milliseconds |
//! | `complete_ms` | number or `null` | response time in milliseconds; `null` for an indefinite operation |
//! | `result` | see below | the response; `null` for an indefinite operation |
//!
//! The `result` of a completed put is the string `"ok"`; of a get, the string read
//! or `null` if the key was absent; of a delete, `true` if the key existed; of a
//! cas, `true` if it swapped. Times are milliseconds as floating-point numbers
//! with microsecond precision: a time is converted back by multiplying by 1000 and
//! rounding, which is exact for every time below 2⁵¹ µs (about 71 years). A
//! completed operation must not complete before it is invoked. Blank lines are
//! skipped. For example:
//!
//! ```text
//! {"client":1,"op":"put","key":"x","value":"a","expected":null,"invoke_ms":0,"complete_ms":1.25,"result":"ok"}
//! {"client":2,"op":"cas","key":"x","value":"b","expected":"a","invoke_ms":0.5,"complete_ms":null,"result":null}
//! {"client":3,"op":"get","key":"x","value":null,"expected":null,"invoke_ms":2.001,"complete_ms":3,"result":"b"}
//! ```
//!
//! [`linearizability`]: crate::linearizability

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, Write};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

/// What an operation asks the store to do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Set `key` to `value`.
    Put { key: String, value: String },
    /// Read `key`.
    Get { key: String },
    /// Remove `key`; the response says whether it existed.
    Delete { key: String },
    /// Set `key` to `value` if it currently holds `expected` (`None`: if it is
    /// absent); the response says whether it swapped.
    Cas {
        key: String,
        expected: Option<String>,
        value: String,
    },
}

impl OpKind {
    /// The key the operation addresses.
    pub fn key(&self) -> &str {
        match self {
            OpKind::Put { key, .. }
            | OpKind::Get { key }
            | OpKind::Delete { key }
            | OpKind::Cas { key, .. } => key,
        }
    }

    /// The name used in the JSON format: `put`, `get`, `delete` or `cas`.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Put { .. } => "put",
            OpKind::Get { .. } => "get",
            OpKind::Delete { .. } => "delete",
            OpKind::Cas { .. } => "cas",
        }
    }
}

/// The response of a completed operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpResult {
    /// A put succeeded.
    Ok,
    /// A get read this value (`None`: the key was absent).
    Read(Option<String>),
    /// A delete removed an existing key (`true`) or found none (`false`).
    Deleted(bool),
    /// A cas swapped (`true`) or found another value (`false`).
    Swapped(bool),
}

/// One operation of a client history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    pub client: u64,
    pub kind: OpKind,
    /// Virtual time of the invocation, in microseconds.
    pub invoke_us: u64,
    /// Virtual time of the response; `None` if it never arrived (indefinite).
    pub complete_us: Option<u64>,
    /// The response; `None` exactly when `complete_us` is `None`.
    pub result: Option<OpResult>,
}

impl Operation {
    /// A completed operation.
    pub fn completed(
        client: u64,
        kind: OpKind,
        invoke_us: u64,
        complete_us: u64,
        result: OpResult,
    ) -> Operation {
        Operation {
            client,
            kind,
            invoke_us,
            complete_us: Some(complete_us),
            result: Some(result),
        }
    }

    /// An operation whose response never arrived.
    pub fn indefinite(client: u64, kind: OpKind, invoke_us: u64) -> Operation {
        Operation {
            client,
            kind,
            invoke_us,
            complete_us: None,
            result: None,
        }
    }

    /// The key the operation addresses.
    pub fn key(&self) -> &str {
        self.kind.key()
    }

    /// Whether the response never arrived.
    pub fn is_indefinite(&self) -> bool {
        self.complete_us.is_none()
    }

    /// Checks that the record is well formed: it completes no earlier than it is
    /// invoked, it has a result exactly when it completed, and the result is of the
    /// kind its operation returns.
    pub fn validate(&self) -> Result<(), String> {
        match (self.complete_us, &self.result) {
            (None, None) => Ok(()),
            (None, Some(_)) => {
                Err("an indefinite operation (no completion time) has a result".into())
            }
            (Some(_), None) => Err("a completed operation has no result".into()),
            (Some(done), Some(result)) => {
                if done < self.invoke_us {
                    return Err(format!(
                        "completes at {} us, before it is invoked at {} us",
                        done, self.invoke_us
                    ));
                }
                let fits = matches!(
                    (&self.kind, result),
                    (OpKind::Put { .. }, OpResult::Ok)
                        | (OpKind::Get { .. }, OpResult::Read(_))
                        | (OpKind::Delete { .. }, OpResult::Deleted(_))
                        | (OpKind::Cas { .. }, OpResult::Swapped(_))
                );
                if fits {
                    Ok(())
                } else {
                    Err(format!("a {} cannot return {:?}", self.kind.name(), result))
                }
            }
        }
    }
}

/// `[0.000 ms, 1.250 ms] client 1: put x = "a" -> ok`, with `...` for an indefinite
/// operation.
impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} ms, ", Millis(self.invoke_us))?;
        match self.complete_us {
            Some(t) => write!(f, "{} ms]", Millis(t))?,
            None => write!(f, "never]")?,
        }
        write!(f, " client {}: ", self.client)?;
        match &self.kind {
            OpKind::Put { key, value } => write!(f, "put {key:?} = {value:?}")?,
            OpKind::Get { key } => write!(f, "get {key:?}")?,
            OpKind::Delete { key } => write!(f, "delete {key:?}")?,
            OpKind::Cas {
                key,
                expected,
                value,
            } => write!(f, "cas {key:?} from {} to {value:?}", Shown(expected))?,
        }
        match &self.result {
            None => write!(f, " -> (no response)"),
            Some(OpResult::Ok) => write!(f, " -> ok"),
            Some(OpResult::Read(v)) => write!(f, " -> {}", Shown(v)),
            Some(OpResult::Deleted(true)) => write!(f, " -> existed"),
            Some(OpResult::Deleted(false)) => write!(f, " -> was absent"),
            Some(OpResult::Swapped(true)) => write!(f, " -> swapped"),
            Some(OpResult::Swapped(false)) => write!(f, " -> not swapped"),
        }
    }
}

/// Formats microseconds as milliseconds with three decimals.
pub(crate) struct Millis(pub u64);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// Formats an optional value: the quoted string, or `absent`.
pub(crate) struct Shown<'a>(pub &'a Option<String>);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v:?}"),
            None => write!(f, "absent"),
        }
    }
}

/// Why a history could not be read.
#[derive(Debug)]
pub enum HistoryError {
    /// Reading line `line` (1-based) failed.
    Io { line: usize, source: io::Error },
    /// Line `line` (1-based) is not a valid record.
    Invalid { line: usize, message: String },
}

impl HistoryError {
    /// The 1-based line number the error is about.
    pub fn line(&self) -> usize {
        match self {
            HistoryError::Io { line, .. } | HistoryError::Invalid { line, .. } => *line,
        }
    }
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Io { line, source } => write!(f, "line {line}: read error: {source}"),
            HistoryError::Invalid { line, message } => write!(f, "line {line}: {message}"),
        }
    }
}

impl std::error::Error for HistoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HistoryError::Io { source, .. } => Some(source),
            HistoryError::Invalid { .. } => None,
        }
    }
}

/// Writes `history` in the JSON lines format of the [module docs](self), one line
/// per operation. An operation that fails [`Operation::validate`] is refused with
/// an [`io::ErrorKind::InvalidInput`] error (nothing of it is written), so that
/// everything written reads back.
pub fn write_jsonl(history: &[Operation], mut out: impl Write) -> io::Result<()> {
    let mut line = String::new();
    for (i, op) in history.iter().enumerate() {
        op.validate().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("operation {i} is malformed: {e}"),
            )
        })?;
        line.clear();
        encode(op, &mut line);
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

fn encode(op: &Operation, out: &mut String) {
    use std::fmt::Write as _;
    let string = |s: &str| serde_json::to_string(s).expect("strings always serialize");
    let opt = |s: Option<&String>| s.map_or_else(|| "null".to_string(), |s| string(s));
    let (value, expected) = match &op.kind {
        OpKind::Put { value, .. } => (Some(value), None),
        OpKind::Get { .. } | OpKind::Delete { .. } => (None, None),
        OpKind::Cas {
            expected, value, ..
        } => (Some(value), expected.as_ref()),
    };
    let result = match &op.result {
        None => "null".to_string(),
        Some(OpResult::Ok) => "\"ok\"".to_string(),
        Some(OpResult::Read(v)) => opt(v.as_ref()),
        Some(OpResult::Deleted(b)) | Some(OpResult::Swapped(b)) => b.to_string(),
    };
    let complete = op
        .complete_us
        .map_or_else(|| "null".to_string(), |t| us_to_ms(t).to_string());
    let _ = write!(
        out,
        "{{\"client\":{},\"op\":\"{}\",\"key\":{},\"value\":{},\"expected\":{},\
         \"invoke_ms\":{},\"complete_ms\":{},\"result\":{}}}",
        op.client,
        op.kind.name(),
        string(op.key()),
        opt(value),
        opt(expected),
        us_to_ms(op.invoke_us),
        complete,
        result,
    );
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Largest accepted time: beyond 2⁵¹ µs the conversion is no longer exact.
const MAX_MS: f64 = (1u64 << 51) as f64 / 1000.0;

/// Reads a history in the JSON lines format of the [module docs](self). Every
/// record is checked with [`Operation::validate`]; the first problem found is
/// returned with its line number.
pub fn read_jsonl(input: impl BufRead) -> Result<Vec<Operation>, HistoryError> {
    let mut history = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|source| HistoryError::Io {
            line: line_no,
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let op = decode(&line).map_err(|message| HistoryError::Invalid {
            line: line_no,
            message,
        })?;
        history.push(op);
    }
    Ok(history)
}

const FIELDS: [&str; 8] = [
    "client",
    "op",
    "key",
    "value",
    "expected",
    "invoke_ms",
    "complete_ms",
    "result",
];

fn decode(line: &str) -> Result<Operation, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("expected a JSON object".into());
    };
    if let Some(extra) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!("unknown field `{extra}`"));
    }
    let field = |name: &str| -> Result<&Value, String> {
        obj.get(name)
            .ok_or_else(|| format!("missing field `{name}`"))
    };
    let client = field("client")?
        .as_u64()
        .ok_or("`client` must be an unsigned integer")?;
    let key = field("key")?
        .as_str()
        .ok_or("`key` must be a string")?
        .to_string();
    let op = field("op")?.as_str().ok_or("`op` must be a string")?;
    let value = opt_string(&obj, "value")?;
    let expected = opt_string(&obj, "expected")?;
    let invoke_us = time(field("invoke_ms")?, "invoke_ms")?;
    let complete_us = match field("complete_ms")? {
        Value::Null => None,
        v => Some(time(v, "complete_ms")?),
    };
    let result = field("result")?;

    let needs_value =
        |value: Option<String>| value.ok_or_else(|| format!("`value` must be a string for a {op}"));
    let no_value = |value: &Option<String>| match value {
        Some(_) => Err(format!("`value` must be null for a {op}")),
        None => Ok(()),
    };
    if op != "cas" && expected.is_some() {
        return Err(format!("`expected` must be null for a {op}"));
    }
    let kind = match op {
        "put" => OpKind::Put {
            key,
            value: needs_value(value)?,
        },
        "get" => {
            no_value(&value)?;
            OpKind::Get { key }
        }
        "delete" => {
            no_value(&value)?;
            OpKind::Delete { key }
        }
        "cas" => OpKind::Cas {
            key,
            expected,
            value: needs_value(value)?,
        },
        other => {
            return Err(format!(
                "unknown `op` {other:?} (expected put, get, delete or cas)"
            ))
        }
    };

    let result = match complete_us {
        None if result.is_null() => None,
        None => return Err("`result` must be null when `complete_ms` is null".into()),
        Some(_) => Some(match (&kind, result) {
            (OpKind::Put { .. }, Value::String(s)) if s == "ok" => OpResult::Ok,
            (OpKind::Put { .. }, _) => return Err("the `result` of a put must be \"ok\"".into()),
            (OpKind::Get { .. }, Value::String(s)) => OpResult::Read(Some(s.clone())),
            (OpKind::Get { .. }, Value::Null) => OpResult::Read(None),
            (OpKind::Get { .. }, _) => {
                return Err("the `result` of a get must be a string or null".into())
            }
            (OpKind::Delete { .. }, Value::Bool(b)) => OpResult::Deleted(*b),
            (OpKind::Cas { .. }, Value::Bool(b)) => OpResult::Swapped(*b),
            (_, Value::Null) => {
                return Err(format!(
                    "a completed {op} needs a `result` of true or false"
                ))
            }
            _ => return Err(format!("the `result` of a {op} must be true or false")),
        }),
    };
    let op = Operation {
        client,
        kind,
        invoke_us,
        complete_us,
        result,
    };
    op.validate()?;
    Ok(op)
}

fn opt_string(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match obj.get(name) {
        None => Err(format!("missing field `{name}`")),
        Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{name}` must be a string or null")),
    }
}

fn time(v: &Value, name: &str) -> Result<u64, String> {
    let ms = v
        .as_f64()
        .ok_or_else(|| format!("`{name}` must be a number"))?;
    if !(0.0..=MAX_MS).contains(&ms) {
        return Err(format!(
            "`{name}` is {ms}, outside the accepted range [0, {MAX_MS}]"
        ));
    }
    Ok((ms * 1000.0).round() as u64)
}

/// Parameters of [`synthetic_history`].
#[derive(Clone, Debug)]
pub struct SynthConfig {
    /// Number of operations.
    pub ops: usize,
    /// Number of distinct keys (`k0`, `k1`, …), chosen uniformly.
    pub keys: usize,
    /// Number of clients; each has at most one operation outstanding at a time,
    /// except that after an indefinite operation it moves on while the lost
    /// operation may still take effect.
    pub clients: usize,
    /// Probability that an operation's response is lost. Half of the lost
    /// operations take effect, half never do.
    pub indefinite_ratio: f64,
    /// Latency of an operation, drawn uniformly from `1..=max_latency_us`.
    pub max_latency_us: u64,
    /// Pause of a client between operations, drawn from `0..=max_think_us`.
    pub max_think_us: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            ops: 1000,
            keys: 10,
            clients: 5,
            indefinite_ratio: 0.02,
            max_latency_us: 1000,
            max_think_us: 200,
        }
    }
}

/// Generates a linearizable concurrent history: clients issue random puts, gets,
/// deletes and cas operations (writes carry unique values) against an in-memory
/// map; each operation takes effect atomically at a random instant inside its
/// interval, and the results are computed by applying the operations in the order
/// of those instants. Deterministic in `seed`. Meant for testing and benchmarking
/// checkers.
pub fn synthetic_history(config: &SynthConfig, seed: u64) -> Vec<Operation> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let clients = config.clients.max(1);
    let keys = config.keys.max(1);
    let max_latency = config.max_latency_us.max(1);
    let mut next_free = vec![0u64; clients];
    // Last value written (in generation order) per key, a cheap guess of the current
    // value so that many cas operations succeed.
    let mut last_written: Vec<Option<String>> = vec![None; keys];
    let mut ops = Vec::with_capacity(config.ops);
    // Per op: the instant it takes effect, or None if it never does.
    let mut effect_at = Vec::with_capacity(config.ops);
    for seq in 0..config.ops {
        let client = (0..clients).min_by_key(|&c| next_free[c]).unwrap_or(0);
        let invoke = next_free[client] + rng.gen_range(0..=config.max_think_us);
        let latency = rng.gen_range(1..=max_latency);
        let k = rng.gen_range(0..keys);
        let key = format!("k{k}");
        let fresh = format!("c{client}.{seq}");
        let kind = match rng.gen_range(0..100) {
            0..=34 => OpKind::Get { key },
            35..=64 => {
                last_written[k] = Some(fresh.clone());
                OpKind::Put { key, value: fresh }
            }
            65..=74 => {
                last_written[k] = None;
                OpKind::Delete { key }
            }
            _ => {
                let expected = if rng.gen_bool(0.15) {
                    None
                } else {
                    last_written[k].clone()
                };
                last_written[k] = Some(fresh.clone());
                OpKind::Cas {
                    key,
                    expected,
                    value: fresh,
                }
            }
        };
        let lost = rng.gen_bool(config.indefinite_ratio.clamp(0.0, 1.0));
        let at = invoke + rng.gen_range(0..=latency);
        if lost {
            effect_at.push(rng.gen_bool(0.5).then_some(at));
            // The client times out after a while and moves on.
            next_free[client] = invoke + 2 * max_latency;
            ops.push(Operation::indefinite(client as u64, kind, invoke));
        } else {
            effect_at.push(Some(at));
            next_free[client] = invoke + latency;
            ops.push(Operation {
                client: client as u64,
                kind,
                invoke_us: invoke,
                complete_us: Some(invoke + latency),
                result: None, // filled in below
            });
        }
    }

    let mut order: Vec<usize> = (0..ops.len()).filter(|&i| effect_at[i].is_some()).collect();
    order.sort_by_key(|&i| (effect_at[i], i));
    let mut map: HashMap<String, String> = HashMap::new();
    for i in order {
        let op = &mut ops[i];
        let result = match &op.kind {
            OpKind::Put { key, value } => {
                map.insert(key.clone(), value.clone());
                OpResult::Ok
            }
            OpKind::Get { key } => OpResult::Read(map.get(key).cloned()),
            OpKind::Delete { key } => OpResult::Deleted(map.remove(key).is_some()),
            OpKind::Cas {
                key,
                expected,
                value,
            } => {
                let swap = map.get(key) == expected.as_ref();
                if swap {
                    map.insert(key.clone(), value.clone());
                }
                OpResult::Swapped(swap)
            }
        };
        if op.complete_us.is_some() {
            op.result = Some(result);
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_exactly_near_the_limit() {
        for us in [
            0u64,
            1,
            999,
            1001,
            123_456_789,
            (1 << 51) - 1,
            (1 << 51) - 999,
        ] {
            let ms: f64 = us_to_ms(us).to_string().parse().unwrap();
            assert_eq!((ms * 1000.0).round() as u64, us);
        }
    }

    #[test]
    fn validate_rejects_mismatched_results() {
        let get = OpKind::Get { key: "x".into() };
        assert!(
            Operation::completed(1, get.clone(), 0, 1, OpResult::Swapped(true))
                .validate()
                .is_err()
        );
        assert!(
            Operation::completed(1, get.clone(), 5, 1, OpResult::Read(None))
                .validate()
                .is_err()
        );
        let mut op = Operation::indefinite(1, get, 0);
        assert!(op.validate().is_ok());
        op.result = Some(OpResult::Read(None));
        assert!(op.validate().is_err());
    }
}
