//! Kubernetes manifests as `kubectl get -o yaml` shows them, for the agent's
//! manifest directory: the objects of `lb::k8s::fixtures`, written as YAML.

use std::{
    fmt::Display,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use k8s_openapi::{
    api::core::v1::{Service, ServicePort as K8sServicePort},
    apimachinery::pkg::util::intstr::IntOrString,
};
use lb::k8s::fixtures::{self, ip_families};
use serde::Serialize;

use crate::topology::Node;

static NEXT_FILE: AtomicU32 = AtomicU32::new(0);

/// A manifest file of its own for one agent or test, in a directory removed
/// when the guard is dropped.
#[derive(Debug)]
pub struct ManifestFile {
    dir: PathBuf,
    file: PathBuf,
}

impl ManifestFile {
    /// Writes `text` to a new file whose name includes `tag`.
    pub fn new(tag: &str, text: &str) -> std::io::Result<ManifestFile> {
        let dir = std::env::temp_dir().join(format!(
            "lb-tests-{tag}-{}-{}",
            std::process::id(),
            NEXT_FILE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("cluster.yaml");
        let manifests = ManifestFile { dir, file };
        manifests.write(text)?;
        Ok(manifests)
    }

    /// Replaces the contents: written aside, then renamed, so the agent
    /// (which re-reads on change) never sees half a file.
    pub fn write(&self, text: &str) -> std::io::Result<()> {
        let tmp = self.dir.join(".cluster.yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, &self.file)
    }

    pub fn path(&self) -> &Path {
        &self.file
    }
}

impl Drop for ManifestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One port of a Service.
#[derive(Clone, Copy, Debug)]
pub struct ServicePort<'a> {
    pub name: &'a str,
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: &'a str,
    pub node_port: u16,
    pub target_port: Option<u16>,
}

impl ServicePort<'static> {
    /// A TCP port named `http`, to the pods' port of the same number.
    pub const fn http(port: u16, node_port: u16) -> Self {
        Self {
            name: "http",
            port,
            protocol: "TCP",
            node_port,
            target_port: None,
        }
    }
}

fn yaml(object: &impl Serialize) -> String {
    serde_yaml::to_string(object).expect("Kubernetes objects serialize")
}

/// A Service of type LoadBalancer at `vip` with `ports`. When `vip` is an
/// address, the Service is of its family, as the API server records it
/// (`spec.ipFamilies`); anything else is written as it is, for tests of bad input.
pub fn load_balancer_service_yaml(
    name: &str,
    namespace: &str,
    vip: impl Display,
    ports: &[ServicePort<'_>],
) -> String {
    yaml(&load_balancer_service(name, namespace, vip, ports))
}

/// The Service [`load_balancer_service_yaml`] writes, as an object.
pub fn load_balancer_service(
    name: &str,
    namespace: &str,
    vip: impl Display,
    ports: &[ServicePort<'_>],
) -> Service {
    let ports = ports.iter().map(|port| K8sServicePort {
        name: Some(port.name.to_owned()),
        port: port.port.into(),
        protocol: Some(port.protocol.to_owned()),
        node_port: Some(port.node_port.into()),
        target_port: port
            .target_port
            .map(|target| IntOrString::Int(target.into())),
        ..Default::default()
    });
    let mut service = fixtures::load_balancer_service(namespace, name, ports.collect());
    let vip = vip.to_string();
    if let Ok(ip) = vip.parse::<IpAddr>() {
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        service = ip_families(service, "SingleStack", &[family]);
    }
    service.spec.get_or_insert_default().load_balancer_ip = Some(vip);
    service
}

/// A Ready Node with an InternalIP of each of `ips`.
pub fn ready_node_yaml(name: &str, ips: &[impl Display]) -> String {
    let (first, others) = ips.split_first().expect("a node has an address");
    let node = others
        .iter()
        .fold(fixtures::node(name, first), fixtures::with_internal_ip);
    yaml(&node)
}

/// Documents joined into one multi-document YAML stream.
pub fn documents<S: AsRef<str>>(docs: &[S]) -> String {
    docs.iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// One Service per (VIP, NodePort) of `services` (`web-<i>`, TCP port 80),
/// and a Ready Node for each (name, address) of `nodes`.
pub fn http_services_and_nodes<'a>(
    services: impl IntoIterator<Item = (IpAddr, u16)>,
    nodes: impl IntoIterator<Item = (&'a str, IpAddr)>,
) -> String {
    let mut docs: Vec<String> = services
        .into_iter()
        .enumerate()
        .map(|(i, (vip, node_port))| {
            let port = ServicePort::http(80, node_port);
            load_balancer_service_yaml(&format!("web-{i}"), "demo", vip, &[port])
        })
        .collect();
    docs.extend(
        nodes
            .into_iter()
            .map(|(name, ip)| ready_node_yaml(name, &[ip])),
    );
    documents(&docs)
}

/// `service` followed by a Ready Node for each of `nodes`, at both its
/// addresses (a Service's backends are those of its family).
pub fn service_and_nodes(service: String, nodes: &[Node]) -> String {
    let mut docs = vec![service];
    docs.extend(
        nodes
            .iter()
            .map(|n| ready_node_yaml(&n.name, &[IpAddr::from(n.ip), n.ip6.into()])),
    );
    documents(&docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_nodes_load_as_the_objects_they_were_built_from() {
        let service = load_balancer_service_yaml(
            "web",
            "demo",
            "198.51.100.10",
            &[ServicePort {
                name: "http",
                port: 80,
                protocol: "TCP",
                node_port: 31000,
                target_port: Some(8080),
            }],
        );
        let node = ready_node_yaml("node-1", &["10.1.0.11", "2001:db8:1::11"]);
        let text = documents(&[service, node]);
        let loaded = lb::k8s::load_bytes(std::path::Path::new("test"), text.as_bytes());
        assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
        let objects = loaded.objects;
        let Service { metadata, spec, .. } = &*objects.services[0];
        assert_eq!(metadata.name.as_deref(), Some("web"));
        assert_eq!(metadata.namespace.as_deref(), Some("demo"));
        let spec = spec.as_ref().expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.load_balancer_ip.as_deref(), Some("198.51.100.10"));
        assert_eq!(spec.ip_families, Some(vec!["IPv4".to_owned()]));
        let port = &spec.ports.as_ref().expect("ports")[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.protocol.as_deref()),
            (Some("http"), 80, Some("TCP"))
        );
        assert_eq!(port.node_port, Some(31000));
        assert_eq!(port.target_port, Some(IntOrString::Int(8080)));
        let addresses = objects.nodes[0]
            .status
            .as_ref()
            .and_then(|status| status.addresses.as_ref())
            .expect("addresses");
        let internal: Vec<&str> = addresses
            .iter()
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address.as_str())
            .collect();
        assert_eq!(internal, ["10.1.0.11", "2001:db8:1::11"]);
    }

    #[test]
    fn a_bad_vip_is_written_as_it_is() {
        let service = load_balancer_service_yaml("web", "demo", "not-an-ip", &[]);
        assert!(service.contains("loadBalancerIP: not-an-ip\n"), "{service}");
        assert!(!service.contains("ipFamilies"), "{service}");
    }
}
