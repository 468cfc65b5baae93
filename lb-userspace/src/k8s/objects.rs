//! What both sources (manifests and an API server) produce: one snapshot of
//! the cluster, translated the same way whatever it came from.

use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

/// The Kubernetes objects lb reads, from any source. Shared, so that a
/// snapshot of a large cluster costs no copy of it.
#[derive(Debug, Clone, Default)]
pub struct ClusterObjects {
    pub services: Vec<Arc<Service>>,
    pub nodes: Vec<Arc<Node>>,
    /// discovery.k8s.io/v1 slices: which nodes run a Service's endpoints.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
}
