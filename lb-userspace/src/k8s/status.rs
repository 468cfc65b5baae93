//! What lb tells the cluster: each Service's VIPs in `status.loadBalancer`
//! (through the status subresource, only when it differs) and Events on the
//! Service when it gets an address or cannot be served (handed to the
//! `events` task once the round's statuses are written).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    core::Request,
    runtime::reflector::{ObjectRef, Store},
};
use serde_json::json;
use tracing::{info, warn};

use super::{
    events::{EventRecorder, Kind},
    source::{Layer2Answers, VipInterfaces},
    translate::{Problem, Translation},
};

/// Status writes in flight at once: enough to assign 10,000 VIPs in about a
/// second, still a bound on what lb asks of the API server.
const CONCURRENT_WRITES: usize = 64;

/// How long one round of status writes may take. The agent's loop waits for
/// it, and with it health verdicts and signals: an API server that stopped
/// answering (a half-open connection waits for TCP to give up, minutes)
/// must not hold them. What is not written by then is written at a later
/// round.
const WRITE_ROUND_LIMIT: Duration = Duration::from_secs(10);

pub(super) struct StatusWriter {
    client: Client,
    events: EventRecorder,
    /// Problems already reported, so that each gets one Event while it lasts
    /// rather than one per reconciliation.
    reported: BTreeSet<(String, Problem, String)>,
    /// Services that gave up addresses their status still shows, until it
    /// no longer does: a failed write is tried again at the next round.
    to_clear: BTreeMap<String, BTreeSet<IpAddr>>,
    /// What this host answers ARP and NDP for, as last reported: a Service
    /// gets an Event when this host starts answering for it or for more of
    /// it, again if it stops and starts again (another host took the
    /// segment's Lease meanwhile).
    answered: Layer2Answers,
    /// This host's name in the Events.
    identity: String,
}

impl StatusWriter {
    /// A writer with its Event recorder (needs a Tokio runtime), whose
    /// Events name `identity` as the instance reporting them.
    pub(super) fn new(client: Client, identity: &str) -> Self {
        Self {
            events: EventRecorder::start(&client, identity),
            client,
            reported: BTreeSet::new(),
            to_clear: BTreeMap::new(),
            answered: Layer2Answers::new(),
            identity: identity.to_owned(),
        }
    }

    /// Records the Events still queued, for at most `grace`.
    pub(super) async fn flush(&mut self, grace: Duration) {
        self.events.flush(grace).await;
    }

    /// Brings every Service's status in line with `translation` and reports new
    /// problems, those of `unprogrammed` (`namespace/name`, why) too; false
    /// if some write failed.
    pub(super) async fn write(
        &mut self,
        services: &Store<Service>,
        translation: &Translation,
        unprogrammed: &[(String, String)],
    ) -> bool {
        let mut changes = Vec::new();
        for (owner, vips) in &translation.vips {
            if let Some(service) = lookup(services, owner)
                && ingress_ips(&service) != *vips
            {
                changes.push((service, vips.as_slice()));
            }
        }
        // A Service lb no longer serves (type or class changed) must not keep
        // advertising the addresses it gave up.
        self.remember_released(translation);
        self.to_clear.retain(|owner, vips| {
            let showing = lookup(services, owner).is_some_and(|service| {
                ingress_ips(&service)
                    .iter()
                    .any(|shown| vips.contains(shown))
            });
            showing && !translation.vips.contains_key(owner)
        });
        for owner in self.to_clear.keys() {
            changes.extend(lookup(services, owner).map(|service| (service, &[][..])));
        }
        let this = &*self;
        let deadline = tokio::time::Instant::now() + WRITE_ROUND_LIMIT;
        let written: Vec<(Arc<Service>, &[IpAddr], bool)> = stream::iter(changes)
            .map(|(service, vips)| async move {
                let written = this.set_ingress(&service, vips, deadline).await;
                (service, vips, written)
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        // The Events once every status is written: they only tell of the
        // addresses, which are what the Services' users wait for.
        for (service, vips, _) in written.iter().filter(|(_, _, written)| *written) {
            if !vips.is_empty() {
                self.announce_assigned(service, vips);
            }
        }
        self.report_problems(services, Some(translation), unprogrammed);
        written.iter().all(|(_, _, written)| *written)
    }

    /// Notes the addresses Services gave up in `translation`, whose statuses
    /// are cleared at the next write that finds them still shown: also
    /// while another agent writes, which may stop before it clears them.
    pub(super) fn remember_released(&mut self, translation: &Translation) {
        for (owner, vip) in &translation.released {
            self.to_clear.entry(owner.clone()).or_default().insert(*vip);
        }
    }

    /// Sets the Service's ingress to `vips`, or clears it when there are
    /// none, unless `deadline` comes first.
    async fn set_ingress(
        &self,
        service: &Service,
        vips: &[IpAddr],
        deadline: tokio::time::Instant,
    ) -> bool {
        let (Some(namespace), Some(name)) = (
            service.metadata.namespace.as_deref(),
            service.metadata.name.as_deref(),
        ) else {
            return true;
        };
        let ingress: Vec<_> = vips
            .iter()
            // `VIP`: kube-proxy takes packets addressed to the VIP itself
            // (direct server return needs that; it is also the default).
            .map(|vip| json!({ "ip": vip.to_string(), "ipMode": "VIP" }))
            .collect();
        let ingress = (!ingress.is_empty()).then_some(ingress);
        let patch = json!({ "status": { "loadBalancer": { "ingress": ingress } } });
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        // `Api::patch_status`, but the Service the server answers with is not
        // parsed: the watch brings it anyway, and parsing 10,000 of them was
        // much of a start's status round.
        let written = match Request::new(api.resource_url()).patch_subresource(
            "status",
            name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ) {
            Ok(request) => {
                let sent = tokio::time::timeout_at(deadline, self.client.request_text(request));
                match sent.await {
                    Ok(answer) => answer.map(drop).map_err(|e| e.to_string()),
                    Err(_) => Err(format!(
                        "no answer within the round's {WRITE_ROUND_LIMIT:?} (tried again later)"
                    )),
                }
            }
            Err(e) => Err(kube::Error::BuildRequest(e).to_string()),
        };
        if let Err(error) = written {
            warn!(service = %format!("{namespace}/{name}"), %error, "status not written");
            return false;
        }
        if vips.is_empty() {
            info!(service = %format!("{namespace}/{name}"), "VIPs released");
        }
        true
    }

    /// Logs, and records as an Event, that the Service's status now lists
    /// `vips`.
    fn announce_assigned(&self, service: &Service, vips: &[IpAddr]) {
        let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let listed: Vec<String> = vips.iter().map(ToString::to_string).collect();
        let listed = listed.join(", ");
        info!(service = %format!("{namespace}/{name}"), vips = %listed, "VIPs assigned");
        let note = match vips.len() {
            1 => format!("Assigned IP {listed}"),
            _ => format!("Assigned IPs {listed}"),
        };
        self.events.publish(service, Kind::IP_ALLOCATED, note);
    }

    /// Records an Event on each Service whose VIPs this host now answers ARP
    /// and NDP for (or more of them, or on more interfaces), as MetalLB's
    /// speaker does (`nodeAssigned`), naming the host and its interfaces:
    /// which host takes a segment's traffic, and when that moved, shows on
    /// the Service. One Event for all of a Service's VIPs, each recorded as
    /// an Event of its own (`Repeats::Recorded`), so that its note says
    /// what this host answers for since then.
    pub(super) fn report_layer2(&mut self, services: &Store<Service>, answers: &Layer2Answers) {
        self.answered.retain(|owner, _| answers.contains_key(owner));
        for (owner, vips) in answers {
            let said = self.answered.get(owner);
            if !answers_more(vips, said) {
                // Less: kept, so that more again is told. (The same, every
                // round for every Service, is left as it is.)
                if said != Some(vips) {
                    self.answered.insert(owner.clone(), vips.clone());
                }
                continue;
            }
            // Not in the store yet: told at a later round.
            let Some(service) = lookup(services, owner) else {
                continue;
            };
            let listed: Vec<String> = vips
                .iter()
                .map(|(vip, interfaces)| format!("{vip} ({})", interfaces.join(", ")))
                .collect();
            let note = format!(
                "announcing {} from {} at layer 2",
                listed.join(", "),
                self.identity
            );
            self.events.publish(&service, Kind::NODE_ASSIGNED, note);
            self.answered.insert(owner.clone(), vips.clone());
        }
    }

    /// Records a Warning Event for each problem not reported yet: the
    /// translation's skips (only the elected agent has them to report) and
    /// the Service ports this agent's own data path could not serve (every
    /// agent reports those, as its Events' reporting instance).
    pub(super) fn report_problems(
        &mut self,
        services: &Store<Service>,
        translation: Option<&Translation>,
        unprogrammed: &[(String, String)],
    ) {
        let skipped = translation
            .map(|translation| translation.skipped.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|skipped| skipped.kind == "Service")
            .map(|skipped| {
                (
                    skipped.name.clone(),
                    skipped.problem,
                    skipped.reason.clone(),
                )
            });
        let unprogrammed = unprogrammed
            .iter()
            .map(|(owner, reason)| (owner.clone(), Problem::NotProgrammed, reason.clone()));
        let current: BTreeSet<(String, Problem, String)> = skipped.chain(unprogrammed).collect();
        self.reported.retain(|problem| current.contains(problem));
        for problem in current {
            if self.reported.contains(&problem) {
                continue;
            }
            let (owner, kind, reason) = &problem;
            if let Some(service) = lookup(services, owner) {
                let kind = Kind::problem(kind.event_reason());
                self.events.publish(&service, kind, reason.clone());
            }
            self.reported.insert(problem);
        }
    }
}

/// Whether `now` answers for a VIP, or on an interface, that `said` did not.
fn answers_more(now: &VipInterfaces, said: Option<&VipInterfaces>) -> bool {
    now.iter().any(|(vip, interfaces)| {
        let said = said.and_then(|said| said.get(vip));
        interfaces
            .iter()
            .any(|name| !said.is_some_and(|said| said.contains(name)))
    })
}

/// The Service `namespace/name` in the store.
fn lookup(services: &Store<Service>, owner: &str) -> Option<Arc<Service>> {
    let (namespace, name) = owner.split_once('/')?;
    services.get(&ObjectRef::new(name).within(namespace))
}

/// The IP addresses the Service's `status.loadBalancer.ingress` lists, in
/// order.
pub fn ingress_ips(service: &Service) -> Vec<IpAddr> {
    let status = service.status.as_ref();
    let ingress = status
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    ingress
        .iter()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(entries: &[(&str, &[&str])]) -> VipInterfaces {
        entries
            .iter()
            .map(|(vip, interfaces)| {
                let interfaces = interfaces.iter().map(ToString::to_string).collect();
                (vip.parse().expect("an address"), interfaces)
            })
            .collect()
    }

    /// A Service's Event is told again when this host answers for more of
    /// it (another VIP, another interface), not when it answers for the
    /// same or less.
    #[test]
    fn answering_for_more_is_told_and_for_the_same_or_less_is_not() {
        let both = answers(&[("192.0.2.1", &["eth0"]), ("2001:db8::1", &["eth0"])]);
        let one = answers(&[("192.0.2.1", &["eth0"])]);
        let wider = answers(&[("192.0.2.1", &["eth0", "eth1"])]);
        assert!(answers_more(&one, None), "a first answer");
        assert!(!answers_more(&one, Some(&one)), "the same");
        assert!(!answers_more(&one, Some(&both)), "less");
        assert!(answers_more(&both, Some(&one)), "another VIP");
        assert!(answers_more(&wider, Some(&one)), "another interface");
        assert!(!answers_more(&BTreeMap::new(), None), "nothing");
    }

    /// An API server that takes the writes and never answers (its host
    /// gone, the connection half open) holds a round of status writes for
    /// [`WRITE_ROUND_LIMIT`], not until TCP gives up: the agent's loop,
    /// which waits for the round, goes on to health verdicts and signals.
    /// (Paused time: the runtime skips ahead to each timer while it waits.)
    #[tokio::test(start_paused = true)]
    async fn a_silent_api_server_holds_a_round_of_writes_for_its_limit_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                held.push(connection);
            }
        });
        let config = kube::Config::new(url.parse().unwrap());
        let mut writer = StatusWriter::new(Client::try_from(config).unwrap(), "test");
        let (services, mut store) = kube::runtime::reflector::store();
        let mut service = Service::default();
        service.metadata.namespace = Some("ns".to_owned());
        service.metadata.name = Some("web".to_owned());
        store.apply_watcher_event(&kube::runtime::watcher::Event::Apply(service));
        let mut translation = Translation::default();
        let vip: IpAddr = "198.51.100.1".parse().unwrap();
        translation.vips.insert("ns/web".to_owned(), vec![vip]);
        let started = tokio::time::Instant::now();
        let round = writer.write(&services, &translation, &[]);
        let written = tokio::time::timeout(Duration::from_secs(600), round).await;
        assert_eq!(written, Ok(false), "the round ended, unwritten");
        assert!(started.elapsed() <= WRITE_ROUND_LIMIT + Duration::from_secs(1));
        silent.abort();
    }
}
