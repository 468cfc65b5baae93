//! What the agent knows that the maps do not: Kubernetes names, nodes and
//! weights. The agent writes it after every sync; the CLI reads it to label
//! what it finds in the pinned maps (and works without it, with addresses only).

use std::{
    collections::BTreeSet,
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer, Serialize};

use crate::{
    dataplane::Dataplane,
    health::{self, Target, Verdict, Verdicts},
    k8s::translate::HealthCheck,
    model::{Frontend, ServiceSpec},
    rundir,
};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Catalog {
    /// Sorted by frontend (as read, whatever the file's order), so that a
    /// listing of many flows finds each one's service by binary search.
    #[serde(deserialize_with = "sorted_by_frontend")]
    pub services: Vec<ServiceSpec>,
    /// The VIPs BIRD was told to announce (the maps say which are answered
    /// at layer 2). Missing in an older agent's catalog.
    #[serde(default)]
    pub bgp_announced: BTreeSet<IpAddr>,
    /// The backend slots each service holds, those it drains too (which no
    /// ring points at), by frontend: what listings count its traffic in.
    /// The maps alone cannot tell whose a slot no ring points at is.
    /// Missing in an older agent's catalog.
    #[serde(default, deserialize_with = "sorted_by_frontend")]
    pub slots: Vec<ServiceSlots>,
    /// The health checks' targets that are not healthy, which the next
    /// agent starts from. Missing in an older agent's catalog.
    #[serde(default)]
    pub health: Vec<(Target, Verdict)>,
    /// How each checked service's backends are checked: what tells the
    /// listings which target is a backend's. Missing in an older agent's
    /// catalog.
    #[serde(default, deserialize_with = "sorted_by_frontend")]
    pub checks: Vec<ServiceCheck>,
}

/// How the backends of one service are health checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCheck {
    pub frontend: Frontend,
    pub check: HealthCheck,
}

/// The backend slots of one service (`BACKENDS` ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSlots {
    pub frontend: Frontend,
    pub ids: Vec<u32>,
}

/// What the catalog's lists are sorted and found by.
trait ByFrontend {
    fn frontend(&self) -> Frontend;
}

impl ByFrontend for ServiceSpec {
    fn frontend(&self) -> Frontend {
        self.frontend
    }
}

impl ByFrontend for ServiceSlots {
    fn frontend(&self) -> Frontend {
        self.frontend
    }
}

impl ByFrontend for ServiceCheck {
    fn frontend(&self) -> Frontend {
        self.frontend
    }
}

/// The entry of `list` (sorted by frontend) for `frontend`.
fn find<'a, T: ByFrontend>(list: &'a [T], frontend: &Frontend) -> Option<&'a T> {
    let index = list.binary_search_by_key(frontend, T::frontend).ok()?;
    Some(&list[index])
}

/// The slots of each of `dataplane`'s services, sorted by frontend.
fn slots_of(dataplane: &Dataplane) -> Vec<ServiceSlots> {
    dataplane
        .services()
        .map(|service| ServiceSlots {
            frontend: service.spec.frontend,
            ids: service.backends.iter().map(|backend| backend.id).collect(),
        })
        .collect()
}

impl Catalog {
    pub fn of(dataplane: &Dataplane) -> Self {
        // The data path lists its services by frontend.
        let services = dataplane.services().map(|s| s.spec.clone()).collect();
        Self {
            services,
            bgp_announced: BTreeSet::new(),
            slots: slots_of(dataplane),
            health: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// The catalog file of the agent pinning under `bpffs`.
    pub fn path(bpffs: &Path) -> PathBuf {
        Path::new(rundir::RUN_ROOT).join(format!("{}.json", rundir::name(bpffs)))
    }

    /// Writes the catalog of what `dataplane` serves, with `bgp_announced`,
    /// the health `verdicts` and how services are `checks`ed, atomically: readers see the old or the new catalog, never half. The
    /// specs are serialized where they are, as compact JSON: a pretty-printed
    /// copy of 10,000 took about 20 ms of every sync, this takes 8.
    pub fn write_of(
        dataplane: &Dataplane,
        bgp_announced: &BTreeSet<IpAddr>,
        verdicts: &Verdicts,
        checks: &[ServiceCheck],
        bpffs: &Path,
    ) -> io::Result<()> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            services: Vec<&'a ServiceSpec>,
            bgp_announced: &'a BTreeSet<IpAddr>,
            slots: Vec<ServiceSlots>,
            health: Vec<(&'a Target, &'a Verdict)>,
            checks: &'a [ServiceCheck],
        }
        let catalog = Borrowed {
            services: dataplane.services().map(|s| &s.spec).collect(),
            bgp_announced,
            slots: slots_of(dataplane),
            health: verdicts.iter().collect(),
            checks,
        };
        let path = Self::path(bpffs);
        fs::create_dir_all(rundir::RUN_ROOT)?;
        let tmp = path.with_extension("json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec(&catalog).map_err(io::Error::other)?,
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

    pub fn service(&self, frontend: &Frontend) -> Option<&ServiceSpec> {
        find(&self.services, frontend)
    }

    /// The health verdict on the backend at (`ip`, `port`) of the service at
    /// `frontend`: `None` while it is healthy, or not checked, or the
    /// catalog does not say.
    pub fn verdict(&self, frontend: &Frontend, ip: IpAddr, port: u16) -> Option<Verdict> {
        let check = find(&self.checks, frontend)?.check;
        let target = health::target(check, ip, port);
        let index = self
            .health
            .binary_search_by_key(&target, |(t, _)| *t)
            .ok()?;
        Some(self.health[index].1)
    }

    /// The backend slots the service at `frontend` holds, if the catalog
    /// says.
    pub fn slots(&self, frontend: &Frontend) -> Option<&[u32]> {
        find(&self.slots, frontend).map(|slots| slots.ids.as_slice())
    }
}

fn sorted_by_frontend<'de, D: Deserializer<'de>, T: Deserialize<'de> + ByFrontend>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    let mut list = Vec::<T>::deserialize(deserializer)?;
    list.sort_by_key(T::frontend);
    Ok(list)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::model::{BackendSpec, Protocol};

    #[test]
    fn the_catalog_reads_back_the_model_it_was_written_from() {
        let frontend = Frontend {
            vip: "2001:db8::1".parse().unwrap(),
            port: 53,
            protocol: Protocol::Udp,
        };
        let backend = BackendSpec {
            node: "node-1".into(),
            ip: "2001:db8:1::11".parse().unwrap(),
            port: 31053,
            weight: 2,
        };
        let catalog = Catalog {
            services: vec![ServiceSpec {
                name: "demo/dns:dns".into(),
                frontend,
                backends: vec![backend.clone()],
            }],
            bgp_announced: BTreeSet::from([frontend.vip]),
            slots: vec![ServiceSlots {
                frontend,
                ids: vec![7],
            }],
            health: vec![(
                Target {
                    addr: SocketAddr::new(backend.ip, backend.port),
                    http: false,
                },
                Verdict::Dead,
            )],
            checks: vec![ServiceCheck {
                frontend,
                check: HealthCheck::NodePort,
            }],
        };
        let text = serde_json::to_vec(&catalog).unwrap();
        let read: Catalog = serde_json::from_slice(&text).unwrap();
        let service = read.service(&frontend).expect("the service");
        assert_eq!(service, &catalog.services[0]);
        assert_eq!(read.bgp_announced, catalog.bgp_announced);
        assert_eq!(read.slots(&frontend), Some(&[7][..]));
        assert_eq!(read.health, catalog.health);
        assert_eq!(
            read.verdict(&frontend, backend.ip, backend.port),
            Some(Verdict::Dead)
        );
        assert_eq!(read.verdict(&frontend, backend.ip, 31054), None);
        assert_eq!(service.backend(backend.ip, backend.port), Some(&backend));
        let tcp = Frontend {
            protocol: Protocol::Tcp,
            ..frontend
        };
        assert_eq!(read.service(&tcp), None);
    }

    #[test]
    fn services_are_found_whatever_order_the_file_lists_them_in() {
        let frontends: Vec<Frontend> = (1..=20u8)
            .rev()
            .map(|last| Frontend {
                vip: IpAddr::from([198, 51, 100, last]),
                port: 80,
                protocol: Protocol::Tcp,
            })
            .collect();
        let services = frontends.iter().map(|&frontend| ServiceSpec {
            name: format!("demo/web-{}:http", frontend.vip),
            frontend,
            backends: Vec::new(),
        });
        let written = Catalog {
            services: services.collect(),
            bgp_announced: BTreeSet::new(),
            slots: Vec::new(),
            health: Vec::new(),
            checks: Vec::new(),
        };
        let read: Catalog = serde_json::from_slice(&serde_json::to_vec(&written).unwrap()).unwrap();
        for frontend in &frontends {
            let found = read.service(frontend).map(|s| s.frontend);
            assert_eq!(found, Some(*frontend));
        }
    }
}
