//! `IFACES_BY_INDEX`: `IFACES` again as an array by ifindex (below
//! `IFACES_BY_INDEX_LEN`), so that the check every packet makes, whether the
//! frame is for this host, is an array read. Derived from `IFACES`, so not
//! pinned: every load fills it from the (possibly inherited) `IFACES` before
//! the program is attached.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use lb_common::{IFACES_BY_INDEX_LEN, Iface, MAP_IFACES, MAP_IFACES_BY_INDEX};

use crate::maps::{MapsError, map_error, take_typed};

pub(super) struct IfacesByIndex {
    map: Array<MapData, Iface>,
}

impl IfacesByIndex {
    /// Takes the program's array and copies every interface of `ifaces` in.
    pub fn take(ebpf: &mut Ebpf, ifaces: &HashMap<MapData, u32, Iface>) -> Result<Self, MapsError> {
        let mut index = Self {
            map: take_typed(ebpf, MAP_IFACES_BY_INDEX)?,
        };
        for entry in ifaces.iter() {
            let (ifindex, iface) = entry.map_err(|e| map_error(MAP_IFACES, e))?;
            index.set(ifindex, iface)?;
        }
        Ok(index)
    }

    /// Mirrors an `IFACES` entry; an ifindex past the array is found in
    /// `IFACES` alone.
    pub fn set(&mut self, ifindex: u32, iface: Iface) -> Result<(), MapsError> {
        if ifindex < IFACES_BY_INDEX_LEN {
            self.map
                .set(ifindex, iface, 0)
                .map_err(|e| map_error(MAP_IFACES_BY_INDEX, e))?;
        }
        Ok(())
    }
}
