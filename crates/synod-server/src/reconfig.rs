//! etcd's `--strict-reconfig-check` (on by default): membership changes
//! that would leave the cluster without a working quorum are refused
//! before they are proposed. The rules and their order are etcd 3.4's:
//! a member counts as started once it has published its name, and as
//! connected once this member's link to it has stood for
//! [`HEALTH_INTERVAL`].
//!
//! Pure functions over the membership and a connectivity predicate, so the
//! counting is tested without processes.

use std::time::Duration;

use synod_etcd::{MemberError, MemberInfo};

/// How long a peer must have been reachable to count as connected.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

fn started(m: &MemberInfo) -> bool {
    !m.name.is_empty()
}

fn voters(members: &[MemberInfo]) -> impl Iterator<Item = &MemberInfo> {
    members.iter().filter(|m| !m.is_learner)
}

fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// MemberAdd. A voter may be added only if the started voters would still
/// make a quorum of the larger cluster (adding a second member to a
/// one-member cluster is allowed: that is how a cluster is restored from a
/// backup); any add needs every voter connected.
pub fn may_add(
    members: &[MemberInfo],
    me: u64,
    learner: bool,
    connected: impl Fn(u64) -> bool,
) -> Result<(), MemberError> {
    if !learner {
        let n = voters(members).count() + 1;
        let up = voters(members).filter(|m| started(m)).count();
        if !(up == 1 && n == 2) && up < quorum(n) {
            return Err(MemberError::NotEnoughStarted);
        }
    }
    if !voters(members).all(|m| m.id == me || connected(m.id)) {
        return Err(MemberError::Unhealthy);
    }
    Ok(())
}

/// MemberRemove of `id`. Removing a learner is always allowed. Otherwise
/// the started voters that remain must make a quorum of what remains, and,
/// unless the member removed is down already, the voters connected to this
/// member, less one, must still make a quorum of the current cluster.
pub fn may_remove(
    members: &[MemberInfo],
    me: u64,
    id: u64,
    connected: impl Fn(u64) -> bool,
    link_up: impl Fn(u64) -> bool,
) -> Result<(), MemberError> {
    if members.iter().any(|m| m.id == id && m.is_learner) {
        return Ok(());
    }
    let rest: Vec<_> = voters(members).filter(|m| m.id != id).collect();
    let n = rest.len();
    let up = rest.iter().filter(|m| started(m)).count();
    if up < quorum(n) {
        return Err(MemberError::NotEnoughStarted);
    }
    if id != me && !link_up(id) {
        return Ok(());
    }
    let all = voters(members).count();
    let active = voters(members)
        .filter(|m| m.id == me || connected(m.id))
        .count();
    // etcd: (active - 1) < 1 + (len - 1) / 2
    if active < 1 + 1 + all.saturating_sub(1) / 2 {
        return Err(MemberError::Unhealthy);
    }
    Ok(())
}

/// MemberPromote: the voters after the promotion, counting the learner as
/// started, must include a quorum of started ones.
pub fn may_promote(members: &[MemberInfo]) -> Result<(), MemberError> {
    let n = voters(members).count() + 1;
    let up = voters(members).filter(|m| started(m)).count() + 1;
    if up < quorum(n) {
        return Err(MemberError::NotEnoughStarted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, name: &str, learner: bool) -> MemberInfo {
        MemberInfo {
            id,
            name: name.into(),
            peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
            client_urls: Vec::new(),
            is_learner: learner,
        }
    }

    fn three() -> Vec<MemberInfo> {
        vec![m(1, "a", false), m(2, "b", false), m(3, "c", false)]
    }

    #[test]
    fn add_needs_every_voter_connected() {
        let all = |_| true;
        assert_eq!(may_add(&three(), 1, false, all), Ok(()));
        assert_eq!(
            may_add(&three(), 1, false, |id| id != 3),
            Err(MemberError::Unhealthy)
        );
        // Learners too, and a learner that is down does not matter.
        assert_eq!(
            may_add(&three(), 1, true, |id| id != 2),
            Err(MemberError::Unhealthy)
        );
        let mut with_learner = three();
        with_learner.push(m(4, "d", true));
        assert_eq!(may_add(&with_learner, 1, true, |id| id != 4), Ok(()));
    }

    #[test]
    fn add_counts_started_voters_with_the_newcomer() {
        let all = |_| true;
        // One member: a second one may be added (restoring from a backup).
        assert_eq!(may_add(&[m(1, "a", false)], 1, false, all), Ok(()));
        // Two voters, one never started: a third would make 1 of 3.
        let two = vec![m(1, "a", false), m(2, "", false)];
        assert_eq!(
            may_add(&two, 1, false, all),
            Err(MemberError::NotEnoughStarted)
        );
        // A learner is not counted against the quorum.
        assert_eq!(may_add(&two, 1, true, all), Ok(()));
        // Three started voters, a fourth: 3 of 4 is a quorum.
        assert_eq!(may_add(&three(), 1, false, all), Ok(()));
    }

    #[test]
    fn remove_keeps_a_connected_quorum() {
        let all = |_| true;
        assert_eq!(may_remove(&three(), 1, 2, all, all), Ok(()));
        // Member 3 is down: removing 2 would leave 1 and 3, with 3 down.
        let not3 = |id| id != 3;
        assert_eq!(
            may_remove(&three(), 1, 2, not3, not3),
            Err(MemberError::Unhealthy)
        );
        // Removing the member that is down is fine.
        assert_eq!(may_remove(&three(), 1, 3, not3, not3), Ok(()));
        // Removing ourselves counts us among the active.
        assert_eq!(
            may_remove(&three(), 1, 1, not3, not3),
            Err(MemberError::Unhealthy)
        );
        // Up, but not for the whole health interval: not connected.
        assert_eq!(
            may_remove(&three(), 1, 2, not3, all),
            Err(MemberError::Unhealthy)
        );
        // A learner can always go.
        let mut with_learner = three();
        with_learner.push(m(4, "d", true));
        assert_eq!(may_remove(&with_learner, 1, 4, |_| false, |_| true), Ok(()));
    }

    #[test]
    fn remove_counts_started_voters_that_remain() {
        let all = |_| true;
        let members = vec![m(1, "a", false), m(2, "", false), m(3, "", false)];
        assert_eq!(
            may_remove(&members, 1, 2, all, all),
            Err(MemberError::NotEnoughStarted)
        );
        // Removing the one that never started leaves 2 of 2.
        let members = vec![m(1, "a", false), m(2, "b", false), m(3, "", false)];
        assert_eq!(may_remove(&members, 1, 3, all, all), Ok(()));
    }

    #[test]
    fn promote_counts_the_learner_as_started() {
        let members = vec![m(1, "a", false), m(2, "", true)];
        assert_eq!(may_promote(&members), Ok(()));
        let members = vec![
            m(1, "a", false),
            m(2, "", false),
            m(3, "", false),
            m(4, "", true),
        ];
        assert_eq!(may_promote(&members), Err(MemberError::NotEnoughStarted));
    }
}
