//! lb: an XDP load balancer giving Kubernetes Services of `type: LoadBalancer` a VIP.
pub mod dataplane;
pub mod k8s;
pub mod maglev;
pub mod model;
pub mod vip_pool;
