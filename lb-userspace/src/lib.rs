//! lb: an XDP load balancer giving Kubernetes Services of `type: LoadBalancer` a VIP.
//!
//! [`dataplane`] is the domain API over the XDP program; [`k8s`] turns Kubernetes
//! objects into a [`model::DesiredState`]; [`reconcile`] applies one to the other;
//! [`agent`] and [`cli`] are the front ends.
pub mod agent;
pub mod announce;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dataplane;
pub mod health;
pub mod iface;
pub mod inspect;
pub mod k8s;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod node_neighbors;
pub mod pins;
pub mod reconcile;
pub mod routes;
pub mod rundir;
pub mod show;
pub mod units;
pub mod xdp_log;
