//! `IFACES_BY_INDEX`: `IFACES` again as an array by ifindex (below
//! `IFACES_BY_INDEX_LEN`), so that the check every packet makes, whether the
//! frame is for this host, is a read of global data. Derived from `IFACES`,
//! so not pinned: every load fills it from the (possibly inherited) `IFACES`
//! before the program is attached. Global data, so one map value: a change
//! writes the whole array (32 KiB); interfaces change rarely.

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use lb_common::{
    IFACES_BY_INDEX_LEN, Iface, IfacesByIndexEntries, MAP_IFACES, MAP_IFACES_BY_INDEX,
};

use super::global_data::GlobalData;
use crate::maps::{MapsError, map_error};

pub(super) struct IfacesByIndex {
    entries: GlobalData<IfacesByIndexEntries>,
}

impl IfacesByIndex {
    /// Takes the program's array and copies every interface of `ifaces` in.
    pub fn take(ebpf: &mut Ebpf, ifaces: &HashMap<MapData, u32, Iface>) -> Result<Self, MapsError> {
        let empty = [Iface::default(); IFACES_BY_INDEX_LEN as usize];
        let mut entries = GlobalData::take(ebpf, MAP_IFACES_BY_INDEX, empty)?;
        for entry in ifaces.iter() {
            let (ifindex, iface) = entry.map_err(|e| map_error(MAP_IFACES, e))?;
            if let Some(slot) = entries.value_mut().get_mut(ifindex as usize) {
                *slot = iface;
            }
        }
        entries.write()?;
        Ok(Self { entries })
    }

    /// Mirrors an `IFACES` entry; an ifindex past the array is found in
    /// `IFACES` alone.
    pub fn set(&mut self, ifindex: u32, iface: Iface) -> Result<(), MapsError> {
        match self.entries.value_mut().get_mut(ifindex as usize) {
            Some(slot) if *slot != iface => {
                *slot = iface;
                self.entries.write()
            }
            _ => Ok(()),
        }
    }
}
