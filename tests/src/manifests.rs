//! Kubernetes manifests as `kubectl get -o yaml` shows them, for the agent's
//! manifest directory.

use std::{
    fmt::Display,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

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

/// A Service of type LoadBalancer at `vip` with `ports`. When `vip` is an
/// address, the Service is of its family, as the API server records it
/// (`spec.ipFamilies`); anything else is written as it is, for tests of bad input.
pub fn load_balancer_service_yaml(
    name: &str,
    namespace: &str,
    vip: impl Display,
    ports: &[ServicePort<'_>],
) -> String {
    let vip = vip.to_string();
    let families = match vip.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => "  ipFamilyPolicy: SingleStack\n  ipFamilies:\n  - IPv4\n",
        Ok(IpAddr::V6(_)) => "  ipFamilyPolicy: SingleStack\n  ipFamilies:\n  - IPv6\n",
        Err(_) => "",
    };
    let mut yaml = format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  type: LoadBalancer
{families}  loadBalancerIP: {vip}
  ports:
"
    );
    for port in ports {
        yaml.push_str(&format!(
            "  - name: {}
    port: {}
    protocol: {}
",
            port.name, port.port, port.protocol
        ));
        if let Some(target) = port.target_port {
            yaml.push_str(&format!("    targetPort: {target}\n"));
        }
        yaml.push_str(&format!("    nodePort: {}\n", port.node_port));
    }
    yaml
}

/// A Ready Node with an InternalIP of each of `ips`.
pub fn ready_node_yaml(name: &str, ips: &[impl Display]) -> String {
    let addresses: String = ips
        .iter()
        .map(|ip| format!("  - type: InternalIP\n    address: {ip}\n"))
        .collect();
    format!(
        "apiVersion: v1
kind: Node
metadata:
  name: {name}
status:
  addresses:
{addresses}  conditions:
  - type: Ready
    status: \"True\"
"
    )
}

/// Documents joined into one multi-document YAML stream.
pub fn documents<S: AsRef<str>>(docs: &[S]) -> String {
    docs.iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join("---\n")
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
    fn service_ports_and_nodes_are_yaml_documents() {
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
        assert!(service.ends_with(
            "  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n    targetPort: 8080\n    nodePort: 31000\n"
        ));
        assert!(service.contains("  ipFamilies:\n  - IPv4\n  loadBalancerIP: 198.51.100.10\n"));
        let node = ready_node_yaml("node-1", &["10.1.0.11", "2001:db8:1::11"]);
        assert!(node.contains(
            "  addresses:\n  - type: InternalIP\n    address: 10.1.0.11\n  \
             - type: InternalIP\n    address: 2001:db8:1::11\n  conditions:\n"
        ));
        let yaml = documents(&[service, node]);
        assert_eq!(yaml.matches("---\n").count(), 1);
        assert!(yaml.contains("kind: Node\nmetadata:\n  name: node-1\n"));
    }
}
