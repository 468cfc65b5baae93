//! Typed handles on the data path's maps, opened from a freshly loaded program or
//! from the pins of a running one (the CLI reads the same maps the agent writes).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

mod batch;
mod by_family;
mod flow_caches;
mod mapped;

use batch::get_range;
pub use batch::set_range;
pub use by_family::FamilyMaps;
pub use flow_caches::FlowCaches;
pub use mapped::MappedArray;

use crate::pins::{PinDir, PinsError};

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
};
use lb_common::{
    Addr, Backend, Flow, FlowKey, Iface, MAP_BACKEND_STATS, MAP_BACKENDS, MAP_COUNTERS,
    MAP_EGRESS_PORTS, MAP_EGRESS_SLOTS, MAP_FIB_PARAMS, MAP_FLOW_BUDGET, MAP_FLOW_CACHE4,
    MAP_FLOW_CACHE6, MAP_FLOWS4, MAP_FLOWS6, MAP_IFACES, MAP_MAGLEV, MAP_NODE_PORTS4,
    MAP_NODE_PORTS6, MAP_RETIRED_TRAFFIC, MAP_SERVICES4, MAP_SERVICES6, MAP_SIDE_PATHS, MAP_VIPS,
    NeighborMask, ServiceInfo, ServiceKey, Settings, Traffic, counters,
};

/// The per-family pairs, IPv4 first.
pub const SERVICES: [&str; 2] = [MAP_SERVICES4, MAP_SERVICES6];
pub const FLOWS: [&str; 2] = [MAP_FLOWS4, MAP_FLOWS6];

/// The maps that are pinned (the program's others are derived from these or
/// caches nothing reads, and start afresh at every load); the order is the
/// pin order.
pub const ALL_MAPS: [&str; 18] = [
    MAP_SERVICES4,
    MAP_SERVICES6,
    MAP_BACKENDS,
    MAP_MAGLEV,
    MAP_FLOWS4,
    MAP_FLOWS6,
    MAP_FLOW_CACHE4,
    MAP_FLOW_CACHE6,
    MAP_IFACES,
    MAP_RETIRED_TRAFFIC,
    MAP_BACKEND_STATS,
    MAP_COUNTERS,
    MAP_EGRESS_PORTS,
    MAP_EGRESS_SLOTS,
    MAP_VIPS,
    MAP_FLOW_BUDGET,
    MAP_SIDE_PATHS,
    MAP_FIB_PARAMS,
];

/// Maps an earlier agent of this layout pinned that are no longer pinned:
/// `NODE_PORTS4` and `NODE_PORTS6` were hash maps by (node IP, NodePort,
/// protocol) and are now arrays derived at every load; the settings were a
/// one-entry array ([`PINNED_SETTINGS`]) and are now global data set at
/// every load. A load removes them.
pub const FORMERLY_PINNED: [&str; 3] = [MAP_NODE_PORTS4, MAP_NODE_PORTS6, PINNED_SETTINGS];

/// Maps an earlier agent of this layout pinned under other names, with a
/// slot for each counter ([`FORMER_COUNTERS`]) or side path
/// ([`FORMER_SIDE_PATHS`]) it knew, too few for this one's, and its
/// egress ports as a devmap hash ([`FORMER_TX_PORTS`]). The program that
/// agent left counts, tail-calls and redirects through them until this
/// load's is attached; then the counts are carried and all are unpinned
/// (`Dataplane::retire_former_pins`).
pub const RETIRED_AFTER_ATTACH: [&str; 3] = [FORMER_COUNTERS, FORMER_SIDE_PATHS, FORMER_TX_PORTS];

/// The egress ports as earlier agents pinned them: a devmap hash by
/// ifindex, where `EGRESS_PORTS` is an array by slot.
pub const FORMER_TX_PORTS: &str = "TX_PORTS";

/// The side paths' program array as earlier agents pinned it.
pub const FORMER_SIDE_PATHS: &str = "SIDE_PATHS";

/// The counters as earlier agents pinned them.
pub const FORMER_COUNTERS: &str = "GLOBAL_STATS";

/// The array in which earlier agents pinned `lb_common::Settings`: read
/// once, for `LEGACY_SETTING_ANSWER_NEIGHBORS`, by the load that removes it.
pub const PINNED_SETTINGS: &str = "SETTINGS";

/// The per-CPU map in which an earlier agent's program counted each
/// service's packets, where now its backends' counts add up to them: a load
/// derives `RETIRED_TRAFFIC` from it, then removes it.
pub const SERVICE_STATS: &str = "SERVICE_STATS";

/// Where a service's traffic is kept beside its backends' `BACKEND_STATS`.
pub enum ServiceTraffic {
    /// What its retired backends counted (`RETIRED_TRAFFIC`): its traffic is
    /// that plus what its backends count.
    Retired(Array<MapData, Traffic>),
    /// An earlier agent's `SERVICE_STATS`, whose program counted each
    /// service whole, as the CLI finds it before this agent's first load.
    Whole(PerCpuArray<MapData, Traffic>),
}

#[derive(thiserror::Error, Debug)]
pub enum MapsError {
    #[error("the program has no map {0}")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "nothing is loaded at {}: no pinned map {name} (is the agent running, and is this the --bpffs directory it uses?)",
        dir.display()
    )]
    NotPinned { dir: PathBuf, name: &'static str },
    #[error("permission denied opening {}: run as root (CAP_BPF)", path.display())]
    Permission { path: PathBuf },
    #[error("map {name}: a key and its value must be of one address family")]
    MixedFamilies { name: &'static str },
    #[error(transparent)]
    Layout(#[from] PinsError),
    #[error("counting CPUs: {0}")]
    Cpus(#[source] std::io::Error),
}

/// Where a new flow lands: its hash, its slot in the service's ring, and the
/// backend that slot holds.
#[derive(Clone, Copy, Debug)]
pub struct MaglevChoice {
    pub hash: u32,
    /// Slot within the ring (not counting the ring's base).
    pub slot: u32,
    pub ring_size: u32,
    pub backend_id: u32,
    pub backend: Backend,
}

/// The maps userspace reads and writes.
pub struct Maps {
    pub services: FamilyMaps<ServiceKey, ServiceInfo>,
    pub backends: Array<MapData, Backend>,
    pub maglev: Array<MapData, u32>,
    pub flows: FamilyMaps<FlowKey, Flow>,
    /// The data path's copies of flow entries, whose counts readers add;
    /// `None` from an agent that pinned none.
    pub flow_caches: Option<FlowCaches>,
    pub service_traffic: ServiceTraffic,
    pub backend_stats: PerCpuArray<MapData, Traffic>,
    pub global_stats: PerCpuArray<MapData, u64>,
    /// Every VIP, with the interfaces ARP and NDP for it are answered on.
    pub vips: HashMap<MapData, Addr, NeighborMask>,
    /// The attached interfaces, by ifindex.
    pub ifaces: HashMap<MapData, u32, Iface>,
}

fn typed<T>(name: &'static str, map: Map) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(|source| MapsError::Map { name, source })
}

/// Takes the map `name` out of a loaded program, typed as `T`.
pub(crate) fn take_typed<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    typed(name, ebpf.take_map(name).ok_or(MapsError::Missing(name))?)
}

impl Maps {
    /// Takes the maps out of a loaded program; `ebpf` keeps the rest (the
    /// scratch space and the next-hop caches, which userspace does not read;
    /// the derived maps and the egress ports are taken by their writers).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(MapsError::Missing(name));
        let services = FamilyMaps::new(SERVICES, [take(SERVICES[0])?, take(SERVICES[1])?])?;
        let flows = FamilyMaps::new(FLOWS, [take(FLOWS[0])?, take(FLOWS[1])?])?;
        Ok(Self {
            services,
            backends: take_typed(ebpf, MAP_BACKENDS)?,
            maglev: take_typed(ebpf, MAP_MAGLEV)?,
            flows,
            flow_caches: Some(FlowCaches {
                v4: take_typed(ebpf, MAP_FLOW_CACHE4)?,
                v6: take_typed(ebpf, MAP_FLOW_CACHE6)?,
            }),
            service_traffic: ServiceTraffic::Retired(take_typed(ebpf, MAP_RETIRED_TRAFFIC)?),
            backend_stats: take_typed(ebpf, MAP_BACKEND_STATS)?,
            global_stats: take_typed(ebpf, MAP_COUNTERS)?,
            vips: take_typed(ebpf, MAP_VIPS)?,
            ifaces: take_typed(ebpf, MAP_IFACES)?,
        })
    }

    /// Opens the maps an agent pinned under the `--bpffs` root `root`.
    pub fn open_pinned(root: &Path) -> Result<Self, MapsError> {
        let pins = PinDir::new(root);
        pins.check_layout()?;
        let dir = &pins;
        let pair = |names: [&'static str; 2]| -> Result<[Map; 2], MapsError> {
            Ok([open_pin(dir, names[0])?, open_pin(dir, names[1])?])
        };
        Ok(Self {
            services: FamilyMaps::new(SERVICES, pair(SERVICES)?)?,
            backends: typed(MAP_BACKENDS, open_pin(dir, MAP_BACKENDS)?)?,
            maglev: typed(MAP_MAGLEV, open_pin(dir, MAP_MAGLEV)?)?,
            flows: FamilyMaps::new(FLOWS, pair(FLOWS)?)?,
            flow_caches: open_flow_caches(dir)?,
            service_traffic: open_service_traffic(dir)?,
            backend_stats: typed(MAP_BACKEND_STATS, open_pin(dir, MAP_BACKEND_STATS)?)?,
            global_stats: open_counters(dir)?,
            vips: typed(MAP_VIPS, open_pin(dir, MAP_VIPS)?)?,
            ifaces: typed(MAP_IFACES, open_pin(dir, MAP_IFACES)?)?,
        })
    }

    /// What the live Maglev ring of `key`'s service gives a new flow,
    /// computed as the data path computes it. `None` when `key` is not
    /// addressed to a service with backends.
    pub fn maglev_choice(&self, key: &FlowKey) -> Result<Option<MaglevChoice>, MapsError> {
        let Some(info) = self.services.get(&ServiceKey::of_destination(key))? else {
            return Ok(None);
        };
        if info.backend_count == 0 || info.ring_size == 0 {
            return Ok(None);
        }
        let ring_slot = info.ring_slot(key);
        let backend_id = self
            .maglev
            .get(&ring_slot, 0)
            .map_err(|e| map_error(MAP_MAGLEV, e))?;
        let backend = self
            .backends
            .get(&backend_id, 0)
            .map_err(|e| map_error(MAP_BACKENDS, e))?;
        Ok(Some(MaglevChoice {
            hash: lb_common::hash::flow_hash(key),
            slot: ring_slot - info.ring_base,
            ring_size: info.ring_size,
            backend_id,
            backend,
        }))
    }

    /// Every slot of `BACKENDS`, by id, read in one system call.
    pub fn backend_slots(&self) -> Result<Vec<Backend>, MapsError> {
        get_range(&self.backends, 0, self.backends.len()).map_err(|e| map_error(MAP_BACKENDS, e))
    }

    /// Backend ids in a service's live Maglev ring, with their entry counts.
    pub fn ring_entries(&self, info: &ServiceInfo) -> Result<BTreeMap<u32, u32>, MapsError> {
        let mut entries = BTreeMap::new();
        if info.backend_count == 0 {
            return Ok(entries);
        }
        let ring = get_range(&self.maglev, info.ring_base, info.ring_size)
            .map_err(|e| map_error(MAP_MAGLEV, e))?;
        for id in ring {
            *entries.entry(id).or_default() += 1;
        }
        Ok(entries)
    }

    /// The traffic of service `id`, whose backends' slots are `backends`:
    /// what they count, and what its retired backends counted.
    pub fn service_traffic(
        &self,
        id: u32,
        backends: impl IntoIterator<Item = u32>,
    ) -> Result<Traffic, MapsError> {
        match &self.service_traffic {
            ServiceTraffic::Retired(retired) => {
                let retired = retired
                    .get(&id, 0)
                    .map_err(|e| map_error(MAP_RETIRED_TRAFFIC, e))?;
                Ok(retired.plus(self.backends_traffic(backends)?))
            }
            ServiceTraffic::Whole(stats) => sum_traffic(stats, id, SERVICE_STATS),
        }
    }

    /// What the backend slots `ids` count, together.
    pub fn backends_traffic(
        &self,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<Traffic, MapsError> {
        ids.into_iter().try_fold(Traffic::default(), |sum, id| {
            Ok(sum.plus(self.backend_traffic(id)?))
        })
    }

    /// Sets what service `id`'s retired backends counted.
    pub fn set_retired_traffic(&mut self, id: u32, traffic: Traffic) -> Result<(), MapsError> {
        match &mut self.service_traffic {
            ServiceTraffic::Retired(retired) => retired
                .set(id, traffic, 0)
                .map_err(|e| map_error(MAP_RETIRED_TRAFFIC, e)),
            ServiceTraffic::Whole(_) => Err(MapsError::Missing(MAP_RETIRED_TRAFFIC)),
        }
    }

    /// Sum over CPUs of a backend's counters.
    pub fn backend_traffic(&self, id: u32) -> Result<Traffic, MapsError> {
        sum_traffic(&self.backend_stats, id, MAP_BACKEND_STATS)
    }

    /// Adds the counts of `former` (an earlier agent's counters, see
    /// [`former_counters`]) to these, CPU by CPU, so that they keep
    /// counting up.
    pub(crate) fn add_counts(
        &mut self,
        former: &PerCpuArray<MapData, u64>,
    ) -> Result<(), MapsError> {
        for index in 0..former.len().min(counters::COUNT) {
            let carried = former
                .get(&index, 0)
                .map_err(|e| map_error(FORMER_COUNTERS, e))?;
            let counts = self
                .global_stats
                .get(&index, 0)
                .map_err(|e| map_error(MAP_COUNTERS, e))?;
            let sums: Vec<u64> = counts
                .iter()
                .zip(carried.iter())
                .map(|(count, carried)| count.wrapping_add(*carried))
                .collect();
            // As many values as CPUs, read from a map of this machine.
            let sums = PerCpuValues::try_from(sums).expect("one value per CPU");
            self.global_stats
                .set(index, sums, 0)
                .map_err(|e| map_error(MAP_COUNTERS, e))?;
        }
        Ok(())
    }

    /// Global counters summed over CPUs, indexed like `lb_common::counters`.
    /// An earlier agent's counters have no slot for a counter it did not
    /// know: that one reads 0.
    pub fn global_counters(&self) -> Result<Vec<u64>, MapsError> {
        let slots = self.global_stats.len();
        let mut totals = (0..counters::COUNT)
            .map(|index| {
                if index >= slots {
                    return Ok(0);
                }
                let values = self
                    .global_stats
                    .get(&index, 0)
                    .map_err(|source| map_error(MAP_COUNTERS, source))?;
                Ok(values.iter().sum())
            })
            .collect::<Result<Vec<u64>, MapsError>>()?;
        counters::derive_rx(&mut totals);
        Ok(totals)
    }
}

/// Sum over CPUs of entry `id` of the per-CPU counters `name`.
pub(crate) fn sum_traffic(
    map: &PerCpuArray<MapData, Traffic>,
    id: u32,
    name: &'static str,
) -> Result<Traffic, MapsError> {
    let values = map.get(&id, 0).map_err(|source| map_error(name, source))?;
    Ok(values
        .iter()
        .fold(Traffic::default(), |sum, cpu| sum.plus(*cpu)))
}

/// Where the pinned state keeps services' traffic: `RETIRED_TRAFFIC`, or
/// before this agent's first load an earlier one's `SERVICE_STATS`.
fn open_service_traffic(pins: &PinDir) -> Result<ServiceTraffic, MapsError> {
    if !is_pinned(pins, MAP_RETIRED_TRAFFIC)?
        && let Some(former) = former_service_stats(pins)?
    {
        return Ok(ServiceTraffic::Whole(former));
    }
    Ok(ServiceTraffic::Retired(typed(
        MAP_RETIRED_TRAFFIC,
        open_pin(pins, MAP_RETIRED_TRAFFIC)?,
    )?))
}

/// The counters an earlier agent pinned as [`FORMER_COUNTERS`], if the
/// pinned state still has them.
pub(crate) fn former_counters(
    pins: &PinDir,
) -> Result<Option<PerCpuArray<MapData, u64>>, MapsError> {
    open_if_pinned(pins, FORMER_COUNTERS)
}

/// The counters, or an earlier agent's while it still serves ([`former_counters`]).
fn open_counters(pins: &PinDir) -> Result<PerCpuArray<MapData, u64>, MapsError> {
    if !is_pinned(pins, MAP_COUNTERS)?
        && let Some(former) = former_counters(pins)?
    {
        return Ok(former);
    }
    typed(MAP_COUNTERS, open_pin(pins, MAP_COUNTERS)?)
}

/// An earlier agent's `SERVICE_STATS`, if the pinned state still has it.
pub(crate) fn former_service_stats(
    pins: &PinDir,
) -> Result<Option<PerCpuArray<MapData, Traffic>>, MapsError> {
    open_if_pinned(pins, SERVICE_STATS)
}

/// The pinned map `name` as a `T`, if there is one.
pub(crate) fn open_if_pinned<T>(pins: &PinDir, name: &'static str) -> Result<Option<T>, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    if !is_pinned(pins, name)? {
        return Ok(None);
    }
    typed(name, open_pin(pins, name)?).map(Some)
}

/// Whether `error` says the key is not in the map: a lookup's
/// `KeyNotFound`, or the ENOENT of a delete (or of a batch read at the
/// end), which aya reports as a failed call.
pub(crate) fn is_absent(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::ENOENT)
        }
        _ => false,
    }
}

pub(crate) fn map_error(name: &'static str, source: MapError) -> MapsError {
    MapsError::Map { name, source }
}

/// The flow caches' pins, if the agent made them (earlier agents of this
/// layout did not).
fn open_flow_caches(pins: &PinDir) -> Result<Option<FlowCaches>, MapsError> {
    if !is_pinned(pins, MAP_FLOW_CACHE4)? {
        return Ok(None);
    }
    Ok(Some(FlowCaches {
        v4: typed(MAP_FLOW_CACHE4, open_pin(pins, MAP_FLOW_CACHE4)?)?,
        v6: typed(MAP_FLOW_CACHE6, open_pin(pins, MAP_FLOW_CACHE6)?)?,
    }))
}

/// The settings an earlier agent pinned ([`PINNED_SETTINGS`]), if it did.
pub(crate) fn pinned_settings(pins: &PinDir) -> Result<Option<Settings>, MapsError> {
    let Some(settings) = open_if_pinned::<Array<MapData, Settings>>(pins, PINNED_SETTINGS)? else {
        return Ok(None);
    };
    settings
        .get(&0, 0)
        .map(Some)
        .map_err(|e| map_error(PINNED_SETTINGS, e))
}

/// Whether the map `name` is pinned. A pin that cannot be looked at is no
/// absent one (`Path::exists` says false for both): a user without the
/// privileges is told so, not that nothing is loaded.
fn is_pinned(pins: &PinDir, name: &str) -> Result<bool, MapsError> {
    let path = pins.map(name);
    path.try_exists().map_err(|source| match source.kind() {
        std::io::ErrorKind::PermissionDenied => MapsError::Permission { path: path.clone() },
        _ => PinsError::Io { path, source }.into(),
    })
}

fn open_pin(pins: &PinDir, name: &'static str) -> Result<Map, MapsError> {
    if !is_pinned(pins, name)? {
        return Err(MapsError::NotPinned {
            dir: pins.root().to_owned(),
            name,
        });
    }
    let path = pins.map(name);
    let data = MapData::from_pin(&path).map_err(|source| match &source {
        MapError::SyscallError(e) if e.io_error.kind() == std::io::ErrorKind::PermissionDenied => {
            MapsError::Permission { path: path.clone() }
        }
        _ => map_error(name, source),
    })?;
    Map::from_map_data(data).map_err(|source| map_error(name, source))
}
