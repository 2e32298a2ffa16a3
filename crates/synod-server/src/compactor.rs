//! Automatic history compaction (`--auto-compaction-mode` and
//! `--auto-compaction-retention`), with etcd 3.4's meanings. The leader
//! alone runs it and proposes an ordinary `Compact` through the log; a member
//! that stops leading forgets its samples, as etcd's compactor pauses.
//!
//! - `periodic`, retention R (a duration): keep about R of history. Every
//!   R/10 the current revision is sampled; every min(R, 1 h) the history is
//!   compacted up to the revision that was current R ago.
//! - `revision`, retention N: every 5 minutes, compact up to N revisions
//!   before the current one.
//!
//! Time comes in as an argument, so the policy is tested without a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a member compacts its history by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    Periodic(Duration),
    Revision(i64),
}

/// etcd's interval between checks in revision mode.
const REVISION_CHECK: Duration = Duration::from_secs(300);

impl AutoCompaction {
    /// Parses the two flags as etcd does: a retention of "0" (or empty)
    /// turns compaction off; in periodic mode a bare number counts hours,
    /// otherwise it is a duration such as `30m` or `72h`.
    pub fn parse(mode: &str, retention: &str) -> Result<Option<AutoCompaction>, String> {
        let r = retention.trim();
        if r.is_empty() || r == "0" {
            return Ok(None);
        }
        let bad = || {
            format!(
                "--auto-compaction-retention: {r:?} is not valid for --auto-compaction-mode {mode}"
            )
        };
        match mode {
            "periodic" => {
                let d = match r.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours * 3600),
                    Err(_) => parse_duration(r).ok_or_else(bad)?,
                };
                Ok((!d.is_zero()).then_some(AutoCompaction::Periodic(d)))
            }
            "revision" => {
                let n = r.parse::<i64>().map_err(|_| bad())?;
                Ok((n > 0).then_some(AutoCompaction::Revision(n)))
            }
            other => Err(format!(
                "--auto-compaction-mode: {other:?} is neither \"periodic\" nor \"revision\""
            )),
        }
    }
}

/// A duration as Go writes one: numbers with units h, m, s, ms (`1h30m`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (num, tail) = rest.split_at(digits);
        let n: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += Duration::from_secs_f64(n * secs);
        rest = next;
    }
    Some(total)
}

/// The leader's compaction schedule.
#[derive(Debug)]
pub struct Compactor {
    policy: AutoCompaction,
    /// (when, revision) samples, oldest first (periodic mode).
    samples: VecDeque<(Instant, i64)>,
    next_sample: Option<Instant>,
    next_compaction: Option<Instant>,
    /// The last revision this compactor asked to compact up to.
    last: i64,
}

impl Compactor {
    pub fn new(policy: AutoCompaction) -> Compactor {
        Compactor {
            policy,
            samples: VecDeque::new(),
            next_sample: None,
            next_compaction: None,
            last: 0,
        }
    }

    /// This member stopped leading: start over when it leads again.
    pub fn pause(&mut self) {
        self.samples.clear();
        self.next_sample = None;
        self.next_compaction = None;
    }

    /// Called on the leader, at least every tick, with the store's current
    /// and compacted revisions: the revision to compact up to now, if any.
    pub fn poll(&mut self, now: Instant, revision: i64, compacted: i64) -> Option<i64> {
        let target = match self.policy {
            AutoCompaction::Periodic(retention) => self.periodic(now, retention, revision)?,
            AutoCompaction::Revision(keep) => {
                let due = *self.next_compaction.get_or_insert(now + REVISION_CHECK);
                if now < due {
                    return None;
                }
                self.next_compaction = Some(now + REVISION_CHECK);
                revision - keep
            }
        };
        if target <= compacted.max(self.last) || target <= 0 {
            return None;
        }
        self.last = target;
        Some(target)
    }

    fn periodic(&mut self, now: Instant, retention: Duration, revision: i64) -> Option<i64> {
        let every = retention.min(Duration::from_secs(3600));
        let sample = (retention / 10).max(Duration::from_millis(1));
        if self.next_sample.is_none_or(|t| now >= t) {
            self.samples.push_back((now, revision));
            self.next_sample = Some(now + sample);
        }
        let due = *self.next_compaction.get_or_insert(now + every);
        if now < due {
            return None;
        }
        self.next_compaction = Some(now + every);
        // The newest sample at least `retention` old, and nothing older.
        let mut target = None;
        while let Some(&(at, rev)) = self.samples.front() {
            if now.duration_since(at) < retention {
                break;
            }
            target = Some(rev);
            self.samples.pop_front();
        }
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_as_etcd_reads_them() {
        let p = |m, r| AutoCompaction::parse(m, r);
        assert_eq!(p("periodic", "0"), Ok(None));
        assert_eq!(
            p("periodic", "1"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(3600))))
        );
        assert_eq!(
            p("periodic", "1h30m"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(5400))))
        );
        assert_eq!(
            p("periodic", "2s"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(2))))
        );
        assert_eq!(
            p("revision", "1000"),
            Ok(Some(AutoCompaction::Revision(1000)))
        );
        assert!(p("revision", "1h").is_err());
        assert!(p("periodic", "soon").is_err());
        assert!(p("weekly", "1").is_err());
    }

    #[test]
    fn periodic_keeps_about_the_retention_of_history() {
        let t0 = Instant::now();
        let mut c = Compactor::new(AutoCompaction::Periodic(Duration::from_secs(10)));
        let mut asked = Vec::new();
        // One revision per second for a minute, polled every 100 ms.
        for ms in (0..60_000).step_by(100) {
            let now = t0 + Duration::from_millis(ms);
            if let Some(r) = c.poll(now, 1 + ms as i64 / 1000, 0) {
                asked.push((ms as i64 / 1000, r));
            }
        }
        assert!(!asked.is_empty());
        for (at, rev) in &asked {
            // The revision compacted to was current about 10 s earlier.
            let age = at + 1 - rev;
            assert!((10..=11).contains(&age), "at {at} s compacted to {rev}");
        }
        // Every 10 s, from the first 10 s on.
        assert_eq!(asked.len(), 5, "{asked:?}");
    }

    #[test]
    fn revision_mode_keeps_the_last_n_revisions_every_five_minutes() {
        let t0 = Instant::now();
        let mut c = Compactor::new(AutoCompaction::Revision(100));
        assert_eq!(c.poll(t0, 500, 0), None);
        assert_eq!(c.poll(t0 + Duration::from_secs(299), 900, 0), None);
        assert_eq!(c.poll(t0 + Duration::from_secs(300), 900, 0), Some(800));
        // Nothing new to compact: nothing asked.
        assert_eq!(c.poll(t0 + Duration::from_secs(600), 900, 800), None);
        c.pause();
        assert_eq!(c.poll(t0 + Duration::from_secs(601), 2000, 800), None);
    }
}
