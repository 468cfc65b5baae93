//! The resources the fake API server serves.

/// A kind of object, with what its REST paths and JSON need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    Node,
    EndpointSlice,
    /// events.k8s.io/v1, which kube-rs's event recorder writes.
    Event,
    Namespace,
    Secret,
    /// coordination.k8s.io/v1, which the agents elect their writer with.
    Lease,
    // MetalLB's, served only while its CRDs are installed.
    IPAddressPool,
    L2Advertisement,
    BGPAdvertisement,
    BGPPeer,
    BFDProfile,
    Community,
}

/// What the REST paths and JSON of a kind need.
struct Definition {
    name: &'static str,
    /// `group/version`, or `version` for the core group.
    api_version: &'static str,
    plural: &'static str,
    namespaced: bool,
    /// `.../status` is a subresource (and the main resource ignores status).
    has_status: bool,
    /// A custom resource of MetalLB's CRDs.
    metallb: bool,
}

const fn core(name: &'static str, plural: &'static str, namespaced: bool) -> Definition {
    Definition {
        name,
        api_version: "v1",
        plural,
        namespaced,
        has_status: false,
        metallb: false,
    }
}

const fn metallb(
    name: &'static str,
    api_version: &'static str,
    plural: &'static str,
) -> Definition {
    Definition {
        name,
        api_version,
        plural,
        namespaced: true,
        has_status: false,
        metallb: true,
    }
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Service,
        Kind::Node,
        Kind::EndpointSlice,
        Kind::Event,
        Kind::Namespace,
        Kind::Secret,
        Kind::Lease,
        Kind::IPAddressPool,
        Kind::L2Advertisement,
        Kind::BGPAdvertisement,
        Kind::BGPPeer,
        Kind::BFDProfile,
        Kind::Community,
    ];

    fn definition(self) -> Definition {
        match self {
            Kind::Service => Definition {
                has_status: true,
                ..core("Service", "services", true)
            },
            Kind::Node => Definition {
                has_status: true,
                ..core("Node", "nodes", false)
            },
            Kind::EndpointSlice => Definition {
                api_version: "discovery.k8s.io/v1",
                ..core("EndpointSlice", "endpointslices", true)
            },
            Kind::Event => Definition {
                api_version: "events.k8s.io/v1",
                ..core("Event", "events", true)
            },
            Kind::Namespace => core("Namespace", "namespaces", false),
            Kind::Secret => core("Secret", "secrets", true),
            Kind::Lease => Definition {
                api_version: "coordination.k8s.io/v1",
                ..core("Lease", "leases", true)
            },
            Kind::IPAddressPool => metallb("IPAddressPool", "metallb.io/v1beta1", "ipaddresspools"),
            Kind::L2Advertisement => {
                metallb("L2Advertisement", "metallb.io/v1beta1", "l2advertisements")
            }
            Kind::BGPAdvertisement => metallb(
                "BGPAdvertisement",
                "metallb.io/v1beta1",
                "bgpadvertisements",
            ),
            Kind::BGPPeer => metallb("BGPPeer", "metallb.io/v1beta2", "bgppeers"),
            Kind::BFDProfile => metallb("BFDProfile", "metallb.io/v1beta1", "bfdprofiles"),
            Kind::Community => metallb("Community", "metallb.io/v1beta1", "communities"),
        }
    }

    pub fn name(self) -> &'static str {
        self.definition().name
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(self) -> &'static str {
        self.definition().api_version
    }

    /// The path segment: `services`, `nodes`...
    pub fn plural(self) -> &'static str {
        self.definition().plural
    }

    pub fn namespaced(self) -> bool {
        self.definition().namespaced
    }

    /// Whether `.../status` is a subresource (and the main resource ignores
    /// status changes).
    pub fn has_status(self) -> bool {
        self.definition().has_status
    }

    /// Whether MetalLB's CRDs define it (so it exists only with them).
    pub fn is_metallb(self) -> bool {
        self.definition().metallb
    }

    /// The kind of a Kubernetes type (k8s-openapi's, or a custom resource's),
    /// if the fake serves it.
    pub fn of<K: kube::Resource<DynamicType = ()>>() -> Option<Kind> {
        Self::from_path(&K::api_version(&()), &K::plural(&()))
    }

    pub fn from_path(api_version: &str, plural: &str) -> Option<Kind> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.api_version() == api_version && kind.plural() == plural)
    }
}
