//! Which of several agents reading one API server assigns addresses and
//! writes statuses and Events: the holder of a `coordination.k8s.io` Lease,
//! elected as Kubernetes' own controllers elect theirs. The others serve the
//! addresses the statuses show. Without one writer, hosts that saw Services
//! appear in another order would assign them differently and overwrite each
//! other's statuses.
//!
//! The holder renews the Lease every retry period. Another agent takes it
//! once it has seen the same record, unrenewed, for the Lease's duration by
//! its own clock (renew times written by another host's clock are never
//! compared with this one's). A holder that cannot renew within the renew
//! deadline (two thirds of the duration) stops writing, before anyone may
//! take over. A stopping holder gives the Lease up, so the next takes over at
//! once.
//!
//! An agent takes a Lease held under its own identity at once (it is its
//! own, from before a restart), so two agents given one identity would both
//! hold it. One that finds the Lease renewed under its own name since its
//! own last write knows it has such a twin: it stops leading, says so, and
//! treats the Lease as another's until it goes unrenewed.
//!
//! The agents that answer ARP and NDP on one segment elect the one that
//! answers the same way, with a Lease of their own (two answering would
//! have the segment's caches flap between them; hosts on other segments
//! elect theirs with another Lease). Answering goes by the Lease as last
//! seen, not by the renew deadline, so that an API server no agent can
//! reach leaves the segment with its answer: a holder cut off goes on
//! answering until it sees another agent's name in the Lease (if the others
//! can reach the API server, two answer meanwhile, both serving). An agent
//! the API server forbids the Lease answers on its own, as before elections.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{PostParams, Resource as _},
};
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, sleep},
};
use tracing::{error, info, warn};

/// How long a stopping agent tries to give the Lease up.
const GIVE_UP_WITHIN: Duration = Duration::from_secs(2);

/// The Lease of the agent that assigns addresses and writes statuses, in
/// the namespace the flags give.
pub const CONTROLLER_LEASE: &str = "lb-controller";

/// The default Lease of the agent that answers at layer 2.
pub const LAYER2_LEASE: &str = "lb-layer2";

/// What an election's holder does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Duty {
    /// Assigns addresses, writes statuses and Events ([`CONTROLLER_LEASE`]).
    Controller,
    /// Answers ARP and NDP for the VIPs on its segment.
    Layer2,
}

impl Duty {
    fn elected(self) -> &'static str {
        match self {
            Self::Controller => {
                "elected: this agent assigns addresses and writes statuses and Events"
            }
            Self::Layer2 => "elected: this agent answers ARP and NDP for the VIPs",
        }
    }

    /// What an agent that cannot take part does instead: alone when the
    /// API server `forbidden` it the Lease.
    fn unelected(self, forbidden: bool) -> &'static str {
        match (self, forbidden) {
            (Self::Controller, _) => "no new Service gets an address from it",
            (Self::Layer2, true) => "it answers ARP and NDP on its own, as before elections",
            (Self::Layer2, false) => "it answers ARP and NDP only if it last saw itself named",
        }
    }

    fn following(self) -> &'static str {
        match self {
            Self::Controller => "following: serving the addresses the Services' statuses show",
            Self::Layer2 => "following: another agent answers ARP and NDP for the VIPs",
        }
    }
}

/// The elections of the agents reading one API server: of the one that
/// writes, and of the one that answers at layer 2 on this agent's segment
/// (none for an agent that does not answer at layer 2 by its flags).
pub struct Elections {
    pub controller: ElectionConfig,
    pub layer2: Option<ElectionConfig>,
}

/// What the agent needs to take part in an election.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// The Lease's name and namespace.
    pub lease: String,
    pub namespace: String,
    pub duty: Duty,
    /// Who this agent is in the Lease's `holderIdentity` (and Events'
    /// `reportingInstance`): unique among the agents.
    pub identity: String,
    /// How long a Lease nobody renews stays held.
    pub lease_duration: Duration,
}

impl ElectionConfig {
    /// How often the Lease is renewed, or looked at by the others.
    fn retry_period(&self) -> Duration {
        self.lease_duration / 6
    }

    /// How long a holder that cannot renew keeps writing.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

/// Where this agent stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// No attempt has finished yet.
    Unknown,
    /// Holds the Lease until the renew deadline counted from the start of
    /// the last renewal that succeeded: past it, it writes nothing, even if
    /// the task that renews is stuck (or the process was stopped).
    Leading {
        until: Instant,
        /// The Lease's resourceVersion after that renewal: giving it up is
        /// for this agent only while nobody wrote it since.
        version: Option<String>,
    },
    Following,
}

impl Leadership {
    /// Whether this agent may write at `now`.
    fn holds_at(&self, now: Instant) -> bool {
        matches!(self, Self::Leading { until, .. } if now < *until)
    }
}

/// The election task and what it concluded last.
pub struct Elector {
    lease: String,
    standing: watch::Receiver<Leadership>,
    /// The Lease, as last seen, names this agent (and no twin renews it).
    named: watch::Receiver<bool>,
    task: JoinHandle<()>,
    api: Api<Lease>,
    identity: String,
}

impl Elector {
    /// Starts taking part (needs a Tokio runtime); `changed` is bumped
    /// whenever the standing changes.
    pub fn start(client: Client, config: ElectionConfig, changed: watch::Sender<()>) -> Self {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let (standing, receiver) = watch::channel(Leadership::Unknown);
        let (named, named_receiver) = watch::channel(false);
        let identity = config.identity.clone();
        let lease = config.lease.clone();
        let task = tokio::spawn(campaign(api.clone(), config, standing, named, changed));
        Self {
            lease,
            standing: receiver,
            named: named_receiver,
            task,
            api,
            identity,
        }
    }

    pub fn leading(&self) -> bool {
        self.standing.borrow().holds_at(Instant::now())
    }

    /// Whether the Lease, as this agent last saw it, names it, or the API
    /// server forbids it the Lease: whether it answers for the VIPs at layer
    /// 2 (see the module doc).
    pub fn named(&self) -> bool {
        *self.named.borrow()
    }

    /// Waits for the first attempt's outcome, so that a start does not
    /// mistake itself for a follower.
    pub async fn settled(&mut self) {
        // The task ends only with the runtime.
        let _ = self
            .standing
            .wait_for(|standing| *standing != Leadership::Unknown)
            .await;
    }

    /// Stops renewing and, if this agent holds the Lease, gives it up so that
    /// another takes over without waiting for it to expire (for at most a
    /// couple of seconds: a stopping agent must not hang on the API server).
    pub async fn resign(&mut self) {
        self.task.abort();
        // A renewal in flight would make the give-up a conflict.
        let _ = (&mut self.task).await;
        let version = match &*self.standing.borrow() {
            standing @ Leadership::Leading { version, .. } if standing.holds_at(Instant::now()) => {
                version.clone()
            }
            _ => return,
        };
        match tokio::time::timeout(GIVE_UP_WITHIN, self.give_up(version)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                warn!(%error, lease = %self.lease, "giving up the Lease; the others take over when it expires");
            }
            Err(_) => warn!(
                lease = %self.lease,
                "giving up the Lease: the API server did not answer; the others take over when \
                 it expires"
            ),
        }
    }

    /// Clears the holder of the Lease if it is as this agent last wrote it
    /// (`version`): written since, it may be a twin's (see the module doc).
    async fn give_up(&self, version: Option<String>) -> kube::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.lease).await? else {
            return Ok(());
        };
        if lease.meta().resource_version != version {
            return Ok(());
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.lease, &PostParams::default(), &lease)
            .await?;
        info!(lease = %self.lease, "gave up the Lease");
        Ok(())
    }
}

/// What tells one write of the Lease from the next: its holder (none if
/// empty), renew time and resourceVersion.
#[derive(PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    version: Option<String>,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|spec| spec.holder_identity.clone())
                .filter(|holder| !holder.is_empty()),
            renew_time: spec.and_then(|spec| spec.renew_time.clone()),
            version: lease.meta().resource_version.clone(),
        }
    }
}

/// The Lease's record as last seen, and when this agent first saw it so.
struct Observed {
    record: Record,
    since: Instant,
    /// The record is this agent's own write.
    written_here: bool,
}

/// What this agent knows of the Lease between attempts.
#[derive(Default)]
struct View {
    observed: Option<Observed>,
    /// Another agent renews the Lease under this agent's identity: from
    /// when it overwrote this agent's write until this agent takes the
    /// Lease again, once it has gone unrenewed.
    twin: bool,
    /// Since when attempts have failed: time in which the Lease could not be
    /// read is not time it went unrenewed, and is left out of `since`.
    blind_from: Option<Instant>,
}

/// Tries to take or renew the Lease every retry period, for ever.
async fn campaign(
    api: Api<Lease>,
    config: ElectionConfig,
    standing: watch::Sender<Leadership>,
    named: watch::Sender<bool>,
    changed: watch::Sender<()>,
) {
    let mut view = View::default();
    // The renew deadline, with the version written then.
    let mut until: Option<(Instant, Option<String>)> = None;
    // Logged when it first appears, not at every retry while it lasts (a
    // missing permission lasts until someone grants it).
    let mut failing: Option<String> = None;
    loop {
        let started = Instant::now();
        // Bounded: a request hanging on a dead connection must not keep this
        // agent from noticing it no longer holds the Lease.
        let outcome =
            match tokio::time::timeout(config.retry_period(), attempt(&api, &config, &mut view))
                .await
            {
                Ok(result) => result.map_err(|error| (refused(&error), error.to_string())),
                Err(_) => Err((
                    false,
                    format!("no answer within {:?}", config.retry_period()),
                )),
            };
        // The API server says no, and no Lease was seen (none was read, or
        // there is none and it cannot be made): nobody holds one, nobody
        // can, so this agent answers at layer 2 on its own. A refusal once
        // a Lease was seen is the API server's passing trouble.
        let mut forbidden = false;
        match outcome {
            Ok(held) => {
                if failing.take().is_some() {
                    info!(lease = %config.lease, "the Lease can be read and written again");
                }
                until = held.then(|| {
                    let observed = view.observed.as_ref();
                    let version = observed.and_then(|seen| seen.record.version.clone());
                    (started + config.renew_deadline(), version)
                });
            }
            Err((forbids, message)) => {
                forbidden = forbids && view.observed.is_none();
                // A write that may have landed is no proof of a twin.
                if let Some(seen) = view.observed.as_mut() {
                    seen.written_here = false;
                }
                view.blind_from.get_or_insert_with(Instant::now);
                if failing.as_ref() != Some(&message) {
                    error!(
                        error = %message,
                        namespace = %config.namespace,
                        lease = %config.lease,
                        "leader election: the Lease cannot be read or written, so this agent \
                         cannot be elected ({}; it needs get, create and update on leases \
                         there: examples/kubernetes/rbac.yaml)",
                        config.duty.unelected(forbidden)
                    );
                    failing = Some(message);
                }
            }
        }
        let now = match until.clone().filter(|(until, _)| Instant::now() < *until) {
            Some((until, version)) => Leadership::Leading { until, version },
            None => Leadership::Following,
        };
        // Before the standing, which the agent's first round waits for.
        let holder = view
            .observed
            .as_ref()
            .and_then(|seen| seen.record.holder.as_deref());
        let is_named = forbidden || (!view.twin && holder == Some(config.identity.as_str()));
        if named.send_replace(is_named) != is_named {
            changed.send_replace(());
        }
        let is_leading = matches!(now, Leadership::Leading { .. });
        let before = standing.send_replace(now);
        let was_leading = matches!(before, Leadership::Leading { .. });
        if before == Leadership::Unknown || was_leading != is_leading {
            if is_leading {
                info!(identity = %config.identity, lease = %config.lease, "{}", config.duty.elected());
            } else {
                info!(
                    holder = holder.unwrap_or("nobody"),
                    lease = %config.lease,
                    "{}",
                    config.duty.following()
                );
            }
            changed.send_replace(());
        }
        sleep(config.retry_period()).await;
    }
}

/// One look at the Lease: takes it if it is free or expired, renews it if it
/// is this agent's. True if this agent holds it now.
async fn attempt(api: &Api<Lease>, config: &ElectionConfig, view: &mut View) -> kube::Result<bool> {
    let now = MicroTime(Timestamp::now());
    let found = api.get_opt(&config.lease).await?;
    let blind = view.blind_from.take().map(|from| from.elapsed());
    let Some(mut lease) = found else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.lease.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(held_by(LeaseSpec::default(), config, now)),
        };
        // What was seen of a Lease since deleted says nothing of the new one.
        view.observed = None;
        return written(api.create(&PostParams::default(), &lease).await, view);
    };
    let record = Record::of(&lease);
    let mut spec = lease.spec.take().unwrap_or_default();
    let mine = record.holder.as_deref() == Some(&config.identity);
    let (since, written_here) = match view.observed.take() {
        Some(seen) if seen.record == record => {
            let since = seen.since + blind.unwrap_or_default();
            (since.min(Instant::now()), seen.written_here)
        }
        // Renewed under this agent's name since it wrote: not an edit of
        // the Lease's labels or annotations, which renews nothing.
        Some(seen)
            if seen.written_here
                && mine
                && !view.twin
                && seen.record.renew_time != record.renew_time =>
        {
            error!(
                identity = %config.identity,
                lease = %config.lease,
                "another agent renews the Lease under this agent's identity: \
                 following it; give each agent its own --identity"
            );
            view.twin = true;
            (Instant::now(), false)
        }
        _ => (Instant::now(), false),
    };
    let duration = spec
        .lease_duration_seconds
        .and_then(|seconds| u64::try_from(seconds).ok())
        .map_or(config.lease_duration, Duration::from_secs);
    let free = may_take(
        record.holder.as_deref(),
        &config.identity,
        view.twin,
        since.elapsed(),
        duration,
    );
    view.observed = Some(Observed {
        record,
        since,
        written_here,
    });
    if !free {
        return Ok(false);
    }
    if view.twin {
        // Taken from the twin: a new holder, for the acquire time and the
        // count of transitions.
        spec.holder_identity = None;
    }
    lease.spec = Some(held_by(spec, config, now));
    let replaced = api
        .replace(&config.lease, &PostParams::default(), &lease)
        .await;
    written(replaced, view)
}

/// Whether this agent (`me`) may write itself into a Lease held by
/// `holder`, whose record it has seen unchanged for `unchanged_for`; with a
/// `twin`, a Lease held as `me` is the twin's.
fn may_take(
    holder: Option<&str>,
    me: &str,
    twin: bool,
    unchanged_for: Duration,
    duration: Duration,
) -> bool {
    match holder {
        None => true,
        Some(holder) if holder == me && !twin => true,
        Some(_) => unchanged_for >= duration,
    }
}

/// `spec` held by this agent from `now`: a new holder's acquire time and a
/// transition more.
fn held_by(mut spec: LeaseSpec, config: &ElectionConfig, now: MicroTime) -> LeaseSpec {
    if spec.holder_identity.as_deref() != Some(&config.identity) {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.map_or(0, |n| n + 1));
    }
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds =
        Some(i32::try_from(config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX));
    spec.renew_time = Some(now);
    spec
}

/// Whether `error` is the API server's refusal (RBAC), not a failure to
/// reach it.
/// Whether the API server refuses the Lease for good: forbidden, or (for a
/// create) its namespace does not exist.
fn refused(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 403 || status.code == 404)
}

/// The outcome of a write of the Lease: another agent's write in between
/// (409) means this one does not hold it.
fn written(result: kube::Result<Lease>, view: &mut View) -> kube::Result<bool> {
    match result {
        Ok(lease) => {
            view.observed = Some(Observed {
                record: Record::of(&lease),
                since: Instant::now(),
                written_here: true,
            });
            view.twin = false;
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_taken_only_when_free_own_or_unrenewed_for_its_duration() {
        let duration = Duration::from_secs(15);
        let cases = [
            (None, false, Duration::ZERO, true),
            (Some("me"), false, Duration::ZERO, true),
            (Some("other"), false, Duration::ZERO, false),
            (Some("other"), false, Duration::from_secs(14), false),
            (Some("other"), false, Duration::from_secs(15), true),
            // Held as "me" by a twin: as another's.
            (Some("me"), true, Duration::from_secs(14), false),
            (Some("me"), true, Duration::from_secs(15), true),
            (None, true, Duration::ZERO, true),
        ];
        for (holder, twin, unchanged_for, expected) in cases {
            assert_eq!(
                may_take(holder, "me", twin, unchanged_for, duration),
                expected,
                "{holder:?} (twin: {twin}) unchanged for {unchanged_for:?}"
            );
        }
    }

    #[test]
    fn a_holder_writes_only_until_its_renew_deadline() {
        let now = Instant::now();
        let until = now + Duration::from_secs(10);
        let leading = Leadership::Leading {
            until,
            version: None,
        };
        assert!(leading.holds_at(now));
        assert!(!leading.holds_at(until));
        assert!(!leading.holds_at(until + Duration::from_secs(1)));
        assert!(!Leadership::Following.holds_at(now));
        assert!(!Leadership::Unknown.holds_at(now));
    }

    #[test]
    fn a_new_holder_counts_a_transition_and_a_renewal_does_not() {
        let config = ElectionConfig {
            lease: CONTROLLER_LEASE.into(),
            duty: Duty::Controller,
            namespace: "lb-system".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
        };
        let first = held_by(LeaseSpec::default(), &config, MicroTime(Timestamp::now()));
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.holder_identity.as_deref(), Some("me"));
        assert_eq!(first.lease_duration_seconds, Some(15));
        let renewed = held_by(first.clone(), &config, MicroTime(Timestamp::now()));
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(renewed.acquire_time, first.acquire_time);
        let other = ElectionConfig {
            identity: "other".into(),
            ..config
        };
        let taken = held_by(renewed, &other, MicroTime(Timestamp::now()));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.holder_identity.as_deref(), Some("other"));
    }
}
