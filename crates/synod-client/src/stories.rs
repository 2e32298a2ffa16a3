//! The seeds' stories as functions over a running cluster: the `synod`
//! crate's examples print what they return; this crate's tests assert it.

use crate::client::{Client, Error};
use crate::write_once::ServiceWriteOnce;
use std::sync::Mutex;
use synod_protocols::write_once::WriteOnce;

/// What every picker of the user of the day offered and learned.
#[derive(Clone, Debug)]
pub struct Picks {
    pub offered: Vec<String>,
    pub learned: Vec<String>,
}

/// `pickers` concurrent pickers, each on its own connection, each offering
/// a different user for `day`: one write-once variable decides.
pub async fn user_of_the_day(
    endpoints: &[String],
    day: &str,
    pickers: usize,
) -> Result<Picks, Error> {
    let key = format!("user-of-the-day/{day}");
    let tasks: Vec<_> = (0..pickers)
        .map(|i| {
            let client = Client::connect(endpoints);
            let key = key.clone();
            tokio::spawn(async move {
                let var = ServiceWriteOnce::<String>::new(client?, key);
                let offer = format!("user-{i}");
                let learned = var.try_initialize(offer.clone()).await?;
                Ok::<_, Error>((offer, learned))
            })
        })
        .collect();
    let mut picks = Picks {
        offered: Vec::new(),
        learned: Vec::new(),
    };
    for t in tasks {
        let (offer, learned) = t.await.expect("picker task")?;
        picks.offered.push(offer);
        picks.learned.push(learned);
    }
    Ok(picks)
}

/// What the shipper and the canceller of one order each learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fate {
    pub shipper_learned: String,
    pub canceller_learned: String,
}

/// A shipper and a canceller race to decide order `order`'s fate.
pub async fn order_cancellation(endpoints: &[String], order: &str) -> Result<Fate, Error> {
    let key = format!("orders/{order}/fate");
    let race = |offer: &'static str| {
        let client = Client::connect(endpoints);
        let key = key.clone();
        tokio::spawn(async move {
            ServiceWriteOnce::<String>::new(client?, key)
                .try_initialize(offer.to_string())
                .await
        })
    };
    let (ship, cancel) = (race("shipped"), race("cancelled"));
    Ok(Fate {
        shipper_learned: ship.await.expect("shipper task")?,
        canceller_learned: cancel.await.expect("canceller task")?,
    })
}

/// A resource that accepts a write only with a fencing token at least as
/// high as any it has seen, so a holder whose lock lapsed cannot overwrite
/// the work of the holder after it.
#[derive(Default)]
pub struct FencedResource {
    highest: Mutex<i64>,
    pub log: Mutex<Vec<String>>,
}

impl FencedResource {
    /// Applies `what` if `token` is not stale; says what happened.
    pub fn write(&self, token: i64, what: &str) -> Result<(), String> {
        let mut highest = self.highest.lock().unwrap_or_else(|e| e.into_inner());
        if token < *highest {
            return Err(format!(
                "rejected {what:?}: token {token} is older than {}",
                *highest
            ));
        }
        *highest = token;
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{what} (token {token})"));
        Ok(())
    }
}

/// What happened to the two holders of the lock.
#[derive(Debug)]
pub struct Fencing {
    pub stale_token: i64,
    pub next_token: i64,
    pub next_write: Result<(), String>,
    pub stale_write: Result<(), String>,
    pub log: Vec<String>,
}

/// A holder takes the lock under a `ttl`-second lease and then stalls (as if
/// paused by the OS or a long GC) without keeping its lease alive; the lease
/// runs out, a second holder takes the lock and writes; the first wakes up
/// and tries to write with its old token.
pub async fn fencing_lock(endpoints: &[String], name: &str, ttl: i64) -> Result<Fencing, Error> {
    let client = Client::connect(endpoints)?;
    let resource = FencedResource::default();
    let (stale_lease, _) = client.grant(ttl).await?;
    let stale = client.lock(name, stale_lease).await?;

    // The second holder waits in line; its lease is kept alive.
    let next_client = client.clone();
    let next_name = name.to_string();
    let next = tokio::spawn(async move {
        let (lease, granted) = next_client.grant(ttl).await?;
        let keeper = next_client.keep_alive(lease, granted);
        let guard = next_client.lock(next_name, lease).await?;
        Ok::<_, Error>((guard, keeper))
    });
    // The first holder "pauses" past its lease: the lock passes on meanwhile.
    let (next_guard, _keeper) = next.await.expect("second holder task")?;
    let next_write = resource.write(next_guard.token, "second holder's update");
    let stale_write = resource.write(stale.token, "first holder's late update");
    client.unlock(&next_guard).await?;
    let log = resource
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Fencing {
        stale_token: stale.token,
        next_token: next_guard.token,
        next_write,
        stale_write,
        log,
    })
}

/// The branch after every pusher pushed, and how many pushes lost a race.
#[derive(Clone, Debug)]
pub struct Branch {
    pub history: Vec<String>,
    pub retries: u64,
}

/// `pushers` concurrent pushers each push `commits` commits to one branch
/// ref: a push is a compare-and-swap on the ref's mod revision; a pusher
/// that lost the race reads the new head ("rebases") and tries again.
pub async fn branch_pushes(
    endpoints: &[String],
    branch: &str,
    pushers: usize,
    commits: usize,
) -> Result<Branch, Error> {
    let key = format!("refs/heads/{branch}");
    let tasks: Vec<_> = (0..pushers)
        .map(|p| {
            let client = Client::connect(endpoints);
            let key = key.clone();
            tokio::spawn(async move {
                let client = client?;
                let mut retries = 0;
                for c in 0..commits {
                    loop {
                        let head = client.get(&key).await?;
                        let (rev, mut history) = match head {
                            Some(kv) => (
                                kv.mod_revision,
                                String::from_utf8_lossy(&kv.value).into_owned(),
                            ),
                            None => (0, String::new()),
                        };
                        if !history.is_empty() {
                            history.push(' ');
                        }
                        history.push_str(&format!("p{p}c{c}"));
                        let r = client
                            .txn(
                                crate::Txn::new()
                                    .if_mod_revision(&key, rev)
                                    .then(crate::txn::put(key.clone(), history, 0)),
                            )
                            .await?;
                        if r.succeeded {
                            break;
                        }
                        retries += 1;
                    }
                }
                Ok::<_, Error>(retries)
            })
        })
        .collect();
    let mut retries = 0;
    for t in tasks {
        retries += t.await.expect("pusher task")?;
    }
    let client = Client::connect(endpoints)?;
    let history = client
        .get(&key)
        .await?
        .map(|kv| {
            String::from_utf8_lossy(&kv.value)
                .split(' ')
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(Branch { history, retries })
}

/// The same account opened on two servers at once, without and with
/// consensus.
#[derive(Clone, Debug)]
pub struct TwoServers {
    /// Each server's owner of the account when each decided alone.
    pub alone: (String, String),
    /// What each server learned when both asked synod's write-once variable.
    pub agreed: (String, String),
}

/// Two servers each accept a request to open `account`: alice's reaches
/// the first, bob's the second. Deciding alone, each keeps its own owner and
/// they disagree forever; deciding through one write-once variable on synod,
/// both keep the same owner.
pub async fn two_servers(endpoints: &[String], account: &str) -> Result<TwoServers, Error> {
    use std::collections::HashMap;
    let open_alone = |owner: &str| {
        let mut accounts: HashMap<String, String> = HashMap::new();
        accounts
            .entry(account.to_string())
            .or_insert_with(|| owner.to_string())
            .clone()
    };
    let alone = (open_alone("alice"), open_alone("bob"));
    let key = format!("accounts/{account}/owner");
    let server = |owner: &'static str, endpoint: String| {
        let key = key.clone();
        tokio::spawn(async move {
            let client = Client::connect(&[endpoint])?;
            ServiceWriteOnce::<String>::new(client, key)
                .try_initialize(owner.into())
                .await
        })
    };
    let last = endpoints.last().cloned().unwrap_or_default();
    let (first, second) = (server("alice", endpoints[0].clone()), server("bob", last));
    let agreed = (
        first.await.expect("server task")?,
        second.await.expect("server task")?,
    );
    Ok(TwoServers { alone, agreed })
}

/// Every version of the configuration each watcher applied, in order.
#[derive(Clone, Debug)]
pub struct ConfigRollout {
    pub written: Vec<String>,
    /// Per watcher (one per endpoint): the versions it applied.
    pub applied: Vec<Vec<String>>,
}

/// A writer updates `key` `versions` times; a watcher on every endpoint
/// applies each version it is told of.
pub async fn config_watch(
    endpoints: &[String],
    key: &str,
    versions: usize,
) -> Result<ConfigRollout, Error> {
    let writer = Client::connect(endpoints)?;
    let (start, _) = writer.get_prefix(key).await?;
    let watchers: Vec<_> = endpoints
        .iter()
        .map(|e| {
            let client = Client::connect(&[e]);
            let key = key.to_string();
            tokio::spawn(async move {
                let mut events = client?.watch(key, start + 1);
                let mut applied = Vec::new();
                while applied.len() < versions {
                    match events.recv().await {
                        Some(e) => applied
                            .extend(e.kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned())),
                        None => break,
                    }
                }
                Ok::<_, Error>(applied)
            })
        })
        .collect();
    let mut written = Vec::new();
    for v in 1..=versions {
        let value = format!("replicas={v}");
        writer.put(key, value.clone()).await?;
        written.push(value);
    }
    let mut applied = Vec::new();
    for w in watchers {
        applied.push(w.await.expect("watcher task")?);
    }
    Ok(ConfigRollout { written, applied })
}

/// The next leader an observer reports, within 30 s.
async fn next_leader(seen: &mut tokio::sync::mpsc::Receiver<Vec<u8>>) -> Result<String, Error> {
    match tokio::time::timeout(std::time::Duration::from_secs(30), seen.recv()).await {
        Ok(Some(v)) => Ok(String::from_utf8_lossy(&v).into_owned()),
        _ => Err(Error::Protocol("no leader observed within 30 s".into())),
    }
}

/// Who led the election, in the order the observer saw them.
#[derive(Clone, Debug)]
pub struct Succession {
    pub observed: Vec<String>,
    pub killed: String,
}

/// Campaigns in `election` as `name` under a `ttl`-second lease kept
/// alive, then holds on until the process is killed: what a candidate
/// process of [`leader_election`] runs.
pub async fn candidate(
    endpoints: &[String],
    election: &str,
    name: &str,
    ttl: i64,
) -> Result<(), Error> {
    let client = Client::connect(endpoints)?;
    let (lease, granted) = client.grant(ttl).await?;
    let _keeper = client.keep_alive(lease, granted);
    client.campaign(election, lease, name).await?;
    std::future::pending::<()>().await;
    Ok(())
}

/// Starts `candidates` candidate processes (`spawn(name)` runs
/// [`candidate`] in a new process), observes who leads, kills the leader's
/// process, and observes the next leader take over once the dead leader's
/// lease runs out. Every candidate process is killed before returning.
pub async fn leader_election(
    endpoints: &[String],
    election: &str,
    candidates: usize,
    spawn: impl Fn(&str) -> std::process::Child,
) -> Result<Succession, Error> {
    let client = Client::connect(endpoints)?;
    let mut procs: std::collections::BTreeMap<String, std::process::Child> = (0..candidates)
        .map(|i| format!("candidate-{i}"))
        .map(|n| (n.clone(), spawn(&n)))
        .collect();
    let mut seen = client.observe(election);
    let result = async {
        let first = next_leader(&mut seen).await?;
        let mut dead = procs
            .remove(&first)
            .ok_or_else(|| Error::Protocol(format!("unknown leader {first}")))?;
        let _ = dead.kill();
        let _ = dead.wait();
        let second = next_leader(&mut seen).await?;
        Ok(Succession {
            observed: vec![first.clone(), second],
            killed: first,
        })
    }
    .await;
    for (_, mut p) in procs {
        let _ = p.kill();
        let _ = p.wait();
    }
    result
}
