//! What the agent knows that the maps do not: Kubernetes names, nodes and
//! weights. The agent writes it after every sync; the CLI reads it to label
//! what it finds in the pinned maps (and works without it, with addresses only).

use std::{
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{dataplane::Dataplane, rundir};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub services: Vec<ServiceEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub backends: Vec<BackendEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BackendEntry {
    pub node: String,
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
}

impl Catalog {
    pub fn of(dataplane: &Dataplane) -> Self {
        let services = dataplane
            .services()
            .map(|service| ServiceEntry {
                name: service.spec.name.clone(),
                vip: service.spec.frontend.vip,
                port: service.spec.frontend.port,
                protocol: service.spec.frontend.protocol.to_string(),
                backends: service
                    .spec
                    .backends
                    .iter()
                    .map(|b| BackendEntry {
                        node: b.node.clone(),
                        address: b.ip,
                        port: b.port,
                        weight: b.weight,
                    })
                    .collect(),
            })
            .collect();
        Self { services }
    }

    /// The catalog file of the agent pinning under `bpffs`.
    pub fn path(bpffs: &Path) -> PathBuf {
        Path::new(rundir::RUN_ROOT).join(format!("{}.json", rundir::name(bpffs)))
    }

    /// Writes atomically: readers see the old or the new catalog, never half.
    pub fn write(&self, bpffs: &Path) -> io::Result<()> {
        let path = Self::path(bpffs);
        fs::create_dir_all(rundir::RUN_ROOT)?;
        let tmp = path.with_extension("json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(io::Error::other)?,
        )?;
        fs::rename(tmp, path)
    }

    /// The catalog, or an empty one when there is none (agent never ran, or
    /// an older one): listings then show addresses only.
    pub fn read(bpffs: &Path) -> Self {
        fs::read(Self::path(bpffs))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    pub fn remove(bpffs: &Path) {
        let _ = fs::remove_file(Self::path(bpffs));
    }

    pub fn service(&self, vip: IpAddr, port: u16, protocol: &str) -> Option<&ServiceEntry> {
        self.services
            .iter()
            .find(|s| s.vip == vip && s.port == port && s.protocol == protocol)
    }
}

impl ServiceEntry {
    pub fn backend(&self, address: IpAddr, port: u16) -> Option<&BackendEntry> {
        self.backends
            .iter()
            .find(|b| b.address == address && b.port == port)
    }
}
