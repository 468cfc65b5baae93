//! What lb tells the cluster: each Service's VIP in `status.loadBalancer`
//! (through the status subresource, only when it differs) and Events on the
//! Service when it gets an address or cannot be served.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

use futures::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client, Resource as _,
    api::{Patch, PatchParams},
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
};
use serde_json::json;
use tracing::{info, warn};

use super::translate::{Problem, Translation};

/// Status writes in flight at once: enough to assign thousands of VIPs in
/// seconds without flooding the API server.
const CONCURRENT_WRITES: usize = 16;

/// The name Events give as their reporting controller.
const CONTROLLER: &str = "lb";

pub(super) struct StatusWriter {
    client: Client,
    recorder: Recorder,
    /// Problems already reported, so that each gets one Event while it lasts
    /// rather than one per reconciliation.
    reported: BTreeSet<(String, Problem, String)>,
    /// Services that gave up an address their status still shows, until it
    /// no longer does: a failed write is tried again at the next round.
    to_clear: BTreeMap<String, Ipv4Addr>,
}

impl StatusWriter {
    pub(super) fn new(client: Client) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.to_owned(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            reported: BTreeSet::new(),
            to_clear: BTreeMap::new(),
        }
    }

    /// Brings every Service's status in line with `translation` and reports new
    /// problems; false if some write failed.
    pub(super) async fn write(
        &mut self,
        services: &Store<Service>,
        translation: &Translation,
    ) -> bool {
        let mut changes = Vec::new();
        for (owner, vip) in &translation.vips {
            if let Some(service) = lookup(services, owner)
                && ingress_ips(&service) != [vip.to_string()]
            {
                changes.push((service, Some(*vip)));
            }
        }
        // A Service lb no longer serves (type or class changed) must not keep
        // advertising the address it gave up.
        self.to_clear.extend(translation.released.iter().cloned());
        self.to_clear.retain(|owner, vip| {
            let showing = lookup(services, owner)
                .is_some_and(|service| ingress_ips(&service).contains(&vip.to_string()));
            showing && !translation.vips.contains_key(owner)
        });
        for owner in self.to_clear.keys() {
            changes.extend(lookup(services, owner).map(|service| (service, None)));
        }
        let written: Vec<bool> = stream::iter(changes)
            .map(|(service, vip)| self.set_ingress(service, vip))
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        self.report_problems(services, translation).await;
        written.into_iter().all(|ok| ok)
    }

    async fn set_ingress(&self, service: Arc<Service>, vip: Option<Ipv4Addr>) -> bool {
        let (Some(namespace), Some(name)) = (
            service.metadata.namespace.as_deref(),
            service.metadata.name.as_deref(),
        ) else {
            return true;
        };
        let ingress = vip.map(|vip| json!([{ "ip": vip.to_string() }]));
        let patch = json!({ "status": { "loadBalancer": { "ingress": ingress } } });
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        if let Err(error) = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            warn!(service = %format!("{namespace}/{name}"), %error, "status not written");
            return false;
        }
        match vip {
            Some(vip) => {
                info!(service = %format!("{namespace}/{name}"), %vip, "VIP assigned");
                let note = format!("Assigned IP {vip}");
                self.publish(&service, EventType::Normal, "IPAllocated", note)
                    .await;
            }
            None => info!(service = %format!("{namespace}/{name}"), "VIP released"),
        }
        true
    }

    /// A Warning Event for every problem not reported yet.
    async fn report_problems(&mut self, services: &Store<Service>, translation: &Translation) {
        let current: BTreeSet<(String, Problem, String)> = translation
            .skipped
            .iter()
            .filter(|skipped| skipped.kind == "Service")
            .map(|skipped| {
                (
                    skipped.name.clone(),
                    skipped.problem,
                    skipped.reason.clone(),
                )
            })
            .collect();
        self.reported.retain(|problem| current.contains(problem));
        for problem in current {
            if self.reported.contains(&problem) {
                continue;
            }
            let (owner, kind, reason) = &problem;
            if let Some(service) = lookup(services, owner) {
                self.publish(
                    &service,
                    EventType::Warning,
                    kind.event_reason(),
                    reason.clone(),
                )
                .await;
            }
            self.reported.insert(problem);
        }
    }

    /// Events are best effort: one that cannot be recorded is logged, not retried.
    async fn publish(&self, service: &Service, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "AssignVIP".to_owned(),
            secondary: None,
        };
        if let Err(error) = self
            .recorder
            .publish(&event, &service.object_ref(&()))
            .await
        {
            warn!(%error, reason, "event not recorded");
        }
    }
}

/// The Service `namespace/name` in the store.
fn lookup(services: &Store<Service>, owner: &str) -> Option<Arc<Service>> {
    let (namespace, name) = owner.split_once('/')?;
    services.get(&ObjectRef::new(name).within(namespace))
}

fn ingress_ips(service: &Service) -> Vec<String> {
    let status = service.status.as_ref();
    let ingress = status
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    ingress.iter().filter_map(|i| i.ip.clone()).collect()
}
