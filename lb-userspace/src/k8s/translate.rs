//! Turning Services, Nodes and EndpointSlices into the desired state of the
//! data path.
//!
//! Traffic goes to nodes on the Service's NodePort, like a cloud load balancer,
//! or with direct server return on the VIP itself (so a port needs no NodePort
//! there): kube-proxy on the node takes it from there. With `externalTrafficPolicy:
//! Cluster` every usable node serves; with `Local` only nodes that run a ready
//! endpoint of the Service (kube-proxy drops traffic on the others).

mod annotations;
mod backends;
mod memo;
mod vips;

use std::{
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
    fmt,
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as K8sServiceSpec};

use self::backends::ServedPort;
use super::{
    metallb,
    objects::ClusterObjects,
    pools::{Claimant, Pools, ServiceIdentity, Sharing},
};
use crate::{
    dataplane::Forwarding,
    model::{DesiredState, Frontend, ServiceSpec},
};

/// Annotation on a Node giving its Maglev weight (positive integer; default 1),
/// so bigger nodes can take a bigger share of new connections.
pub const NODE_WEIGHT_ANNOTATION: &str = "lb.dev/weight";
/// Annotation on a Service asking for addresses, comma-separated, at most one
/// per IP family (`spec.loadBalancerIP` is deprecated upstream; this wins over
/// it).
pub const ADDRESS_ANNOTATION: &str = "lb.dev/address";
/// Annotation on a Service naming the pool to allocate its VIP from.
pub const POOL_ANNOTATION: &str = "lb.dev/pool";
/// Annotation on a Service giving a sharing key: Services with the same key
/// may share a VIP if they listen on different ports (MetalLB's
/// `allow-shared-ip`, whose spellings work too).
pub const SHARING_ANNOTATION: &str = "lb.dev/allow-shared-ip";
/// The `spec.loadBalancerClass` lb answers to by default; Services without a
/// class are served too, as the cluster's default load balancer.
pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "lb.dev/xdp";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the translation may not decide by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateConfig {
    /// Services with another `spec.loadBalancerClass` belong to another controller.
    pub load_balancer_class: String,
    /// Which of a Node's `status.addresses` types traffic is sent to.
    pub node_address_type: String,
    /// How the data path hands packets to nodes: with NAT they arrive for
    /// the NodePort, so kube-proxy's rules for the VIP (source ranges) do
    /// not apply to them.
    pub forwarding: Forwarding,
    /// The port of kube-proxy's `/healthz` on every node, which checks the
    /// nodes of a Service port without a NodePort (direct server return);
    /// `None`: such ports are not checked.
    pub kube_proxy_healthz_port: Option<u16>,
    /// How the nodes of a port with policy Cluster are checked.
    pub cluster_check: ClusterCheck,
}

/// How the nodes of a Service port with `externalTrafficPolicy: Cluster`
/// are health checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterCheck {
    /// A connect to the port's NodePort on each node: one check per node and
    /// port.
    #[default]
    NodePort,
    /// kube-proxy's own `/healthz` on each node, as cloud load balancers
    /// check nodes for policy Cluster: one check per node whatever the
    /// Services.
    KubeProxy,
}

/// kube-proxy's default `--healthz-bind-address` port.
pub const KUBE_PROXY_HEALTHZ_PORT: u16 = 10256;

impl Default for TranslateConfig {
    fn default() -> Self {
        Self {
            load_balancer_class: DEFAULT_LOAD_BALANCER_CLASS.to_owned(),
            node_address_type: "InternalIP".to_owned(),
            forwarding: Forwarding::Nat,
            kube_proxy_healthz_port: Some(KUBE_PROXY_HEALTHZ_PORT),
            cluster_check: ClusterCheck::NodePort,
        }
    }
}

/// What the agent does about Services' addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Gives each Service its addresses (requested, held or allocated).
    #[default]
    Assign,
    /// Serves each Service on the addresses its status shows, and waits for
    /// the elected agent to assign those that show none.
    Adopt,
}

/// Translates cluster objects, remembering VIP allocations from one round to the
/// next so that Services keep their addresses.
#[derive(Debug, Clone, Default)]
pub struct Translator {
    pub config: TranslateConfig,
    role: Role,
    /// The pools in use and the addresses handed out.
    pub pools: Pools,
    /// The pools the flags give, used while no IPAddressPool exists.
    flag_pools: Pools,
    /// Flags and IPAddressPools both give pools: said once, until it changes.
    clash_reported: bool,
    /// What the last full translation skipped, as logged: a skip is logged
    /// when it first appears, not again at every round while it lasts.
    warned: BTreeSet<String>,
    /// The last translation, and what it was made from.
    translation: Translation,
    made_from: Option<memo::Memo>,
}

/// How the backends of one service port are health checked.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum HealthCheck {
    /// A TCP connect to the backend's NodePort.
    NodePort,
    /// An HTTP GET on the Service's `healthCheckNodePort`, where kube-proxy
    /// answers 200 only while the node has a local endpoint (policy Local).
    HealthCheckNodePort(u16),
    /// An HTTP GET on kube-proxy's own health port, for a port without a
    /// NodePort (served with direct server return): it answers 200 while
    /// kube-proxy keeps the node's rules, which take the VIP, in sync, as
    /// cloud load balancers check nodes for policy Cluster.
    KubeProxy(u16),
}

/// What [`Translator::translate`] computed.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    pub state: DesiredState,
    /// The VIPs (IPv4 first) of every Service that got some, by
    /// `namespace/name`: what its `status.loadBalancer.ingress` should say.
    pub vips: BTreeMap<String, Vec<IpAddr>>,
    /// Services that gave VIPs up this round (deleted, no longer a load
    /// balancer of ours, or moved to another address, got or not), with each
    /// address, so a stale status can be cleared.
    pub released: Vec<(String, IpAddr)>,
    /// The pool each VIP is in, by name (none for a requested address outside
    /// every pool): what decides how it is announced.
    pub vip_pools: BTreeMap<IpAddr, String>,
    pub checks: BTreeMap<Frontend, HealthCheck>,
    /// Objects (or parts of them) not served, so one bad object does not take
    /// the others down with it.
    pub skipped: Vec<Skipped>,
    /// How many Services this round translated: every one, or, when only
    /// EndpointSlices changed, those the changed slices belong to.
    pub translated: usize,
}

/// Why an object (or a port of it) is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// "Service" or "Node".
    pub kind: &'static str,
    /// `namespace/name` of a Service, the name of a Node.
    pub name: String,
    pub problem: Problem,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.name, self.reason)
    }
}

/// The kind of a skip, which a Kubernetes Event reports as its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Problem {
    /// The object asks for something that cannot be done as written.
    Invalid,
    /// Another Service holds the address, or listens on the same port of it.
    AddressConflict,
    /// No address was free in the pool (or no pool is configured).
    AllocationFailed,
    /// Translated, but the data path could not serve it (with direct server
    /// return a node that is not on-link; a full map).
    NotProgrammed,
}

impl Problem {
    pub fn event_reason(self) -> &'static str {
        match self {
            Self::Invalid => "InvalidConfiguration",
            Self::AddressConflict => "AddressConflict",
            Self::AllocationFailed => "AllocationFailed",
            Self::NotProgrammed => "NotProgrammed",
        }
    }
}

impl Translator {
    pub fn new(config: TranslateConfig, pools: Pools) -> Self {
        Self {
            config,
            role: Role::Assign,
            flag_pools: pools.clone(),
            pools,
            clash_reported: false,
            warned: BTreeSet::new(),
            translation: Translation::default(),
            made_from: None,
        }
    }

    /// Assigns addresses or adopts them from the next translation on.
    pub fn set_role(&mut self, role: Role) {
        if role != self.role {
            self.role = role;
            // The addresses change: every Service is translated again.
            self.made_from = None;
        }
    }

    /// Uses the IPAddressPools when there are any (as MetalLB would: only
    /// addresses in them are served), else the flags' pools.
    fn configure_pools(&mut self, objects: &ClusterObjects, skips: &mut Skips) {
        let objects = &objects.metallb.pools;
        if objects.is_empty() {
            self.clash_reported = false;
            self.pools.reconfigure(self.flag_pools.clone(), false);
            return;
        }
        let (pools, skipped) = metallb::pools::pools(objects);
        for (name, reason) in skipped {
            skips.push("IPAddressPool", &name, Problem::Invalid, reason);
        }
        if !self.flag_pools.pools().is_empty() && !self.clash_reported {
            tracing::warn!(
                "IPAddressPools exist, so the pools of --vip-pool and --pool are not used: \
                 remove those flags, or the IPAddressPools"
            );
            self.clash_reported = true;
        }
        let pools =
            Pools::new(pools).expect("overlapping and same-named IPAddressPools are skipped");
        self.pools.reconfigure(pools, true);
    }

    /// Computes what the data path should serve.
    ///
    /// A Service gets one VIP per IP family it is served in (`spec.ipFamilies`
    /// and `spec.ipFamilyPolicy`), each port served on each VIP by the nodes
    /// with an address of that family. Each VIP: the address of its family
    /// the `lb.dev/address` annotation names, else `spec.loadBalancerIP`, else
    /// the first `status.loadBalancer.ingress[].ip` of its family (unless it
    /// lies outside the Service's pools), else allocated from the pool the
    /// `lb.dev/pool` annotation names, else from the pools it may have
    /// automatically (MetalLB's rules; with the flags' pools, the first one).
    /// MetalLB's annotations work too. Requested addresses are claimed before
    /// anything is allocated, so allocations never collide with them. Two
    /// Services may share a VIP if their (port, protocol) sets are disjoint and
    /// both request it or both have the same sharing key; otherwise the one
    /// already holding it keeps it. Owners no longer served are released.
    ///
    /// When only EndpointSlices changed since the last call, only the
    /// backends of the Services they belong to are translated again.
    pub fn translate(&mut self, objects: &ClusterObjects) -> &Translation {
        match &mut self.made_from {
            Some(memo) if memo.made_of_the_same_but_slices(objects) => {
                memo.update_backends(objects, &self.config, &mut self.translation);
            }
            _ => {
                self.translation = self.translate_all(objects);
                self.made_from = Some(memo::Memo::new(objects));
                self.warn_new_skips();
            }
        }
        &self.translation
    }

    /// Logs the skips of the last full translation that the one before did
    /// not have. (A round of changed EndpointSlices only skips what the last
    /// full one did.)
    fn warn_new_skips(&mut self) {
        let skipped: BTreeSet<String> = self
            .translation
            .skipped
            .iter()
            .map(ToString::to_string)
            .collect();
        for skip in skipped.difference(&self.warned) {
            tracing::warn!("skipping {skip}");
        }
        self.warned = skipped;
    }

    /// What the last [`Self::translate`] computed.
    pub fn translation(&self) -> &Translation {
        &self.translation
    }

    fn translate_all(&mut self, objects: &ClusterObjects) -> Translation {
        let mut skips = Skips::default();
        self.configure_pools(objects, &mut skips);
        let nodes = backends::usable_nodes(&objects.nodes, &self.config, &mut skips);
        let endpoints = backends::index_endpoints(&objects.endpoint_slices, &nodes);
        let namespaces = namespace_labels(objects);
        let mut services = self.load_balancers(&objects.services, &namespaces, &mut skips);
        // A Service none of whose ports can be served (no nodePort under
        // NAT, only SCTP) holds no address, and its status shows none: the skips of
        // its ports say why.
        services.retain(|service| {
            let servable = service
                .ports
                .iter()
                .any(|port| ServedPort::new(service, port, &self.config).is_ok());
            if !servable {
                for port in service.ports {
                    if let Err(reason) = ServedPort::new(service, port, &self.config) {
                        skips.service(&service.owner, Problem::Invalid, reason);
                    }
                }
            }
            servable
        });
        let live: BTreeSet<&str> = services.iter().map(|s| s.owner.as_str()).collect();
        for (owner, vip) in self.pools.retain_owners(&live) {
            tracing::info!(%vip, "released the VIP of {owner}, which lb no longer serves");
        }
        let mut translation = Translation::default();
        for (service, vips) in vips::assign(&services, self.role, &mut self.pools, &mut skips) {
            let backends = backends::for_service(service, &nodes, &endpoints);
            for port in service.ports {
                let port = match ServedPort::new(service, port, &self.config) {
                    Ok(port) => port,
                    Err(reason) => {
                        skips.service(&service.owner, Problem::Invalid, reason);
                        continue;
                    }
                };
                for &vip in &vips {
                    let spec = port.on(vip, &backends);
                    translation.serve(spec, port.check, service, &mut skips);
                }
            }
            for &vip in &vips {
                if let Some(pool) = self.pools.pool_of(vip) {
                    translation.vip_pools.insert(vip, pool.name().to_owned());
                }
            }
            translation.vips.insert(service.owner.clone(), vips);
        }
        // Services gone, no longer ours, or moved off an address (asking for
        // another, taken or not) give it up: their statuses must stop
        // showing it.
        translation.released = self.pools.take_given_up();
        translation.skipped = skips.0;
        translation.translated = services.len();
        translation
    }

    /// Services of type LoadBalancer of our class, sorted by namespace/name,
    /// which decides who wins a conflict when nothing else does.
    fn load_balancers<'a>(
        &self,
        services: &'a [Arc<Service>],
        namespaces: &BTreeMap<&str, &'a BTreeMap<String, String>>,
        skips: &mut Skips,
    ) -> Vec<LoadBalancer<'a>> {
        let mut found: Vec<LoadBalancer> = services
            .iter()
            .filter_map(|service| load_balancer(&self.config, service, namespaces, skips))
            .collect();
        found.sort_by(|a, b| a.owner.cmp(&b.owner));
        found
    }
}

/// `service` as lb serves it, if it is a LoadBalancer of our class and
/// valid as a whole (its ports are checked one by one later).
fn load_balancer<'a>(
    config: &TranslateConfig,
    service: &'a Service,
    namespaces: &BTreeMap<&str, &'a BTreeMap<String, String>>,
    skips: &mut Skips,
) -> Option<LoadBalancer<'a>> {
    let spec = service.spec.as_ref().filter(|spec| {
        spec.type_.as_deref() == Some("LoadBalancer")
            && spec
                .load_balancer_class
                .as_deref()
                .is_none_or(|class| class == config.load_balancer_class)
    })?;
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let Some(name) = service.metadata.name.as_deref() else {
        let owner = format!("{namespace}/<unnamed>");
        skips.service(&owner, Problem::Invalid, "no metadata.name");
        return None;
    };
    let mut service = LoadBalancer {
        owner: format!("{namespace}/{name}"),
        namespace,
        name,
        service,
        spec,
        ports: spec.ports.as_deref().unwrap_or_default(),
        namespace_labels: namespaces.get(namespace).copied(),
        sharing: None,
        refusal: None,
    };
    match service.sharing() {
        Ok(sharing) => service.sharing = sharing,
        Err(reason) => service.refusal = Some(reason),
    }
    if config.forwarding == Forwarding::Nat && has_source_ranges(service.service) {
        service.refusal = Some(
            "spec.loadBalancerSourceRanges: not enforced with --forwarding nat (kube-proxy \
             applies it to traffic for the VIP; lb hands the nodes traffic for the NodePort): \
             refused rather than served to everyone; use --forwarding dsr, or drop it"
                .to_owned(),
        );
    }
    Some(service)
}

/// Whether `service` limits its clients by source address, in its spec or
/// in the annotation that came before the field.
fn has_source_ranges(service: &Service) -> bool {
    let in_spec = service
        .spec
        .as_ref()
        .and_then(|spec| spec.load_balancer_source_ranges.as_ref())
        .is_some_and(|ranges| !ranges.is_empty());
    let annotated = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(SOURCE_RANGES_ANNOTATION))
        .is_some_and(|ranges| !ranges.trim().is_empty());
    in_spec || annotated
}

/// The annotation kube-proxy reads when `spec.loadBalancerSourceRanges` is
/// empty.
const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// Each labelled Namespace's labels, by name.
fn namespace_labels(objects: &ClusterObjects) -> BTreeMap<&str, &BTreeMap<String, String>> {
    objects
        .namespaces
        .iter()
        .filter_map(|ns| Some((ns.metadata.name.as_deref()?, ns.metadata.labels.as_ref()?)))
        .collect()
}

impl Translation {
    /// Adds one frontend of `service`, unless another Service serves it.
    fn serve(
        &mut self,
        spec: ServiceSpec,
        check: Option<HealthCheck>,
        service: &LoadBalancer,
        skips: &mut Skips,
    ) {
        match self.state.services.entry(spec.frontend) {
            Entry::Vacant(entry) => {
                if let Some(check) = check {
                    self.checks.insert(spec.frontend, check);
                }
                entry.insert(spec);
            }
            Entry::Occupied(entry) => {
                let reason = format!(
                    "{} is already served by {}",
                    spec.frontend,
                    entry.get().name
                );
                skips.service(&service.owner, Problem::AddressConflict, reason);
            }
        }
    }
}

/// Skip reasons (logged by the translator when new).
#[derive(Default)]
struct Skips(Vec<Skipped>);

impl Skips {
    fn service(&mut self, owner: &str, problem: Problem, reason: impl fmt::Display) {
        self.push("Service", owner, problem, reason);
    }

    fn node(&mut self, name: &str, reason: impl fmt::Display) {
        self.push("Node", name, Problem::Invalid, reason);
    }

    pub(super) fn push(
        &mut self,
        kind: &'static str,
        name: &str,
        problem: Problem,
        reason: impl fmt::Display,
    ) {
        self.0.push(Skipped {
            kind,
            name: name.to_owned(),
            problem,
            reason: reason.to_string(),
        });
    }
}

/// A Service of type LoadBalancer that lb serves.
struct LoadBalancer<'a> {
    /// "namespace/name": the pool owner and the prefix of port names.
    owner: String,
    namespace: &'a str,
    name: &'a str,
    service: &'a Service,
    spec: &'a K8sServiceSpec,
    ports: &'a [ServicePort],
    /// The labels of its Namespace, if that is known.
    namespace_labels: Option<&'a BTreeMap<String, String>>,
    sharing: Option<Sharing>,
    /// Why it is not served, though it keeps its address (its setting is to
    /// be fixed, not the address lost).
    refusal: Option<String>,
}

impl<'a> LoadBalancer<'a> {
    /// The Service as it asks the pools for addresses.
    fn claimant(&self) -> Claimant<'_> {
        Claimant {
            owner: &self.owner,
            service: ServiceIdentity {
                namespace: self.namespace,
                namespace_labels: self.namespace_labels,
                labels: self.service.metadata.labels.as_ref(),
            },
            sharing: self.sharing.as_ref(),
        }
    }

    fn is_local(&self) -> bool {
        self.spec.external_traffic_policy.as_deref() == Some("Local")
    }

    /// How the nodes of a port are checked: kube-proxy's answer for the
    /// Service (policy Local), else a connect to the port's NodePort (unless
    /// `cluster_check` says kube-proxy), or without one kube-proxy's own
    /// health, unless switched off.
    fn health_check(&self, has_node_port: bool, config: &TranslateConfig) -> Option<HealthCheck> {
        let port = self
            .spec
            .health_check_node_port
            .and_then(backends::valid_port);
        match port {
            Some(port) if self.is_local() => Some(HealthCheck::HealthCheckNodePort(port)),
            _ if has_node_port && config.cluster_check == ClusterCheck::NodePort => {
                Some(HealthCheck::NodePort)
            }
            _ => config.kube_proxy_healthz_port.map(HealthCheck::KubeProxy),
        }
    }

    /// What this Service listens on, to tell whether it can share a VIP.
    fn listeners(&self) -> BTreeSet<(i32, &str)> {
        self.ports
            .iter()
            .map(|port| (port.port, backends::protocol_name(port)))
            .collect()
    }
}

#[cfg(test)]
mod tests;
