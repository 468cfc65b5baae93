//! Which interfaces answer ARP and Neighbor Solicitations for each VIP: each
//! attached interface gets a slot, each VIP a mask of slots (`VIPS`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    ALL_NEIGHBOR_SLOTS, Iface, MAP_IFACES, MAP_VIPS, MAX_NEIGHBOR_SLOTS, NeighborMask, neighbor_bit,
};

use super::{Dataplane, DataplaneError};
use crate::maps::map_error;

impl Dataplane {
    /// Tells the program the MAC of interface `ifindex`, which it answers ARP
    /// and Neighbor Solicitations for VIPs with, and gives the interface its
    /// slot in the VIPs' masks (done by `attach`; tests that run the program
    /// without attaching it call this directly).
    pub fn add_iface(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<(), DataplaneError> {
        let slot = match self.iface_slots.get(&ifindex) {
            Some(slot) => *slot,
            None => self.new_iface_slot(ifindex)?,
        };
        let iface = Iface { mac, slot, _pad: 0 };
        self.maps
            .ifaces
            .insert(ifindex, iface, 0)
            .map_err(|e| map_error(MAP_IFACES, e))?;
        self.ifaces_by_index.set(ifindex, iface)?;
        self.iface_slots.insert(ifindex, slot);
        Ok(())
    }

    /// The slot of interface `ifindex`, new to this load: the one pinned
    /// state gives it, which the masks an earlier agent left use (listed in
    /// another order, or with one more or one less, interfaces would
    /// otherwise swap slots, and answer each other's VIPs until the first
    /// sync), if no interface took it; else the lowest neither taken nor
    /// pinned for another interface (which may yet be added), else the
    /// lowest not taken.
    fn new_iface_slot(&self, ifindex: u32) -> Result<u8, DataplaneError> {
        let taken: BTreeSet<u8> = self.iface_slots.values().copied().collect();
        let mut own = None;
        let mut reserved = BTreeSet::new();
        for entry in self.maps.ifaces.iter() {
            let (index, iface) = entry.map_err(|e| map_error(MAP_IFACES, e))?;
            if index == ifindex {
                own = Some(iface.slot);
            } else if !self.iface_slots.contains_key(&index) {
                reserved.insert(iface.slot);
            }
        }
        let free = |slot: &u8| !taken.contains(slot);
        own.filter(free)
            .or_else(|| (0..MAX_NEIGHBOR_SLOTS).find(|s| free(s) && !reserved.contains(s)))
            .or_else(|| (0..MAX_NEIGHBOR_SLOTS).find(free))
            .ok_or(DataplaneError::TooManyInterfaces(MAX_NEIGHBOR_SLOTS))
    }

    /// Forgets interface `ifindex`, which no longer runs this data path.
    pub(super) fn remove_iface(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.maps
            .ifaces
            .remove(&ifindex)
            .map_err(|e| map_error(MAP_IFACES, e))?;
        self.ifaces_by_index.set(ifindex, Iface::default())?;
        self.iface_slots.remove(&ifindex);
        Ok(())
    }

    /// Answers ARP and Neighbor Solicitations for each VIP of `answers` on
    /// the interfaces (by ifindex) it lists, and for every other VIP nowhere.
    /// Interfaces not added are ignored. Only the VIPs whose interfaces
    /// change are written: with 10,000 VIPs, rewriting all took
    /// milliseconds of every sync.
    pub fn set_neighbor_answers(
        &mut self,
        answers: &BTreeMap<IpAddr, BTreeSet<u32>>,
    ) -> Result<(), DataplaneError> {
        let masks: BTreeMap<IpAddr, NeighborMask> = answers
            .iter()
            .map(|(vip, ifindexes)| {
                let mask = ifindexes
                    .iter()
                    .filter_map(|ifindex| self.iface_slots.get(ifindex))
                    .fold(0, |mask, slot| mask | neighbor_bit(*slot));
                (*vip, mask)
            })
            .collect();
        let mask_of = |vip: &IpAddr| masks.get(vip).copied().unwrap_or(0);
        let changed: BTreeSet<IpAddr> = self
            .services
            .keys()
            .map(|f| f.vip)
            .filter(|vip| mask_of(vip) != self.neighbor_mask(*vip))
            .collect();
        for vip in changed {
            // Recorded once written, so that should a write fail,
            // `neighbor_masks` still says what the map holds for every VIP.
            let mask = mask_of(&vip);
            self.write_mask(vip, mask)?;
            self.neighbor_masks.insert(vip, mask);
        }
        self.neighbor_masks = masks;
        Ok(())
    }

    /// The interfaces ARP and NDP for `vip` are answered on (bits of slots).
    pub fn neighbor_mask(&self, vip: IpAddr) -> NeighborMask {
        self.neighbor_masks.get(&vip).copied().unwrap_or(0)
    }

    /// Writes `vip`'s entry in `VIPS` with the mask recorded for it.
    pub(super) fn write_neighbor_mask(&mut self, vip: IpAddr) -> Result<(), DataplaneError> {
        self.write_mask(vip, self.neighbor_mask(vip))
    }

    /// Writes `vip`'s entry in `VIPS`, which makes it a VIP for the program.
    fn write_mask(&mut self, vip: IpAddr, mask: NeighborMask) -> Result<(), DataplaneError> {
        self.maps
            .vips
            .insert(lb_common::addr_of(vip), mask, 0)
            .map_err(|e| map_error(MAP_VIPS, e))?;
        Ok(())
    }

    /// Keeps answering for the VIPs of pinned state as the earlier agent had
    /// them answered until this one's first sync says otherwise, so that a
    /// restart or an upgrade loses no neighbour: the masks it wrote, or, from
    /// an agent that answered for every VIP everywhere (it set
    /// `LEGACY_SETTING_ANSWER_NEIGHBORS` and left the masks 0), every
    /// interface (`legacy`, from the settings it pinned).
    pub(super) fn recover_neighbor_masks(&mut self, legacy: bool) -> Result<(), DataplaneError> {
        for entry in self.maps.vips.iter() {
            let (addr, mask) = entry.map_err(|e| map_error(MAP_VIPS, e))?;
            let mask = if legacy { ALL_NEIGHBOR_SLOTS } else { mask };
            self.neighbor_masks.insert(lb_common::ip_of(addr), mask);
        }
        let vips: Vec<IpAddr> = self.neighbor_masks.keys().copied().collect();
        for vip in vips {
            self.write_neighbor_mask(vip)?;
        }
        Ok(())
    }
}
