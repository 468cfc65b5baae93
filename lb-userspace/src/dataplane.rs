//! The data path's domain API: load and attach the XDP program, then add, update
//! and remove services. Front ends (the agent, tests, benchmarks) only talk to this.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{DevMapHash, PerCpuValues, xdp::XdpMapError},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
    util::nr_cpus,
};
use lb_common::{
    BACKEND_ACTIVE, Backend, Iface, MAP_MAGLEV, MAP_NODE_PORTS, MAP_TX_PORTS, MAX_BACKENDS,
    MAX_FLOWS, MAX_SERVICES, PROGRAM_NAME, SETTING_ANSWER_ECHO, SETTING_ANSWER_NEIGHBORS,
    SETTING_DSR, ServiceInfo, ServiceKey, Settings, Traffic,
};

use crate::{
    maglev::{self, MaglevBackend},
    maps::{ALL_MAPS, Maps, MapsError, map_error},
    model::{BackendSpec, Frontend, Protocol, ServiceSpec},
    pins::{PinDir, PinsError},
};

/// The XDP object built by `build.rs`.
pub static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// Default new flows each CPU records per second before it forwards the rest
/// statelessly: far above what one CPU's share of real clients opens, far
/// below what a SYN flood sends.
pub const DEFAULT_NEW_FLOW_LIMIT: u32 = 100_000;

/// The smallest flow table: per-CPU LRU lists need a few entries per CPU.
pub const MIN_FLOWS: u32 = 1024;

/// Default number of services the Maglev map has room for.
pub const DEFAULT_MAX_SERVICES: u32 = 256;

#[derive(thiserror::Error, Debug)]
pub enum DataplaneError {
    #[error("loading the XDP program: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP program: {0}")]
    Program(#[source] ProgramError),
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("attaching XDP to {iface}: {source}")]
    Attach {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("maglev: {0}")]
    Maglev(#[from] maglev::MaglevError),
    #[error("ring size {0} must be a prime")]
    RingSize(u32),
    #[error("max services {0} must be between 1 and {MAX_SERVICES}")]
    MaxServices(u32),
    #[error("max flows {0} must be at least {MIN_FLOWS}")]
    MaxFlows(u32),
    #[error(
        "ring size {ring_size} x max services {max_services} x 2 slots exceeds the u32 index space"
    )]
    TooLarge { ring_size: u32, max_services: u32 },
    #[error("no room for another service (max services {0})")]
    ServicesFull(u32),
    #[error("no room for another backend ({MAX_BACKENDS} in use)")]
    BackendsFull,
    #[error(transparent)]
    Pins(#[from] PinsError),
    #[error("pinning the link of {iface} at {}: {source}", path.display())]
    PinLink {
        iface: String,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("the XDP link of {iface}: {source}")]
    Link {
        iface: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("reusing the pinned link {}: {source}", path.display())]
    ReuseLink {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the pinned state has {pinned} Maglev entries, this agent needs {wanted} \
         (--ring-size {ring_size} x --max-services {max_services} x 2): restart with the \
         settings the state was created with, or run `lb down` first (flows are lost)"
    )]
    ConfigMismatch {
        pinned: u32,
        wanted: u32,
        ring_size: u32,
        max_services: u32,
    },
    #[error("counting CPUs: {0}")]
    Cpus(#[source] std::io::Error),
}

/// Sizing and placement of the data path.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Maglev table size M (a prime). Each service uses `2 * M * 4` bytes: two
    /// slots of 4-byte backend ids, so updates swap whole tables.
    pub ring_size: u32,
    pub max_services: u32,
    /// bpffs directory to pin maps and links under: state then outlives the
    /// agent and the CLI can read it. `None` keeps everything private.
    pub pin_dir: Option<PathBuf>,
    /// Answer ICMP echo requests to VIPs (otherwise they pass to the kernel).
    pub answer_ping: bool,
    /// `Settings::new_flow_limit`: flow inserts per CPU per second, 0 for none.
    pub new_flow_limit: u32,
    /// Entries of the flow table (LRU, split between the CPUs).
    pub max_flows: u32,
    /// Answer ARP requests and Neighbor Solicitations for VIPs (`--announce arp`).
    pub answer_neighbors: bool,
    /// How packets reach the chosen node.
    pub forwarding: Forwarding,
}

/// How the data path hands a packet to the node Maglev chose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// DNAT to (node IP, NodePort); replies come back through an lb host,
    /// which reverse-NATs them.
    #[default]
    Nat,
    /// Direct server return: the packet keeps its destination (VIP, port) and
    /// gets the node's MAC; the node's kube-proxy takes it and answers the
    /// client itself. Nodes must be on a segment lb is attached to.
    Dsr,
}

impl DataplaneConfig {
    /// The data path's run-time switches for this configuration.
    fn settings(&self) -> Settings {
        let flag = |on: bool, flag: u32| if on { flag } else { 0 };
        Settings {
            flags: flag(self.answer_ping, SETTING_ANSWER_ECHO)
                | flag(self.answer_neighbors, SETTING_ANSWER_NEIGHBORS)
                | flag(self.forwarding == Forwarding::Dsr, SETTING_DSR),
            new_flow_limit: self.new_flow_limit,
        }
    }
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            ring_size: maglev::DEFAULT_RING_SIZE,
            max_services: DEFAULT_MAX_SERVICES,
            pin_dir: None,
            answer_ping: false,
            new_flow_limit: DEFAULT_NEW_FLOW_LIMIT,
            max_flows: MAX_FLOWS,
            answer_neighbors: false,
            forwarding: Forwarding::Nat,
        }
    }
}

/// A backend as programmed: its spec and its slot in `BACKENDS`.
#[derive(Clone, Debug)]
pub struct ProgrammedBackend {
    pub spec: BackendSpec,
    pub id: u32,
    /// Entries of the live Maglev ring that point at it.
    pub ring_entries: u32,
}

/// A service as programmed.
#[derive(Clone, Debug)]
pub struct ProgrammedService {
    pub spec: ServiceSpec,
    pub id: u32,
    /// Which of the service's two ring slots is live.
    pub slot: u32,
    pub backends: Vec<ProgrammedBackend>,
}

/// The loaded, attached program and what it currently serves.
pub struct Dataplane {
    ebpf: Ebpf,
    maps: Maps,
    pins: Option<PinDir>,
    /// The pinned state existed before this load (an earlier agent's).
    inherited: bool,
    config: DataplaneConfig,
    services: BTreeMap<Frontend, ProgrammedService>,
    free_service_ids: Vec<u32>,
    free_backend_ids: Vec<u32>,
    nr_cpus: usize,
}

impl Dataplane {
    /// Loads the program (not yet attached) with empty maps.
    pub fn load(config: DataplaneConfig) -> Result<Self, DataplaneError> {
        if !maglev::is_prime(config.ring_size) {
            return Err(DataplaneError::RingSize(config.ring_size));
        }
        if config.max_services == 0 || config.max_services > MAX_SERVICES {
            return Err(DataplaneError::MaxServices(config.max_services));
        }
        if config.max_flows < MIN_FLOWS {
            return Err(DataplaneError::MaxFlows(config.max_flows));
        }
        let ring_entries = u64::from(config.ring_size) * u64::from(config.max_services) * 2;
        let ring_entries = u32::try_from(ring_entries).map_err(|_| DataplaneError::TooLarge {
            ring_size: config.ring_size,
            max_services: config.max_services,
        })?;
        let pins = config.pin_dir.as_ref().map(PinDir::new);
        let inherited = pins.as_ref().is_some_and(PinDir::exists);
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_MAGLEV, ring_entries);
        loader.map_max_entries(lb_common::MAP_FLOWS, config.max_flows);
        if let Some(pins) = &pins {
            pins.prepare()?;
            // Existing pins are reused: flows, rings and counters carry over.
            for name in ALL_MAPS {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut ebpf = match loader.load(PROGRAM_OBJECT) {
            Ok(ebpf) => ebpf,
            Err(e) => {
                // Leave no empty pin directory behind a failed first start.
                if let Some(pins) = pins.as_ref().filter(|_| !inherited) {
                    let _ = pins.remove();
                }
                return Err(DataplaneError::Load(e));
            }
        };
        let program = xdp_program(&mut ebpf)?;
        program.load().map_err(DataplaneError::Program)?;
        let maps = Maps::take(&mut ebpf)?;
        // A reused pin keeps the size it was created with.
        let pinned = maps.maglev.len();
        if pinned != ring_entries {
            return Err(DataplaneError::ConfigMismatch {
                pinned,
                wanted: ring_entries,
                ring_size: config.ring_size,
                max_services: config.max_services,
            });
        }
        let nr_cpus = nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        let mut dataplane = Self {
            ebpf,
            maps,
            pins,
            inherited,
            free_service_ids: Vec::new(),
            free_backend_ids: Vec::new(),
            config,
            services: BTreeMap::new(),
            nr_cpus,
        };
        dataplane.recover()?;
        let settings = dataplane.config.settings();
        dataplane
            .maps
            .settings
            .set(0, settings, 0)
            .map_err(|e| map_error(lb_common::MAP_SETTINGS, e))?;
        Ok(dataplane)
    }

    /// Rebuilds what is programmed from the maps (empty unless pinned state was
    /// reused). Names and weights are not in the maps: the first reconcile
    /// rewrites every service, keeping each backend's id, so flows stay put.
    fn recover(&mut self) -> Result<(), DataplaneError> {
        let entries: Vec<(ServiceKey, ServiceInfo)> = self
            .maps
            .services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| map_error(lb_common::MAP_SERVICES, e))?;
        let ring_size = self.config.ring_size;
        let mut used_backends = std::collections::BTreeSet::new();
        for (key, info) in entries {
            let Some(protocol) = Protocol::from_number(key.proto) else {
                continue;
            };
            let frontend = Frontend {
                vip: lb_common::ip_of(key.vip),
                port: u16::from_be(key.port),
                protocol,
            };
            // A ring of another size cannot be walked with this map's layout.
            let entries = if info.ring_size == ring_size {
                self.maps.ring_entries(&info)?
            } else {
                BTreeMap::new()
            };
            let mut backends = Vec::new();
            for (id, ring_entries) in entries {
                let backend = self
                    .maps
                    .backends
                    .get(&id, 0)
                    .map_err(|e| map_error(lb_common::MAP_BACKENDS, e))?;
                if backend.flags & BACKEND_ACTIVE == 0 {
                    continue;
                }
                used_backends.insert(id);
                backends.push(ProgrammedBackend {
                    spec: BackendSpec {
                        node: String::new(),
                        ip: lb_common::ip_of(backend.ip),
                        port: u16::from_be(backend.port),
                        weight: 0,
                    },
                    id,
                    ring_entries,
                });
            }
            let spec = ServiceSpec {
                name: String::new(),
                frontend,
                backends: backends.iter().map(|b| b.spec.clone()).collect(),
            };
            self.services.insert(
                frontend,
                ProgrammedService {
                    spec,
                    id: info.id,
                    slot: (info.ring_base / ring_size.max(1)) % 2,
                    backends,
                },
            );
        }
        let used_services: std::collections::BTreeSet<u32> =
            self.services.values().map(|s| s.id).collect();
        self.free_service_ids = (0..self.config.max_services)
            .rev()
            .filter(|id| !used_services.contains(id))
            .collect();
        self.free_backend_ids = Vec::new();
        for id in (0..MAX_BACKENDS).rev() {
            if used_backends.contains(&id) {
                continue;
            }
            // An active slot no ring points at (a draining backend of the last
            // agent) cannot be attributed any more: retire it, its flows re-hash.
            let backend = self
                .maps
                .backends
                .get(&id, 0)
                .map_err(|e| map_error(lb_common::MAP_BACKENDS, e))?;
            if backend.flags & BACKEND_ACTIVE != 0 {
                self.retire_slot(id)?;
            } else {
                self.free_backend_ids.push(id);
            }
        }
        self.forget_stale_node_ports()
    }

    /// Drops the `NODE_PORTS` entries of backends no recovered service has.
    fn forget_stale_node_ports(&mut self) -> Result<(), DataplaneError> {
        let live: std::collections::HashSet<(ServiceKey, ServiceKey)> = self
            .services
            .values()
            .flat_map(|service| {
                let frontend = service.spec.frontend;
                service.backends.iter().map(move |b| {
                    (
                        node_port_key(&b.spec, frontend.protocol),
                        service_key(&frontend),
                    )
                })
            })
            .collect();
        let stale: Vec<ServiceKey> = self
            .maps
            .node_ports
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_error(MAP_NODE_PORTS, e))?
            .into_iter()
            .filter(|entry| !live.contains(entry))
            .map(|(node_port, _)| node_port)
            .collect();
        for node_port in stale {
            self.maps
                .node_ports
                .remove(&node_port)
                .map_err(|e| map_error(MAP_NODE_PORTS, e))?;
        }
        Ok(())
    }

    /// Attaches the program to `iface` and lets packets be redirected out of it.
    /// With pinned state the link is pinned too, so the program stays attached
    /// when the agent exits; a link pinned by an earlier agent is taken over
    /// with an atomic program replacement, without a gap.
    pub fn attach(&mut self, iface: &str) -> Result<u32, DataplaneError> {
        let no_such_interface = |_| DataplaneError::NoSuchInterface(iface.to_owned());
        let ifindex = crate::iface::ifindex(iface).map_err(no_such_interface)?;
        let mac = crate::iface::mac(iface).map_err(no_such_interface)?;
        let link_path = self.pins.as_ref().map(|pins| pins.link(iface));
        let program = xdp_program(&mut self.ebpf)?;
        let attach_error = |source| DataplaneError::Attach {
            iface: iface.to_owned(),
            source,
        };
        match &link_path {
            Some(path) if path.exists() => {
                let reuse_error =
                    |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::ReuseLink {
                        path: path.clone(),
                        source,
                    };
                let pinned = PinnedLink::from_pin(path).map_err(|e| reuse_error(e.into()))?;
                let link =
                    XdpLink::try_from(FdLink::from(pinned)).map_err(|e| reuse_error(e.into()))?;
                program.attach_to_link(link).map_err(attach_error)?;
            }
            Some(path) => {
                let id = program
                    .attach(iface, XdpMode::Default)
                    .map_err(attach_error)?;
                let link = program.take_link(id).map_err(attach_error)?;
                let link = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
                    iface: iface.to_owned(),
                    source,
                })?;
                link.pin(path).map_err(|source| DataplaneError::PinLink {
                    iface: iface.to_owned(),
                    path: path.clone(),
                    source,
                })?;
            }
            None => {
                program
                    .attach(iface, XdpMode::Default)
                    .map_err(attach_error)?;
            }
        }
        self.add_tx_port(ifindex)?;
        self.add_iface(ifindex, mac)?;
        Ok(ifindex)
    }

    /// Tells the program the MAC of interface `ifindex`, which it answers ARP
    /// and Neighbor Solicitations for VIPs with (done by `attach`; tests that
    /// run the program without attaching it call this directly).
    pub fn add_iface(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<(), DataplaneError> {
        self.maps
            .ifaces
            .insert(ifindex, Iface { mac, _pad: [0; 2] }, 0)
            .map_err(|e| map_error(lb_common::MAP_IFACES, e))?;
        Ok(())
    }

    /// Lets the program redirect to `ifindex` (done by `attach`; tests that run
    /// the program without attaching it call this directly).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut(MAP_TX_PORTS)
            .ok_or(MapsError::Missing(MAP_TX_PORTS))?;
        let mut tx_ports = DevMapHash::try_from(map).map_err(|e| map_error(MAP_TX_PORTS, e))?;
        tx_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| match e {
                XdpMapError::MapError(e) => map_error(MAP_TX_PORTS, e),
                XdpMapError::ChainedProgramNotSupported => MapsError::Missing(MAP_TX_PORTS),
            })?;
        Ok(())
    }

    /// The loaded object, for attaching the log forwarder.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The loaded program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> Result<&Xdp, DataplaneError> {
        self.ebpf
            .program(PROGRAM_NAME)
            .ok_or(DataplaneError::Maps(MapsError::Missing("program lb_xdp")))?
            .try_into()
            .map_err(DataplaneError::Program)
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn services(&self) -> impl Iterator<Item = &ProgrammedService> {
        self.services.values()
    }

    pub fn service(&self, frontend: &Frontend) -> Option<&ProgrammedService> {
        self.services.get(frontend)
    }

    /// Adds a service or updates its backends. Live flows keep their backend
    /// unless it was removed; the new Maglev table replaces the old one at once.
    pub fn set_service(&mut self, spec: &ServiceSpec) -> Result<(), DataplaneError> {
        let mut service = match self.services.remove(&spec.frontend) {
            Some(service) => service,
            None => {
                let id = self
                    .free_service_ids
                    .pop()
                    .ok_or(DataplaneError::ServicesFull(self.config.max_services))?;
                self.reset_traffic(id, true)?;
                ProgrammedService {
                    spec: spec.clone(),
                    id,
                    slot: 1,
                    backends: Vec::new(),
                }
            }
        };
        let result = self.program_service(&mut service, spec);
        self.services.insert(spec.frontend, service);
        result?;
        self.maps
            .vips
            .insert(lb_common::addr_of(spec.frontend.vip), 0, 0)
            .map_err(|e| map_error(lb_common::MAP_VIPS, e))?;
        Ok(())
    }

    fn program_service(
        &mut self,
        service: &mut ProgrammedService,
        spec: &ServiceSpec,
    ) -> Result<(), DataplaneError> {
        let mut old: HashMap<(IpAddr, u16), ProgrammedBackend> = service
            .backends
            .iter()
            .map(|b| ((b.spec.ip, b.spec.port), b.clone()))
            .collect();
        let mut backends = Vec::with_capacity(spec.backends.len());
        for backend in &spec.backends {
            let id = match old.remove(&(backend.ip, backend.port)) {
                Some(existing) => existing.id,
                None => self.allocate_backend(backend)?,
            };
            backends.push(ProgrammedBackend {
                spec: backend.clone(),
                id,
                ring_entries: 0,
            });
        }
        let slot = 1 - service.slot;
        let ring_base = (service.id * 2 + slot) * self.config.ring_size;
        let weighted: Vec<(String, u32)> = backends
            .iter()
            .map(|b| (b.spec.node.clone(), b.spec.weight))
            .collect();
        let live = weighted.iter().any(|(_, w)| *w > 0);
        if live {
            let table = maglev::build_table(
                &weighted
                    .iter()
                    .map(|(name, weight)| MaglevBackend {
                        name,
                        weight: *weight,
                    })
                    .collect::<Vec<_>>(),
                self.config.ring_size,
            )?;
            for (offset, index) in (0u32..).zip(&table) {
                let backend = &mut backends[*index as usize];
                backend.ring_entries += 1;
                self.maps
                    .maglev
                    .set(ring_base + offset, backend.id, 0)
                    .map_err(|e| map_error(MAP_MAGLEV, e))?;
            }
        }
        let key = service_key(&spec.frontend);
        let info = ServiceInfo {
            id: service.id,
            ring_base,
            ring_size: self.config.ring_size,
            backend_count: if live { backends.len() as u32 } else { 0 },
        };
        for backend in &backends {
            self.maps
                .node_ports
                .insert(node_port_key(&backend.spec, spec.frontend.protocol), key, 0)
                .map_err(|e| map_error(MAP_NODE_PORTS, e))?;
        }
        // The swap: from here on new flows use the new ring.
        self.maps
            .services
            .insert(key, info, 0)
            .map_err(|e| map_error(lb_common::MAP_SERVICES, e))?;
        // Only now retire removed backends, so their flows re-hash onto the new ring.
        for removed in old.into_values() {
            self.free_backend(&removed, &spec.frontend)?;
        }
        service.slot = slot;
        service.spec = spec.clone();
        service.backends = backends;
        Ok(())
    }

    /// Stops serving a frontend; its flows are left to expire from the LRU.
    pub fn remove_service(&mut self, frontend: &Frontend) -> Result<(), DataplaneError> {
        let Some(service) = self.services.remove(frontend) else {
            return Ok(());
        };
        match self.maps.services.remove(&service_key(frontend)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_error(lb_common::MAP_SERVICES, e).into()),
        }
        for backend in &service.backends {
            self.free_backend(backend, frontend)?;
        }
        self.free_service_ids.push(service.id);
        if !self.services.keys().any(|f| f.vip == frontend.vip) {
            match self.maps.vips.remove(&lb_common::addr_of(frontend.vip)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error(lb_common::MAP_VIPS, e).into()),
            }
        }
        Ok(())
    }

    fn allocate_backend(&mut self, spec: &BackendSpec) -> Result<u32, DataplaneError> {
        let id = self
            .free_backend_ids
            .pop()
            .ok_or(DataplaneError::BackendsFull)?;
        self.reset_traffic(id, false)?;
        let backend = Backend {
            ip: lb_common::addr_of(spec.ip),
            port: spec.port.to_be(),
            flags: BACKEND_ACTIVE,
            _pad: 0,
        };
        self.maps
            .backends
            .set(id, backend, 0)
            .map_err(|e| map_error(lb_common::MAP_BACKENDS, e))?;
        Ok(id)
    }

    /// Frees a backend slot: flows pinned to it re-hash.
    fn retire_slot(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.maps
            .backends
            .set(id, Backend::default(), 0)
            .map_err(|e| map_error(lb_common::MAP_BACKENDS, e))?;
        self.free_backend_ids.push(id);
        Ok(())
    }

    /// Retires a backend of `frontend`: its slot, and its NodePort's way back
    /// to the frontend unless another service took that NodePort since.
    fn free_backend(
        &mut self,
        backend: &ProgrammedBackend,
        frontend: &Frontend,
    ) -> Result<(), DataplaneError> {
        self.retire_slot(backend.id)?;
        let node_port = node_port_key(&backend.spec, frontend.protocol);
        match self.maps.node_ports.get(&node_port, 0) {
            Ok(owner) if owner == service_key(frontend) => self
                .maps
                .node_ports
                .remove(&node_port)
                .map_err(|e| map_error(MAP_NODE_PORTS, e))?,
            Ok(_) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_error(MAP_NODE_PORTS, e).into()),
        }
        Ok(())
    }

    /// Zeroes a recycled slot's counters so a new owner starts from zero.
    fn reset_traffic(&mut self, id: u32, service: bool) -> Result<(), DataplaneError> {
        let zeros = PerCpuValues::try_from(vec![Traffic::default(); self.nr_cpus])
            .map_err(DataplaneError::Cpus)?;
        let (map, name) = if service {
            (&mut self.maps.service_stats, lb_common::MAP_SERVICE_STATS)
        } else {
            (&mut self.maps.backend_stats, lb_common::MAP_BACKEND_STATS)
        };
        map.set(id, zeros, 0).map_err(|e| map_error(name, e))?;
        Ok(())
    }

    /// Whether this load took over pinned state an earlier agent left.
    pub fn inherited_state(&self) -> bool {
        self.inherited
    }

    /// Removes the pinned maps and links: the program detaches from every
    /// interface once `self` drops. Without pins this does nothing.
    pub fn remove_pins(&self) -> Result<(), DataplaneError> {
        if let Some(pins) = &self.pins {
            pins.remove()?;
        }
        Ok(())
    }
}

/// The `lb_xdp` program of a loaded object.
fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or(DataplaneError::Maps(MapsError::Missing("program lb_xdp")))?
        .try_into()
        .map_err(DataplaneError::Program)
}

/// The map key of a frontend: network byte order, as packets carry it.
pub fn service_key(frontend: &Frontend) -> ServiceKey {
    ServiceKey::new(
        lb_common::addr_of(frontend.vip),
        frontend.port.to_be(),
        frontend.protocol.number(),
    )
}

/// The `NODE_PORTS` key of a backend: where its replies come from.
fn node_port_key(backend: &BackendSpec, protocol: Protocol) -> ServiceKey {
    service_key(&Frontend {
        vip: backend.ip,
        port: backend.port,
        protocol,
    })
}

/// Reference XDP programs: `ref_xdp_tx` and `ref_parse_only`, which benchmarks
/// measure lb against in the same run, and `ref_pass` for test beds' veth peers.
pub static REFERENCE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/references"));

/// Attribution programs for the benchmark: one FIB lookup, one clock read,
/// one LRU insert, one hash lookup each (see `lb-ebpf/src/attribution.rs`).
pub static ATTRIBUTION_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/attribution"));
