//! Test beds for lb: network namespaces and topologies to run the load balancer
//! in, servers that say which node answered, packet fixtures for
//! `BPF_PROG_TEST_RUN` and a fake Kubernetes API server. Shared by the
//! integration tests, the demo and benchmarks.

pub mod agent;
pub mod bird;
pub mod fake_apiserver;
pub mod http;
pub mod kube_agent;
pub mod manifests;
pub mod metallb;
pub mod neighbor_packets;
pub mod netns;
pub mod on_link;
pub mod packets;
pub mod pin_root;
pub mod scale_out;
pub mod servers;
pub mod specs;
pub mod streams;
pub mod topology;
pub mod xdp_bed;
