//! The interfaces the program may redirect packets to: each gets a slot of
//! the devmap array `EGRESS_PORTS` (`EGRESS_SLOTS` says which), kept while
//! the interface is; the kernel empties the slot of an interface that goes,
//! and the slot is handed out again. The data path finds a next hop's slot
//! once, with its FIB lookup, and keeps it with the hop: a redirect is then
//! an index into the devmap, where a devmap hash by ifindex cost a hash and
//! a bucket walk on every packet.

use aya::{
    Ebpf,
    maps::{DevMap, DevMapHash, HashMap, MapData, xdp::XdpMapError},
};
use lb_common::{MAP_EGRESS_PORTS, MAP_EGRESS_SLOTS, MAX_EGRESS_PORTS};

use super::DataplaneError;
use crate::{
    maps::{FORMER_TX_PORTS, MapsError, is_absent, map_error, open_if_pinned, take_typed},
    pins::PinDir,
};

pub(super) struct EgressPorts {
    ports: DevMap<MapData>,
    slots: HashMap<MapData, u32, u32>,
}

impl EgressPorts {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Ok(Self {
            ports: take_typed(ebpf, MAP_EGRESS_PORTS)?,
            slots: take_typed(ebpf, MAP_EGRESS_SLOTS)?,
        })
    }

    /// Lets the program redirect to `ifindex`, in the slot it has or the
    /// next free one. The port is set before its slot is told, so that no
    /// packet is sent to an empty slot.
    pub fn add(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let slot = match self.slots.get(&ifindex, 0) {
            Ok(slot) => slot,
            Err(e) if is_absent(&e) => self.claim_slot()?,
            Err(e) => return Err(map_error(MAP_EGRESS_SLOTS, e).into()),
        };
        self.ports
            .set(slot, ifindex, None, 0)
            .map_err(|e| match e {
                XdpMapError::MapError(e) => map_error(MAP_EGRESS_PORTS, e),
                XdpMapError::ChainedProgramNotSupported => MapsError::Missing(MAP_EGRESS_PORTS),
            })?;
        self.slots
            .insert(ifindex, slot, 0)
            .map_err(|e| map_error(MAP_EGRESS_SLOTS, e))?;
        Ok(())
    }

    /// Stops redirects to `ifindex`, an interface lb is detached from (some
    /// drivers drop what is redirected to an interface without a program):
    /// a next hop out of it, once the data path's cached one expires, has
    /// no slot and passes to the kernel. Its slot is handed out again.
    pub fn remove(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        match self.slots.remove(&ifindex) {
            Err(e) if !is_absent(&e) => Err(map_error(MAP_EGRESS_SLOTS, e).into()),
            _ => Ok(()),
        }
    }

    /// A slot for a new port: the lowest one never given out, else the
    /// lowest of an interface that is gone (the kernel emptied it), whose
    /// departed ifindex is forgotten first, so that should another
    /// interface get it, it gets a slot of its own. Gone slots come last: a
    /// next hop the data path cached with one (for up to `HOP_CACHE_NS`
    /// after the interface went) would take the new port until refreshed.
    fn claim_slot(&mut self) -> Result<u32, DataplaneError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Slot {
            Unused,
            Live,
            /// Of the ifindex of an interface that went.
            Gone(u32),
        }
        let mut slots = [Slot::Unused; MAX_EGRESS_PORTS as usize];
        for entry in self.slots.iter() {
            let (ifindex, slot) = entry.map_err(|e| map_error(MAP_EGRESS_SLOTS, e))?;
            let state = match self.ports.get(slot, 0) {
                Ok(_) => Slot::Live,
                Err(e) if is_absent(&e) => Slot::Gone(ifindex),
                Err(e) => return Err(map_error(MAP_EGRESS_PORTS, e).into()),
            };
            if let Some(entry) = slots.get_mut(slot as usize) {
                *entry = state;
            }
        }
        let unused = slots.iter().position(|slot| *slot == Slot::Unused);
        let gone = || slots.iter().position(|slot| matches!(slot, Slot::Gone(_)));
        let slot = unused
            .or_else(gone)
            .ok_or(DataplaneError::TooManyEgressPorts(MAX_EGRESS_PORTS))?;
        if let Slot::Gone(departed) = slots[slot] {
            self.slots
                .remove(&departed)
                .map_err(|e| map_error(MAP_EGRESS_SLOTS, e))?;
        }
        Ok(slot as u32)
    }

    /// Adds the ports an earlier agent pinned in its devmap hash by ifindex
    /// ([`FORMER_TX_PORTS`]), which its program redirects through until this
    /// load's is attached (then the pin goes with the other retired ones):
    /// this load's program redirects to them from its first packet.
    pub fn adopt_former(&mut self, pins: &PinDir) -> Result<(), DataplaneError> {
        let Some(former): Option<DevMapHash<MapData>> = open_if_pinned(pins, FORMER_TX_PORTS)?
        else {
            return Ok(());
        };
        for ifindex in former.keys() {
            self.add(ifindex.map_err(|e| map_error(FORMER_TX_PORTS, e))?)?;
        }
        Ok(())
    }
}
