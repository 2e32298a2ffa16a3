//! The verdict and figures of a chaos run: what `synod chaos` prints, as
//! one screen of text or as JSON (`--json`), and whether it passed.

use super::lease::{self, LeaseLog};
use super::lock::{LockLog, LockReport};
use super::nemesis::{Fault, Timeline};
use super::watch::WatchLog;
use super::{unavailability, ChaosArgs};
use std::collections::BTreeMap;
use std::path::Path;
use synod_sim::history::Operation;
use synod_sim::linearizability::CheckResult;

/// Everything a run found, borrowed from the run.
pub(super) struct Report<'a> {
    pub(super) args: &'a ChaosArgs,
    pub(super) kinds: &'a [Fault],
    pub(super) timeline: &'a Timeline,
    pub(super) history: &'a [Operation],
    pub(super) verdict: &'a CheckResult,
    pub(super) errors: &'a BTreeMap<String, u64>,
    /// Each run of failures a client had before its next success.
    pub(super) outages: &'a [(u32, u64)],
    pub(super) hashes: &'a [Result<u32, String>],
    pub(super) watch_logs: &'a [WatchLog],
    pub(super) reference: &'a WatchLog,
    pub(super) watch_problems: &'a [String],
    pub(super) lease_logs: &'a [LeaseLog],
    pub(super) overstays: &'a [i64],
    pub(super) lease_problems: &'a [String],
    pub(super) lock_logs: &'a [LockLog],
    pub(super) locks: &'a LockReport,
    pub(super) dir: &'a Path,
}

/// What the printed forms share, computed once.
struct Figures {
    ok_ops: usize,
    indefinite: usize,
    hashes_equal: bool,
    unavail: Vec<u64>,
    isolated: Vec<u64>,
    verdict_text: String,
    /// How often every member failed one client in a row: a client that
    /// retries a failed operation on each other member in turn sees an
    /// error only then.
    retry_failures: usize,
    longest_outage: u64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Report<'_> {
    /// Every check held.
    pub(super) fn passed(&self) -> bool {
        self.verdict.is_linearizable()
            && self.figures().hashes_equal
            && self.watch_problems.is_empty()
            && self.lease_problems.is_empty()
            && self.locks.problem.is_none()
    }

    fn figures(&self) -> Figures {
        let ok_ops = self
            .history
            .iter()
            .filter(|o| o.complete_us.is_some())
            .count();
        let mut unavail = unavailability(self.history, &self.timeline.leader_kills);
        unavail.sort_unstable();
        let mut isolated = unavailability(self.history, &self.timeline.leader_isolations);
        isolated.sort_unstable();
        let verdict_text = match self.verdict {
            CheckResult::Linearizable => "linearizable".to_string(),
            CheckResult::NotLinearizable(v) => format!("NOT linearizable: {}", v.explanation),
            CheckResult::Unknown { keys } => format!("unknown (search budget ran out on {keys:?})"),
            CheckResult::Malformed { index, reason } => format!("malformed op {index}: {reason}"),
        };
        Figures {
            ok_ops,
            indefinite: self.history.len() - ok_ops,
            hashes_equal: self
                .hashes
                .iter()
                .all(|h| h.is_ok() && *h == self.hashes[0]),
            unavail,
            isolated,
            verdict_text,
            retry_failures: self
                .outages
                .iter()
                .filter(|(count, _)| *count as usize >= self.args.members)
                .count(),
            longest_outage: self.outages.iter().map(|(_, us)| *us).max().unwrap_or(0),
        }
    }

    pub(super) fn json(&self) -> serde_json::Value {
        let Figures {
            ok_ops,
            indefinite,
            hashes_equal,
            unavail,
            isolated,
            verdict_text,
            retry_failures,
            longest_outage,
        } = self.figures();
        let (history, watch_logs, reference, watch_problems) = (
            self.history,
            self.watch_logs,
            self.reference,
            self.watch_problems,
        );
        let (lease_logs, overstays, lease_problems) =
            (self.lease_logs, self.overstays, self.lease_problems);
        let (lock_logs, locks, verdict, timeline) =
            (self.lock_logs, self.locks, self.verdict, self.timeline);
        serde_json::json!({
            "target": self.args.target,
            "unsafe_bug": self.args.unsafe_bug,
            "seed": self.args.seed,
            "members": self.args.members,
            "duration_s": self.args.duration,
            "operations": history.len(),
            "completed": ok_ops,
            "indefinite": indefinite,
            "faults": timeline.windows.len(),
            "leader_kills": timeline.leader_kills.len(),
            "write_unavailability_ms": unavail.iter().map(|u| ms(*u)).collect::<Vec<_>>(),
            "leader_isolations": timeline.leader_isolations.len(),
            "write_unavailability_after_isolation_ms":
                isolated.iter().map(|u| ms(*u)).collect::<Vec<_>>(),
            "client_errors": self.errors,
            "failed_after_trying_every_member": retry_failures,
            "longest_client_outage_ms": longest_outage as f64 / 1e3,
            "linearizable": verdict.is_linearizable(),
            "verdict": verdict_text,
            "hashkv_equal": hashes_equal,
            "watch": {
                "watchers": watch_logs.len(),
                "events": reference.events.len(),
                "resumes": watch_logs.iter().map(|l| l.resumes).sum::<u32>(),
                "gap_free": watch_problems.is_empty(),
                "problems": watch_problems,
            },
            "lease": {
                "clients": lease_logs.len(),
                "granted": lease_logs.iter().map(|l| l.granted).sum::<u32>(),
                "keep_alives": lease_logs.iter().map(|l| l.keep_alives).sum::<u32>(),
                "lapsed": lease_logs.iter().map(|l| l.lapsed).sum::<u32>(),
                "overstay_ms": overstays.iter().map(|o| *o as f64 / 1e3).collect::<Vec<_>>(),
                "ok": lease_problems.is_empty(),
                "problems": lease_problems,
            },
            "lock": {
                "lockers": lock_logs.len(),
                "holds": locks.holds,
                "stalls": locks.stalls,
                "overlapping_holds": locks.overlaps,
                "blind_increments_lost": locks.plain_lost,
                "fenced_writes_refused": locks.fenced_refused,
                "fenced_counter_exact": locks.problem.is_none(),
                "problem": locks.problem,
            },
            "out": self.dir.display().to_string(),
        })
    }

    pub(super) fn print(&self) {
        let Figures {
            ok_ops,
            indefinite,
            hashes_equal,
            unavail,
            isolated,
            verdict_text,
            retry_failures,
            longest_outage,
        } = self.figures();
        let (history, hashes, watch_logs, reference, watch_problems) = (
            self.history,
            self.hashes,
            self.watch_logs,
            self.reference,
            self.watch_problems,
        );
        let (lease_logs, overstays, lease_problems) =
            (self.lease_logs, self.overstays, self.lease_problems);
        let (lock_logs, locks, kinds, timeline) =
            (self.lock_logs, self.locks, self.kinds, self.timeline);
        let median = unavail.get(unavail.len() / 2).copied();
        println!(
            "synod chaos: {} x{}, seed {}, {} s, faults {:?}",
            self.args.target, self.args.members, self.args.seed, self.args.duration, kinds
        );
        for (t, e) in &timeline.events {
            println!("  {:>8.3}s  {e}", *t as f64 / 1e6);
        }
        println!(
            "operations: {} ({ok_ops} completed, {indefinite} indefinite)",
            history.len()
        );
        println!("history:    {verdict_text}");
        let errors = self.errors;
        if !errors.is_empty() {
            println!(
                "errors the register clients saw (each client then moved to the next member):"
            );
            for (e, n) in errors.iter() {
                println!("  {n:>6}  {e}");
            }
            println!(
                "            {retry_failures} times every member failed a client in a row; \
                 longest from a client's first failure to its next success: {:.0} ms",
                longest_outage as f64 / 1e3
            );
        }
        println!(
            "HashKV:     {} ({})",
            if hashes_equal {
                "equal on every member"
            } else {
                "DIFFERS"
            },
            hashes
                .iter()
                .map(|h| match h {
                    Ok(h) => format!("{h:08x}"),
                    Err(e) => e.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        let resumes: u32 = watch_logs.iter().map(|l| l.resumes).sum();
        let voluntary: u32 = watch_logs.iter().map(|l| l.voluntary).sum();
        match watch_problems.first() {
            None => println!(
                "watch:      {} watchers saw the same {} events, no gap, no duplicate \
                 ({resumes} resumes, {voluntary} of them on purpose)",
                watch_logs.len(),
                reference.events.len()
            ),
            Some(_) => {
                println!("watch:      {} PROBLEMS", watch_problems.len());
                for p in watch_problems.iter().take(10) {
                    println!("            {p}");
                }
            }
        }
        let granted: u32 = lease_logs.iter().map(|l| l.granted).sum();
        let kept: u32 = lease_logs.iter().map(|l| l.keep_alives).sum();
        let lapsed: u32 = lease_logs.iter().map(|l| l.lapsed).sum();
        let overstay = match (overstays.get(overstays.len() / 2), overstays.last()) {
            (Some(m), Some(x)) => format!(
                "keys outlived their TTL by median {:.0} ms, max {:.0} ms (allowed: \
                 {} ms past the end the faults allow)",
                *m as f64 / 1e3,
                *x as f64 / 1e3,
                lease::MARGIN.as_millis()
            ),
            _ => "no lease was left to expire".into(),
        };
        match lease_problems.first() {
            None => println!(
                "leases:     {granted} granted, {kept} keep-alives, no kept-alive lease expired \
                 ({lapsed} lapsed after a whole TTL without answers); {overstay}"
            ),
            Some(_) => {
                println!("leases:     {} PROBLEMS; {overstay}", lease_problems.len());
                for p in lease_problems.iter().take(10) {
                    println!("            {p}");
                }
            }
        }
        if !lock_logs.is_empty() {
            println!(
                "lock:       {} holds, {} stalls past the TTL, {} overlapping holds; \
                 blind counter lost {} increments; fenced counter {} ({} stale writes refused)",
                locks.holds,
                locks.stalls,
                locks.overlaps,
                locks.plain_lost,
                match &locks.problem {
                    None => "exact".to_string(),
                    Some(p) => format!("WRONG: {p}"),
                },
                locks.fenced_refused
            );
        }
        match median {
            Some(m) => println!(
                "write unavailability after {} leader kills: median {:.0} ms, max {:.0} ms",
                unavail.len(),
                ms(m),
                ms(*unavail.last().expect("non-empty"))
            ),
            None => println!("write unavailability: no leader was killed"),
        }
        if let (Some(first), Some(last)) = (isolated.first(), isolated.last()) {
            println!(
                "write unavailability after {} leader isolations: median {:.0} ms, min {:.0} ms, max {:.0} ms",
                isolated.len(),
                ms(isolated[isolated.len() / 2]),
                ms(*first),
                ms(*last)
            );
        }
        println!(
            "history, timeline and member logs in {} (kept with --out, or when a check fails)",
            self.dir.display()
        );
    }
}
