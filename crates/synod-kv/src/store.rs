//! The multi-version store: every key keeps its history of revisions until
//! compaction, so reads at a past revision and watches from a past revision work
//! as they do in etcd.

use crate::auth::{AuthError, AuthState};
use crate::history::{History, Live, Rec, Rev};
use crate::types::*;
use crate::Error;
use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// etcd's largest lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    ttl: i64,
    keys: BTreeSet<Vec<u8>>,
}

/// etcd's key-value data model as a deterministic state machine. Raft applies
/// the same [`Command`]s in the same order on every replica, and every replica
/// ends with the same store (compare [`Store::hash`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// The current revision: 1 for an empty store, +1 per write transaction
    /// that changed something.
    revision: i64,
    /// History before this revision is gone (0: never compacted).
    compacted: i64,
    /// Per key, its revisions ([`History`]: never empty, strictly
    /// increasing `rev`). Invariant: never two tombstones in a row.
    ///
    /// Persistent maps (structure shared between copies): a copy of the
    /// store is taken in O(1) so that a snapshot can be encoded on another
    /// thread while this one goes on applying (issue 11). They encode as
    /// ordered maps, like `BTreeMap`.
    #[serde(serialize_with = "crate::history::serialize_keys")]
    keys: OrdMap<Box<[u8]>, History>,
    leases: OrdMap<i64, Lease>,
    /// The last id the store picked for a grant that asked for id 0.
    last_lease_id: i64,
    max_txn_ops: usize,
    /// Members by etcd member id, removed ones included (see
    /// [`MemberRecord::removed`]). Replicated with the keys so that a member
    /// restored from a snapshot knows where its peers are.
    members: BTreeMap<u64, MemberRecord>,
    /// Alarms raised and not yet cleared, by member.
    alarms: BTreeSet<(u64, AlarmType)>,
    /// Users, roles and permissions (etcd's auth store).
    auth: AuthState,
    /// [`Store::retained_bytes`], kept up to date by every write so that
    /// the quota check on each put costs nothing. Not encoded: a store
    /// decoded from a snapshot walks its history once, when first asked.
    #[serde(skip)]
    retained: ByteCount,
    /// Whether writes list what they changed ([`Event`]s, each a copy of a
    /// key and value, and of what it replaced): a member turns them off
    /// while nobody watches it ([`Store::set_events`]). Not part of the
    /// state: on or off, a write changes the store alike.
    #[serde(skip)]
    events: Switch,
}

/// What a put carries on from the revision it replaces.
struct Held {
    create_revision: i64,
    version: i64,
    lease: i64,
    /// The value, only when the put keeps it (`ignore_value`).
    value: Option<Box<[u8]>>,
}

/// A setting of a store that takes no part in comparing stores; on unless
/// turned off.
#[derive(Clone, Debug)]
struct Switch(bool);

impl Switch {
    fn on(&self) -> bool {
        self.0
    }
}

impl Default for Switch {
    fn default() -> Self {
        Switch(true)
    }
}

impl PartialEq for Switch {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Switch {}

/// A byte count that may not be known yet (`u64::MAX`). Derived data: it
/// takes no part in comparing stores.
#[derive(Debug)]
struct ByteCount(AtomicU64);

const UNCOUNTED: u64 = u64::MAX;

impl Default for ByteCount {
    fn default() -> Self {
        ByteCount(AtomicU64::new(UNCOUNTED))
    }
}

impl Clone for ByteCount {
    fn clone(&self) -> Self {
        ByteCount(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

impl PartialEq for ByteCount {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ByteCount {}

impl ByteCount {
    /// Adds `delta` (negative: frees) if the count is known.
    fn add(&mut self, delta: i64) {
        let n = self.0.get_mut();
        if *n != UNCOUNTED {
            *n = n
                .checked_add_signed(delta)
                .expect("retained bytes never go below zero");
        }
    }
}

/// A revision's fixed fields: rev (2), create, version, lease.
const PER_REVISION: usize = 5 * std::mem::size_of::<i64>();

/// What one revision of `key` counts in [`Store::retained_bytes`].
fn rec_bytes(key: &[u8], r: Rec<'_>) -> i64 {
    (key.len() + PER_REVISION + r.live.map_or(0, |l| l.value.len())) as i64
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

/// The revision a write transaction is building, and what it changed.
struct Ctx {
    main: i64,
    sub: i64,
    events: Vec<Event>,
}

impl Ctx {
    fn next(&mut self) -> Rev {
        let rev = Rev {
            main: self.main,
            sub: self.sub,
        };
        self.sub += 1;
        rev
    }
}

type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The keys a request names, as map bounds (`None`: an empty range).
fn bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if range_end.is_empty() {
        Some((Bound::Included(key), Bound::Included(key)))
    } else if range_end == [0] {
        Some((Bound::Included(key), Bound::Unbounded))
    } else if range_end <= key {
        None
    } else {
        Some((Bound::Included(key), Bound::Excluded(range_end)))
    }
}

/// True if `k` lies in the range `key..range_end` (etcd's conventions).
fn contains(key: &[u8], range_end: &[u8], k: &[u8]) -> bool {
    if range_end.is_empty() {
        k == key
    } else if range_end == [0] {
        k >= key
    } else {
        k >= key && k < range_end
    }
}

fn kv(key: &[u8], rec: Rec<'_>) -> Option<KeyValue> {
    rec.live.map(|l| KeyValue {
        key: key.to_vec(),
        create_revision: l.create_revision,
        mod_revision: rec.rev.main,
        version: l.version,
        value: l.value.to_vec(),
        lease: l.lease,
    })
}

fn compare_i64(a: i64, b: i64, r: CompareResult) -> bool {
    match r {
        CompareResult::Equal => a == b,
        CompareResult::NotEqual => a != b,
        CompareResult::Greater => a > b,
        CompareResult::Less => a < b,
    }
}

fn compare_bytes(a: &[u8], b: &[u8], r: CompareResult) -> bool {
    match r {
        CompareResult::Equal => a == b,
        CompareResult::NotEqual => a != b,
        CompareResult::Greater => a > b,
        CompareResult::Less => a < b,
    }
}

impl Store {
    pub fn new() -> Store {
        Store {
            revision: 1,
            compacted: 0,
            keys: OrdMap::new(),
            leases: OrdMap::new(),
            last_lease_id: 0,
            max_txn_ops: MAX_TXN_OPS,
            members: BTreeMap::new(),
            alarms: BTreeSet::new(),
            auth: AuthState::default(),
            retained: ByteCount(AtomicU64::new(0)),
            events: Switch::default(),
        }
    }

    /// A store that allows `max` operations per transaction branch (etcd's
    /// `--max-txn-ops`). Every replica must use the same value.
    pub fn with_max_txn_ops(mut self, max: usize) -> Store {
        self.max_txn_ops = max;
        self
    }

    /// The current revision (what a response header reports).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The revision history was last compacted at (0: never).
    pub fn compact_revision(&self) -> i64 {
        self.compacted
    }

    /// Reads keys; changes nothing.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        validate_range(req)?;
        self.check_revision(req.revision, self.revision)?;
        Ok(self.range_at(req, self.revision))
    }

    /// Whether writes list what they changed (on by default). Off, every
    /// write still changes the store exactly as it would on, but returns no
    /// [`Event`]s: for a member that nobody watches, which would only drop
    /// them. Watches that start later read older changes from the history.
    pub fn set_events(&mut self, on: bool) {
        self.events = Switch(on);
    }

    /// Applies one replicated command. On error the store is unchanged, and
    /// every replica gets the same error.
    pub fn apply(&mut self, cmd: &Command) -> Result<(CommandResponse, Vec<Event>), Error> {
        cmd.validate(self.max_txn_ops)?;
        if cmd.takes_space() && self.no_space() {
            return Err(Error::NoSpace);
        }
        match cmd {
            Command::Tagged { cmd, .. } => self.apply(cmd),
            Command::As { user, cmd } => {
                let leases = &self.leases;
                self.auth
                    .check_command(user, cmd, &|id| leases.get(&id).map(|l| &l.keys))
                    .map_err(Error::Auth)?;
                self.apply_checked(cmd)
            }
            // A client's request proposed while auth looked disabled, applied
            // after it was enabled: refused as a request without a user.
            Command::Put(_) | Command::DeleteRange(_) | Command::Txn(_) | Command::Auth(_)
                if self.auth.enabled() =>
            {
                Err(Error::Auth(AuthError::UserEmpty))
            }
            _ => self.apply_checked(cmd),
        }
    }

    /// Applies `cmd` as if its sender had every permission: the
    /// `auth_unchecked` bug of [`crate::replica::ReplicaBugs`], which the
    /// simulator must catch.
    pub fn apply_unchecked(
        &mut self,
        cmd: &Command,
    ) -> Result<(CommandResponse, Vec<Event>), Error> {
        cmd.validate(self.max_txn_ops)?;
        self.apply_checked(cmd.inner())
    }

    /// Applies a command whose permissions were checked.
    fn apply_checked(&mut self, cmd: &Command) -> Result<(CommandResponse, Vec<Event>), Error> {
        match cmd {
            Command::As { .. } | Command::Tagged { .. } => {
                unreachable!("apply unwraps a tag, validate refuses a nested As")
            }
            Command::Auth(a) => {
                self.auth.apply(a).map_err(Error::Auth)?;
                Ok((CommandResponse::Auth, Vec::new()))
            }
            Command::Put(p) => {
                // A transaction of this one put, without building one (that
                // copied the key and value of every put): the same check,
                // then the same write at the next revision.
                self.check_put(p)?;
                let mut ctx = Ctx {
                    main: self.revision + 1,
                    sub: 0,
                    // Allocated only by an event (someone watches).
                    events: Vec::new(),
                };
                let resp = self.put(p, &mut ctx);
                debug_assert_eq!(ctx.sub, 1, "a put writes one revision");
                self.revision = ctx.main;
                Ok((CommandResponse::Put(resp), ctx.events))
            }
            Command::DeleteRange(d) => {
                let txn = TxnRequest {
                    success: vec![RequestOp::DeleteRange(d.clone())],
                    ..TxnRequest::default()
                };
                let (mut r, events) = self.txn(&txn)?;
                let Some(ResponseOp::DeleteRange(d)) = r.responses.pop() else {
                    unreachable!("a one-delete transaction answers with a delete")
                };
                Ok((CommandResponse::DeleteRange(d), events))
            }
            Command::Txn(t) => {
                let (r, events) = self.txn(t)?;
                Ok((CommandResponse::Txn(r), events))
            }
            Command::Compact { revision } => {
                self.compact(*revision)?;
                Ok((CommandResponse::Compact, Vec::new()))
            }
            Command::LeaseGrant { id, ttl } => {
                let id = self.lease_grant(*id, *ttl)?;
                Ok((CommandResponse::LeaseGrant { id, ttl: *ttl }, Vec::new()))
            }
            Command::LeaseRevoke { id } => {
                let events = self.lease_revoke(*id)?;
                Ok((CommandResponse::LeaseRevoke, events))
            }
            Command::Member(change) => {
                self.change_member(change);
                Ok((CommandResponse::Member, Vec::new()))
            }
            Command::Alarm {
                active,
                member,
                alarm,
            } => {
                if *active {
                    self.alarms.insert((*member, *alarm));
                } else {
                    self.alarms.remove(&(*member, *alarm));
                }
                Ok((CommandResponse::Alarm, Vec::new()))
            }
        }
    }

    /// Whether the NOSPACE alarm is raised (by any member).
    pub fn no_space(&self) -> bool {
        self.alarms.iter().any(|(_, a)| *a == AlarmType::NoSpace)
    }

    /// The alarms raised, by member.
    pub fn alarms(&self) -> &BTreeSet<(u64, AlarmType)> {
        &self.alarms
    }

    fn change_member(&mut self, change: &MemberChange) {
        match change {
            MemberChange::PeerUrls { id, peer_urls } => {
                let m = self.members.entry(*id).or_default();
                m.peer_urls.clone_from(peer_urls);
            }
            MemberChange::Attributes {
                id,
                name,
                client_urls,
            } => {
                let m = self.members.entry(*id).or_default();
                m.name.clone_from(name);
                m.client_urls.clone_from(client_urls);
            }
            MemberChange::Removed { id } => {
                self.members.entry(*id).or_default().removed = true;
            }
        }
    }

    /// The store without its member records (a backup carries data, not
    /// the membership of the cluster it came from).
    pub fn without_members(mut self) -> Store {
        self.members.clear();
        self.alarms.clear();
        self
    }

    /// Keys alive at the current revision.
    pub fn live_keys(&self) -> i64 {
        self.keys
            .values()
            .filter(|recs| recs.last().live.is_some())
            .count() as i64
    }

    /// What the cluster records of its members, removed ones included.
    pub fn members(&self) -> &BTreeMap<u64, MemberRecord> {
        &self.members
    }

    /// Users, roles and permissions.
    pub fn auth(&self) -> &AuthState {
        &self.auth
    }

    fn check_revision(&self, requested: i64, current: i64) -> Result<(), Error> {
        if requested > current {
            return Err(Error::FutureRevision { requested, current });
        }
        if requested > 0 && requested < self.compacted {
            return Err(Error::Compacted {
                requested,
                compacted: self.compacted,
            });
        }
        Ok(())
    }

    fn keys_in<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> impl Iterator<Item = (&'a Box<[u8]>, &'a History)> + 'a {
        bounds(key, range_end)
            .map(|b| self.keys.range::<_, [u8]>(b))
            .into_iter()
            .flatten()
    }

    /// The range as of `current` (the store's revision, or inside a write
    /// transaction the one it is building); `req` is already checked.
    fn range_at(&self, req: &RangeRequest, current: i64) -> RangeResponse {
        let rev = if req.revision > 0 {
            req.revision
        } else {
            current
        };
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // Without sorting or filters only limit+1 keys are needed (the extra one
        // sets `more`); the count still covers the whole range.
        let fetch = if req.sort_order != SortOrder::None || filtered || req.limit <= 0 {
            usize::MAX
        } else {
            req.limit as usize + 1
        };
        let mut kvs = Vec::new();
        let mut count = 0;
        for (k, recs) in self.keys_in(&req.key, &req.range_end) {
            let Some(found) = recs.at(rev).and_then(|r| kv(k, r)) else {
                continue;
            };
            count += 1;
            if !req.count_only && kvs.len() < fetch {
                kvs.push(found);
            }
        }
        if filtered {
            kvs.retain(|kv| {
                (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                    && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                    && (req.min_create_revision == 0
                        || kv.create_revision >= req.min_create_revision)
                    && (req.max_create_revision == 0
                        || kv.create_revision <= req.max_create_revision)
            });
        }
        // Keys come out ascending; any other target sorts ascending by default.
        let order = match (req.sort_order, req.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (o, _) => o,
        };
        if order != SortOrder::None {
            let target = req.sort_target;
            kvs.sort_by(|a, b| {
                let o = match target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                };
                if order == SortOrder::Descend {
                    o.reverse()
                } else {
                    o
                }
            });
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        RangeResponse { kvs, more, count }
    }

    fn latest(&self, key: &[u8]) -> Option<KeyValue> {
        kv(key, self.keys.get(key)?.last())
    }

    fn compare(&self, c: &Compare) -> bool {
        let mut any = false;
        for (k, recs) in self.keys_in(&c.key, &c.range_end) {
            let Some(found) = kv(k, recs.last()) else {
                continue;
            };
            any = true;
            if !Self::compare_kv(&found, c) {
                return false;
            }
        }
        if any {
            return true;
        }
        // No key in range: compare against a missing key, except that a value
        // cannot be compared with nothing.
        if matches!(c.target, CompareTarget::Value(_)) {
            return false;
        }
        Self::compare_kv(&KeyValue::default(), c)
    }

    fn compare_kv(kv: &KeyValue, c: &Compare) -> bool {
        match &c.target {
            CompareTarget::Version(v) => compare_i64(kv.version, *v, c.result),
            CompareTarget::Create(v) => compare_i64(kv.create_revision, *v, c.result),
            CompareTarget::Mod(v) => compare_i64(kv.mod_revision, *v, c.result),
            CompareTarget::Lease(v) => compare_i64(kv.lease, *v, c.result),
            CompareTarget::Value(v) => compare_bytes(&kv.value, v, c.result),
        }
    }

    /// Which branch every transaction on the taken path takes, decided before
    /// anything is written (pre-order over nested transactions, as etcd does:
    /// nested comparisons see the store as it was when the transaction began).
    fn path(&self, t: &TxnRequest, out: &mut Vec<bool>) {
        let ok = t.compare.iter().all(|c| self.compare(c));
        out.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            if let RequestOp::Txn(inner) = op {
                self.path(inner, out);
            }
        }
    }

    /// Checks every operation on the taken path against the store as it is, so a
    /// transaction either applies whole or fails without a trace.
    fn check_path(
        &self,
        t: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
    ) -> Result<(), Error> {
        let ok = *path.next().expect("path covers the transaction");
        for op in if ok { &t.success } else { &t.failure } {
            match op {
                RequestOp::Range(r) => self.check_revision(r.revision, self.revision)?,
                RequestOp::Put(p) => self.check_put(p)?,
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(inner) => self.check_path(inner, path)?,
            }
        }
        Ok(())
    }

    /// What a put needs before it may be applied: its lease, and for
    /// `ignore_value`/`ignore_lease` the key.
    fn check_put(&self, p: &PutRequest) -> Result<(), Error> {
        if p.lease != 0 && !self.leases.contains_key(&p.lease) {
            return Err(Error::LeaseNotFound(p.lease));
        }
        if (p.ignore_value || p.ignore_lease) && self.latest(&p.key).is_none() {
            return Err(Error::KeyNotFound);
        }
        Ok(())
    }

    fn txn(&mut self, t: &TxnRequest) -> Result<(TxnResponse, Vec<Event>), Error> {
        let mut path = Vec::new();
        self.path(t, &mut path);
        self.check_path(t, &mut path.iter())?;
        let mut ctx = Ctx {
            main: self.revision + 1,
            sub: 0,
            events: Vec::new(),
        };
        let resp = self.exec(t, &mut path.iter(), &mut ctx);
        if ctx.sub > 0 {
            self.revision = ctx.main;
        }
        Ok((resp, ctx.events))
    }

    fn exec(
        &mut self,
        t: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
        ctx: &mut Ctx,
    ) -> TxnResponse {
        let succeeded = *path.next().expect("path covers the transaction");
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => {
                    // Reads inside a transaction see its earlier writes.
                    let current = if ctx.sub > 0 { ctx.main } else { self.revision };
                    ResponseOp::Range(self.range_at(r, current))
                }
                RequestOp::Put(p) => ResponseOp::Put(self.put(p, ctx)),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete(d, ctx)),
                RequestOp::Txn(inner) => ResponseOp::Txn(self.exec(inner, path, ctx)),
            });
        }
        TxnResponse {
            succeeded,
            responses,
        }
    }

    fn put(&mut self, p: &PutRequest, ctx: &mut Ctx) -> PutResponse {
        let recording = self.events.on();
        // One walk down the map, for reading the key's newest record and for
        // adding the new one: the first of two walks was 6% of the member
        // threads' time under puts (each compares the key all the way down).
        let mut recs = self.keys.get_mut(p.key.as_slice());
        // What the key holds now, if it is live: the numbers the new
        // revision carries on, and as a whole (copied) only for the answer
        // or an event that asks for it.
        let (prev, mut held) = match recs.as_deref() {
            Some(recs) => {
                let rec = recs.last();
                let prev = (p.prev_kv || recording).then(|| kv(&p.key, rec)).flatten();
                let held = rec.live.as_ref().map(|l| Held {
                    create_revision: l.create_revision,
                    version: l.version,
                    lease: l.lease,
                    value: p.ignore_value.then(|| l.value.into()),
                });
                (prev, held)
            }
            None => (None, None),
        };
        // Copied into the new revision's block from the request, or for
        // `ignore_value` from the revision it replaces.
        let kept = held.as_mut().and_then(|h| h.value.take());
        let value = kept.as_deref().unwrap_or(&p.value);
        let lease = match (&held, p.ignore_lease) {
            (Some(h), true) => h.lease,
            _ => p.lease,
        };
        let (create_revision, version) = match &held {
            Some(h) => (h.create_revision, h.version + 1),
            None => (ctx.main, 1),
        };
        let old_lease = held.as_ref().map_or(0, |h| h.lease);
        if old_lease != lease {
            if let Some(l) = self.leases.get_mut(&old_lease) {
                l.keys.remove(&p.key);
            }
        }
        if lease != 0 {
            self.leases
                .get_mut(&lease)
                .expect("checked before the transaction began")
                .keys
                .insert(p.key.clone());
        }
        let rec = Rec {
            rev: ctx.next(),
            live: Some(Live {
                value,
                create_revision,
                version,
                lease,
            }),
        };
        let new = recording.then(|| kv(&p.key, rec).expect("a put is live"));
        self.retained.add(rec_bytes(&p.key, rec));
        // The key is cloned only when it is new to the map.
        match recs.as_mut() {
            Some(recs) => recs.push(rec),
            None => {
                self.keys.insert(p.key.as_slice().into(), History::new(rec));
            }
        }
        if let Some(kv) = new {
            ctx.events.push(Event {
                kind: EventKind::Put,
                kv,
                prev_kv: prev.clone(),
            });
        }
        PutResponse {
            prev_kv: if p.prev_kv { prev } else { None },
        }
    }

    fn delete(&mut self, d: &DeleteRangeRequest, ctx: &mut Ctx) -> DeleteRangeResponse {
        let doomed: Vec<KeyValue> = self
            .keys_in(&d.key, &d.range_end)
            .filter_map(|(k, recs)| kv(k, recs.last()))
            .collect();
        for prev in &doomed {
            self.delete_key(prev, ctx);
        }
        DeleteRangeResponse {
            deleted: doomed.len() as i64,
            prev_kvs: if d.prev_kv { doomed } else { Vec::new() },
        }
    }

    fn delete_key(&mut self, prev: &KeyValue, ctx: &mut Ctx) {
        if let Some(l) = self.leases.get_mut(&prev.lease) {
            l.keys.remove(&prev.key);
        }
        let rec = Rec {
            rev: ctx.next(),
            live: None,
        };
        let rev = rec.rev;
        self.retained.add(rec_bytes(&prev.key, rec));
        self.keys
            .get_mut(prev.key.as_slice())
            .expect("deleting a live key")
            .push(rec);
        if !self.events.on() {
            return;
        }
        ctx.events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: prev.key.clone(),
                mod_revision: rev.main,
                ..KeyValue::default()
            },
            prev_kv: Some(prev.clone()),
        });
    }

    /// Drops history before `revision`: reads and watches from earlier
    /// revisions fail with [`Error::Compacted`]; the current state is untouched.
    fn compact(&mut self, revision: i64) -> Result<(), Error> {
        if revision > self.revision {
            return Err(Error::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        if revision <= self.compacted {
            return Err(Error::Compacted {
                requested: revision,
                compacted: self.compacted,
            });
        }
        // Only keys with history to drop are touched (and copied, if a
        // snapshot shares them).
        let mut cut = Vec::new();
        for (k, recs) in &self.keys {
            // The records after `revision` stay, newest first.
            let mut it = recs.newest_first();
            let mut keep = 0;
            let Some(in_force) = it.find(|r| {
                let after = r.rev.main > revision;
                keep += usize::from(after);
                !after
            }) else {
                continue;
            };
            // Keep the record in force at `revision` (reads there need it), but
            // not a tombstone from before it: the key simply does not exist then.
            // A tombstone at exactly `revision` stays, so a watch may start there.
            let dropped_tombstone = in_force.live.is_none() && in_force.rev.main < revision;
            if dropped_tombstone {
                cut.push((k.clone(), keep));
            } else if it.next().is_some() {
                cut.push((k.clone(), keep + 1));
            }
        }
        for (k, keep) in cut {
            if keep == 0 {
                let recs = self.keys.remove(&k).expect("listed above");
                let freed: i64 = recs.newest_first().map(|r| rec_bytes(&k, r)).sum();
                self.retained.add(-freed);
                continue;
            }
            let recs = self.keys.get_mut(&k).expect("listed above");
            let freed = recs.keep_newest(keep, |r| rec_bytes(&k, r));
            self.retained.add(-freed);
        }
        self.compacted = revision;
        Ok(())
    }

    fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<i64, Error> {
        if ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge(ttl));
        }
        let id = if id == 0 {
            // Deterministic on every replica: the next unused id, from 1
            // again past the largest (a client may have chosen that one).
            let mut next = self.last_lease_id.max(0);
            loop {
                next = next.checked_add(1).unwrap_or(1);
                if !self.leases.contains_key(&next) {
                    break next;
                }
            }
        } else {
            id
        };
        if self.leases.contains_key(&id) {
            return Err(Error::LeaseExists(id));
        }
        self.last_lease_id = self.last_lease_id.max(id);
        self.leases.insert(
            id,
            Lease {
                ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(id)
    }

    /// Revokes a lease and deletes its keys in one revision.
    fn lease_revoke(&mut self, id: i64) -> Result<Vec<Event>, Error> {
        let lease = self.leases.remove(&id).ok_or(Error::LeaseNotFound(id))?;
        let mut ctx = Ctx {
            main: self.revision + 1,
            sub: 0,
            events: Vec::new(),
        };
        for key in &lease.keys {
            let prev = self.latest(key).expect("a lease's keys exist");
            debug_assert_eq!(prev.lease, id);
            self.delete_key(&prev, &mut ctx);
        }
        if ctx.sub > 0 {
            self.revision = ctx.main;
        }
        Ok(ctx.events)
    }

    /// Bytes of keys, values and per-revision bookkeeping across every
    /// revision the store keeps (what compaction and deletes can free): the
    /// counterpart of the space etcd reports in use in its database file.
    /// Kept up to date by every write; a store decoded from a snapshot
    /// walks its history the first time it is asked.
    pub fn retained_bytes(&self) -> u64 {
        let known = self.retained.0.load(Ordering::Relaxed);
        if known != UNCOUNTED {
            return known;
        }
        let n = self.count_retained_bytes();
        self.retained.0.store(n, Ordering::Relaxed);
        n
    }

    /// [`Store::retained_bytes`] by walking every revision.
    fn count_retained_bytes(&self) -> u64 {
        self.keys
            .iter()
            .map(|(k, recs)| recs.newest_first().map(|r| rec_bytes(k, r)).sum::<i64>() as u64)
            .sum()
    }

    /// A lease's TTL and keys, or `None` if it does not exist.
    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        self.leases.get(&id).map(|l| LeaseInfo {
            id,
            ttl: l.ttl,
            keys: l.keys.iter().cloned().collect(),
        })
    }

    /// Every lease id, ascending.
    pub fn leases(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// Every change to keys in `key..range_end` from `start_revision` on, in
    /// revision order: what a watch started at that revision first receives.
    /// A watch may start at the compaction revision itself, but a put there has
    /// lost its `prev_kv`.
    pub fn events_since(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
    ) -> Result<Vec<Event>, Error> {
        if start_revision > 0 && start_revision < self.compacted {
            return Err(Error::Compacted {
                requested: start_revision,
                compacted: self.compacted,
            });
        }
        let start = if start_revision > 0 {
            start_revision
        } else {
            self.revision + 1
        };
        let mut found: Vec<(Rev, Event)> = Vec::new();
        for (k, recs) in self.keys_in(key, range_end) {
            for (prev, rec) in recs.since(start) {
                let prev_kv = prev.and_then(|p| kv(k, p));
                let event = match kv(k, rec) {
                    Some(kv) => Event {
                        kind: EventKind::Put,
                        kv,
                        prev_kv,
                    },
                    None => Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: k.to_vec(),
                            mod_revision: rec.rev.main,
                            ..KeyValue::default()
                        },
                        prev_kv,
                    },
                };
                found.push((rec.rev, event));
            }
        }
        found.sort_by_key(|(rev, _)| *rev);
        Ok(found.into_iter().map(|(_, e)| e).collect())
    }

    /// True if `k` is in the range of a watch on `key..range_end`.
    pub fn watch_matches(key: &[u8], range_end: &[u8], k: &[u8]) -> bool {
        contains(key, range_end, k)
    }

    /// A digest of everything replicated (history, leases, revisions): equal on
    /// replicas that applied the same commands, as etcd's HashKV is.
    pub fn hash(&self) -> u64 {
        let mut h = Fnv::new();
        h.i64(self.revision);
        h.i64(self.compacted);
        h.i64(self.last_lease_id);
        for (k, recs) in &self.keys {
            h.bytes(k);
            for r in recs.oldest_first() {
                h.record(r);
            }
        }
        for (id, l) in &self.leases {
            h.i64(*id);
            h.i64(l.ttl);
            for k in &l.keys {
                h.bytes(k);
            }
        }
        for (id, m) in &self.members {
            h.i64(*id as i64);
            h.bytes(m.name.as_bytes());
            for u in m.peer_urls.iter().chain(&m.client_urls) {
                h.bytes(u.as_bytes());
            }
            h.i64(i64::from(m.removed));
        }
        for (id, a) in &self.alarms {
            h.i64(*id as i64);
            h.i64(*a as i64);
        }
        self.auth.digest(&mut |b| h.bytes(b));
        h.0
    }

    /// A digest of the key-value history up to `revision` (0: the current
    /// revision), from the compacted revision on: etcd's HashKV. Members that
    /// applied the same commands agree on it at every revision they both
    /// hold, whatever they applied since, which is what makes it a
    /// cross-member consistency check. Also returns the compacted revision
    /// (-1 if never compacted, as etcd).
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64), Error> {
        let at = if revision <= 0 {
            self.revision
        } else {
            revision
        };
        if at > self.revision {
            return Err(Error::FutureRevision {
                requested: at,
                current: self.revision,
            });
        }
        if at < self.compacted {
            return Err(Error::Compacted {
                requested: at,
                compacted: self.compacted,
            });
        }
        let mut h = Fnv::new();
        for (k, recs) in &self.keys {
            for r in recs.oldest_first().into_iter().filter(|r| r.rev.main <= at) {
                h.bytes(k);
                h.record(r);
            }
        }
        // etcd reports -1 for a store never compacted (checked on 3.4.23).
        let compacted = if self.compacted > 0 {
            self.compacted
        } else {
            -1
        };
        Ok(((h.0 ^ (h.0 >> 32)) as u32, compacted))
    }

    /// Panics if an invariant of the history is broken (tests and debug builds).
    pub fn assert_invariants(&self) {
        self.auth.assert_invariants();
        let mut attached: BTreeMap<i64, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for (k, recs) in &self.keys {
            let recs = recs.oldest_first();
            for w in recs.windows(2) {
                assert!(w[0].rev < w[1].rev, "key {k:?}: history out of order");
                assert!(
                    w[0].live.is_some() || w[1].live.is_some(),
                    "key {k:?}: two tombstones in a row"
                );
            }
            for r in &recs {
                assert!(
                    r.rev.main <= self.revision,
                    "key {k:?}: revision from the future"
                );
            }
            if let Some(l) = recs.last().and_then(|r| r.live.as_ref()) {
                if l.lease != 0 {
                    attached.entry(l.lease).or_default().insert(k.to_vec());
                }
            }
        }
        for (id, l) in &self.leases {
            assert_eq!(
                attached.remove(id).unwrap_or_default(),
                l.keys,
                "lease {id:x}: attached keys disagree"
            );
        }
        assert!(
            attached.is_empty(),
            "keys attached to leases that do not exist: {attached:?}"
        );
    }
}

/// FNV-1a, 64-bit: stable across platforms and releases, unlike std's hasher.
struct Fnv(u64);

impl Fnv {
    /// One revision of a key: its place in history and what it held.
    fn record(&mut self, r: Rec<'_>) {
        self.i64(r.rev.main);
        self.i64(r.rev.sub);
        match r.live {
            None => self.i64(-1),
            Some(l) => {
                self.bytes(l.value);
                self.i64(l.create_revision);
                self.i64(l.version);
                self.i64(l.lease);
            }
        }
    }

    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        self.i64(b.len() as i64);
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn i64(&mut self, v: i64) {
        for x in v.to_le_bytes() {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn validate_range(r: &RangeRequest) -> Result<(), Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

fn validate_put(p: &PutRequest) -> Result<(), Error> {
    if p.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

fn validate_delete(d: &DeleteRangeRequest) -> Result<(), Error> {
    if d.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

fn validate_txn(t: &TxnRequest, max_ops: usize) -> Result<(), Error> {
    for n in [t.compare.len(), t.success.len(), t.failure.len()] {
        if n > max_ops {
            return Err(Error::TooManyOps {
                ops: n,
                max: max_ops,
            });
        }
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            RequestOp::Range(r) => validate_range(r)?,
            RequestOp::Put(p) => validate_put(p)?,
            RequestOp::DeleteRange(d) => validate_delete(d)?,
            RequestOp::Txn(inner) => validate_txn(inner, max_ops)?,
        }
    }
    check_overlaps(&t.success)?;
    check_overlaps(&t.failure)?;
    Ok(())
}

/// Deleted ranges of one branch, as (key, range_end) pairs.
type Dels = Vec<(Vec<u8>, Vec<u8>)>;

/// One branch may not put a key twice, nor put a key it also deletes (the
/// outcome would depend on the order of operations). The two branches of a
/// nested transaction exclude each other, so they may put the same key.
fn check_overlaps(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Dels), Error> {
    let mut dels: Dels = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some((d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    let deleted = |dels: &Dels, k: &[u8]| dels.iter().any(|(key, end)| contains(key, end, k));
    let mut puts = BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(inner) = op else { continue };
        let (puts_then, dels_then) = check_overlaps(&inner.success)?;
        let (puts_else, dels_else) = check_overlaps(&inner.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(Error::DuplicateKey);
            }
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(Error::DuplicateKey);
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if !puts.insert(p.key.clone()) || deleted(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
    }
    Ok((puts, dels))
}

impl Command {
    /// Whether the command may make the store larger: refused while the
    /// NOSPACE alarm is raised (etcd takes deletes, compactions and lease
    /// revocations then, which is how an operator frees space).
    pub fn takes_space(&self) -> bool {
        fn puts(t: &TxnRequest) -> bool {
            t.success.iter().chain(&t.failure).any(|op| match op {
                RequestOp::Put(_) => true,
                RequestOp::Txn(inner) => puts(inner),
                _ => false,
            })
        }
        match self {
            Command::Put(_) | Command::LeaseGrant { .. } => true,
            Command::Txn(t) => puts(t),
            Command::As { cmd, .. } | Command::Tagged { cmd, .. } => cmd.takes_space(),
            _ => false,
        }
    }

    /// The request itself, without the [`Command::As`] that names its sender.
    pub fn inner(&self) -> &Command {
        match self {
            Command::As { cmd, .. } | Command::Tagged { cmd, .. } => cmd.inner(),
            other => other,
        }
    }

    /// The checks that need no store: a front end runs them before proposing,
    /// and [`Store::apply`] runs them again.
    pub fn validate(&self, max_txn_ops: usize) -> Result<(), Error> {
        match self {
            Command::Put(p) => validate_put(p),
            Command::DeleteRange(d) => validate_delete(d),
            Command::Txn(t) => validate_txn(t, max_txn_ops),
            Command::LeaseGrant { ttl, .. } if *ttl > MAX_LEASE_TTL => {
                Err(Error::LeaseTtlTooLarge(*ttl))
            }
            Command::As { cmd, .. } if matches!(**cmd, Command::As { .. }) => {
                Err(Error::Auth(AuthError::InvalidAuthMgmt))
            }
            Command::As { cmd, .. } => cmd.validate(max_txn_ops),
            Command::Tagged { cmd, .. } => cmd.validate(max_txn_ops),
            _ => Ok(()),
        }
    }
}
