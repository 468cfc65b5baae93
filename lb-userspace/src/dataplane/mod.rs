//! The data path's domain API: load and attach the XDP program, then add, update
//! and remove services. Front ends (the agent, tests, benchmarks) only talk to this.

mod clock;
mod config;
mod egress;
mod error;
mod filter;
mod global_data;
mod ifaces_by_index;
mod links;
mod neighbors;
mod node_ports;
mod objects;
mod programs;
mod recover;
mod services;
mod traffic;
mod upgrade;

pub use config::{
    DEFAULT_MAX_SERVICES, DEFAULT_NEW_FLOW_LIMIT, DataplaneConfig, Forwarding, MIN_FLOWS,
};
pub use error::DataplaneError;
pub use objects::{ATTRIBUTION_OBJECT, PROGRAM_OBJECT, REFERENCE_OBJECT};
pub use services::service_key;

use std::{collections::BTreeMap, net::IpAddr};

use aya::{Ebpf, EbpfLoader, programs::Xdp, util::nr_cpus};
use global_data::GlobalData;
use lb_common::{
    LEGACY_SETTING_ANSWER_NEIGHBORS, MAP_MAGLEV, MAP_SETTINGS, MAX_BACKENDS, NeighborMask,
    PROGRAM_NAME, SIDE_PATH_PROGRAMS,
};

use crate::{
    maps::{
        ALL_MAPS, FORMERLY_PINNED, MappedArray, Maps, RETIRED_AFTER_ATTACH, former_counters,
        pinned_settings,
    },
    model::{BackendSpec, Frontend, ServiceSpec},
    pins::PinDir,
};

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
    /// `MAGLEV`'s memory, which the rings are written into; `None` for a
    /// map an older agent pinned without `BPF_F_MMAPABLE`, written with
    /// system calls instead.
    maglev_memory: Option<MappedArray<u32>>,
    key_filter: filter::KeyFilterBits,
    node_ports: node_ports::NodePortFrontends,
    ifaces_by_index: ifaces_by_index::IfacesByIndex,
    egress: egress::EgressPorts,
    clock: clock::Clock,
    pins: Option<PinDir>,
    /// The pinned state existed before this load (an earlier agent's).
    inherited: bool,
    config: DataplaneConfig,
    services: BTreeMap<Frontend, ProgrammedService>,
    free_service_ids: Vec<u32>,
    free_backend_ids: Vec<u32>,
    /// Each backend slot's `Backend::generation`, by id.
    backend_generations: Vec<u8>,
    /// Which backend slots and service ids need their counters zeroed
    /// when handed out.
    counted_backends: traffic::MaybeCounted,
    counted_services: traffic::MaybeCounted,
    nr_cpus: usize,
    /// Each added interface's bit in the VIPs' neighbor masks, by ifindex.
    iface_slots: BTreeMap<u32, u8>,
    /// What each VIP's `VIPS` entry says (absent: 0, answered nowhere).
    neighbor_masks: BTreeMap<IpAddr, NeighborMask>,
}

impl Dataplane {
    /// Loads the program (not yet attached) with empty maps.
    pub fn load(config: DataplaneConfig) -> Result<Self, DataplaneError> {
        let ring_entries = config.ring_entries()?;
        let pins = config.pin_dir.as_ref().map(PinDir::new);
        let mut inherited = pins.as_ref().is_some_and(PinDir::exists);
        let mut upgrading = false;
        let mut legacy_neighbors = false;
        if let Some(pins) = &pins {
            // Upgraded before anything is created: refused, it leaves all as it was.
            pins.check_known_layouts()?;
            upgrading = upgrade::move_kept_pins(pins, &config)?;
            inherited |= upgrading;
            config.check_pinned_ring(&pins.map(MAP_MAGLEV))?;
            pins.create_state_dir()?;
        }
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_MAGLEV, ring_entries);
        for flows in crate::maps::FLOWS {
            loader.map_max_entries(flows, config.max_flows);
        }
        if let Some(pins) = &pins {
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
        programs::load(&mut ebpf)?;
        let clock = clock::Clock::set(&mut ebpf)?;
        // Written once: a load's settings hold for its program's life.
        GlobalData::take(&mut ebpf, MAP_SETTINGS, config.settings())?.write()?;
        let mut maps = Maps::take(&mut ebpf)?;
        let key_filter = filter::KeyFilterBits::take(&mut ebpf)?;
        let node_ports = node_ports::NodePortFrontends::take(&mut ebpf)?;
        let ifaces_by_index = ifaces_by_index::IfacesByIndex::take(&mut ebpf, &maps.ifaces)?;
        let mut egress = egress::EgressPorts::take(&mut ebpf)?;
        let maglev_memory = MappedArray::new(&maps.maglev)
            .inspect_err(|e| {
                tracing::info!(
                    error = %e,
                    "the pinned Maglev map cannot be mapped (an older agent created it): \
                     its rings are written with system calls"
                );
            })
            .ok();
        if let Some(pins) = &pins {
            if upgrading {
                upgrade::copy_split_maps(pins, &mut maps)?;
            }
            egress.adopt_former(pins)?;
            legacy_neighbors = pinned_settings(pins)?
                .is_some_and(|settings| settings.flags & LEGACY_SETTING_ANSWER_NEIGHBORS != 0);
            // Only once this load has succeeded: the program they were
            // pinned for holds them, not their pins.
            pins.remove_maps(&FORMERLY_PINNED)?;
        }
        let nr_cpus = nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        let mut dataplane = Self {
            ebpf,
            maps,
            maglev_memory,
            key_filter,
            node_ports,
            ifaces_by_index,
            egress,
            clock,
            pins,
            inherited,
            free_service_ids: Vec::new(),
            free_backend_ids: Vec::new(),
            backend_generations: vec![0; MAX_BACKENDS as usize],
            counted_backends: traffic::MaybeCounted::new(MAX_BACKENDS as usize, inherited),
            counted_services: traffic::MaybeCounted::new(config.max_services as usize, inherited),
            config,
            services: BTreeMap::new(),
            nr_cpus,
            iface_slots: BTreeMap::new(),
            neighbor_masks: BTreeMap::new(),
        };
        dataplane.recover()?;
        dataplane.retired_from_service_stats()?;
        dataplane.recover_neighbor_masks(legacy_neighbors)?;
        programs::set_side_paths(&mut dataplane.ebpf)?;
        Ok(dataplane)
    }

    /// The loaded object, for attaching the log forwarder.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The loaded program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> Result<&Xdp, DataplaneError> {
        self.xdp(PROGRAM_NAME)
    }

    /// How many instructions the verifier processed for the entry point and
    /// each side path (`lb_common::SIDE_PATH_PROGRAMS`), by name: every
    /// path a program may take is explored before it loads, so this is what
    /// each change to the data path spends of the verifier's budget, and
    /// what the agent's start waits for.
    pub fn verified_instructions(&self) -> Result<Vec<(&'static str, u32)>, DataplaneError> {
        std::iter::once(PROGRAM_NAME)
            .chain(SIDE_PATH_PROGRAMS)
            .map(|name| {
                let info = self.xdp(name)?.info().map_err(DataplaneError::Program)?;
                let count = info
                    .verified_instruction_count()
                    .ok_or(DataplaneError::NoVerifiedCount(name))?;
                Ok((name, count))
            })
            .collect()
    }

    fn xdp(&self, name: &'static str) -> Result<&Xdp, DataplaneError> {
        self.ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(DataplaneError::Program)
    }

    /// The data path's clock, as this load set it (`lb_common::DataPathClock`).
    pub fn clock(&self) -> Result<lb_common::DataPathClock, DataplaneError> {
        self.clock.read()
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

    /// Once this load's program is attached on every interface: carries the
    /// counts of an earlier agent's counters into this load's and unpins
    /// them, that agent's side-path array and its egress ports
    /// ([`RETIRED_AFTER_ATTACH`]), which its program, serving until then,
    /// used. Unpinned before the counts are added (the map stays open): a
    /// carry that stops half way loses counts rather than counting them
    /// twice.
    pub fn retire_former_pins(&mut self) -> Result<(), DataplaneError> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        let former = former_counters(pins)?;
        pins.remove_maps(&RETIRED_AFTER_ATTACH)?;
        if let Some(former) = former {
            self.maps.add_counts(&former)?;
        }
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
