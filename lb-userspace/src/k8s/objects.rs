//! What both sources (manifests and an API server) produce: one snapshot of
//! the cluster, translated the same way whatever it came from.

use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Secret, Service},
    discovery::v1::EndpointSlice,
};

use super::metallb::objects::{
    BFDProfile, BGPAdvertisement, BGPPeer, Community, IPAddressPool, L2Advertisement,
};

/// The Kubernetes objects lb reads, from any source. Shared, so that a
/// snapshot of a large cluster costs no copy of it.
#[derive(Debug, Clone, Default)]
pub struct ClusterObjects {
    pub services: Vec<Arc<Service>>,
    pub nodes: Vec<Arc<Node>>,
    /// discovery.k8s.io/v1 slices: which nodes run a Service's endpoints.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// Their labels are what IPAddressPools' `namespaceSelectors` match.
    pub namespaces: Vec<Arc<Namespace>>,
    pub metallb: MetallbObjects,
}

/// MetalLB's configuration, as found in its namespace.
#[derive(Debug, Clone, Default)]
pub struct MetallbObjects {
    pub pools: Vec<Arc<IPAddressPool>>,
    pub l2_advertisements: Vec<Arc<L2Advertisement>>,
    pub bgp_advertisements: Vec<Arc<BGPAdvertisement>>,
    pub bgp_peers: Vec<Arc<BGPPeer>>,
    pub bfd_profiles: Vec<Arc<BFDProfile>>,
    pub communities: Vec<Arc<Community>>,
    /// BGPPeers' `passwordSecret`s.
    pub secrets: Vec<Arc<Secret>>,
}
