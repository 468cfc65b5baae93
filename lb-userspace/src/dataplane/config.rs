//! Sizing and run-time switches of the data path, checked before anything
//! is loaded or pinned.

use std::path::{Path, PathBuf};

use aya::maps::MapData;
use lb_common::{MAP_MAGLEV, MAX_FLOWS, MAX_SERVICES, SETTING_ANSWER_ECHO, SETTING_DSR, Settings};

use super::DataplaneError;
use crate::{maglev, maps::map_error};

/// Default new flows each CPU records per second before it forwards the rest
/// statelessly: far above what one CPU's share of real clients opens, far
/// below what a SYN flood sends.
pub const DEFAULT_NEW_FLOW_LIMIT: u32 = 100_000;

/// The smallest flow table: per-CPU LRU lists need a few entries per CPU.
pub const MIN_FLOWS: u32 = 1024;

/// Default number of services the Maglev map has room for.
pub const DEFAULT_MAX_SERVICES: u32 = 256;

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
    /// Entries of each family's flow table (LRU, split between the CPUs).
    pub max_flows: u32,
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
    /// Checks the sizing before anything is loaded or pinned; returns the
    /// entries of the Maglev map (two rings of M per service).
    pub(super) fn ring_entries(&self) -> Result<u32, DataplaneError> {
        if !maglev::is_prime(self.ring_size) {
            return Err(DataplaneError::RingSize(self.ring_size));
        }
        if self.max_services == 0 || self.max_services > MAX_SERVICES {
            return Err(DataplaneError::MaxServices(self.max_services));
        }
        if self.max_flows < MIN_FLOWS {
            return Err(DataplaneError::MaxFlows(self.max_flows));
        }
        let entries = u64::from(self.ring_size) * u64::from(self.max_services) * 2;
        u32::try_from(entries).map_err(|_| DataplaneError::TooLarge {
            ring_size: self.ring_size,
            max_services: self.max_services,
        })
    }

    /// Refuses a pinned Maglev map at `maglev` (if there is one) made for
    /// another `ring_size` or `max_services`, before anything is loaded: the
    /// loader reuses a pinned map whatever its size, and every service's
    /// ring would then be read as not programmed.
    pub(super) fn check_pinned_ring(&self, maglev: &Path) -> Result<(), DataplaneError> {
        if !maglev.exists() {
            return Ok(());
        }
        let pinned = MapData::from_pin(maglev)
            .and_then(|map| map.info())
            .map_err(|e| map_error(MAP_MAGLEV, e))?
            .max_entries();
        let wanted = self.ring_entries()?;
        if pinned != wanted {
            return Err(DataplaneError::ConfigMismatch {
                pinned,
                wanted,
                ring_size: self.ring_size,
                max_services: self.max_services,
            });
        }
        Ok(())
    }

    /// The data path's run-time switches for this configuration.
    pub(super) fn settings(&self) -> Settings {
        let flag = |on: bool, flag: u32| if on { flag } else { 0 };
        Settings {
            flags: flag(self.answer_ping, SETTING_ANSWER_ECHO)
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
            forwarding: Forwarding::Nat,
        }
    }
}
