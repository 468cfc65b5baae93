//! `NODE_PORTS4` and `NODE_PORTS6`: the frontend each backend NodePort
//! serves, by (protocol, NodePort) (`lb_common::node_port_slot`), so that
//! the data path finds the VIP a node's reply leaves with by an array read.
//! Derived from what is programmed, so not pinned: every load starts them
//! empty and `recover` fills them before the program is attached.
//!
//! Kubernetes gives a NodePort to one Service port of the whole cluster, so
//! an entry serves one frontend. (With direct server return, where no reply
//! is lb's, a backend without a NodePort has the Service's own port, which
//! several frontends may claim: the entries are then never read.) Two may
//! claim one for a while: a NodePort freed by a deleted Service and given
//! to a new one can reach lb in either order. The latest claim is served; when it goes, an earlier claim that
//! still stands takes the entry back.

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use lb_common::{
    ByFamily, MAP_NODE_PORTS4, MAP_NODE_PORTS6, ServiceKey, ServiceKey4, node_port_slot,
};

use super::service_key;
use crate::{
    maps::{MapsError, map_error, take_typed},
    model::{BackendSpec, Frontend},
};

/// An entry of one of the two arrays: whether IPv6, and the slot.
type Entry = (bool, u32);

pub(super) struct NodePortFrontends {
    v4: Array<MapData, ServiceKey4>,
    v6: Array<MapData, ServiceKey>,
    /// The frontends claiming each entry, latest last.
    claims: BTreeMap<Entry, Vec<Frontend>>,
    /// The entries each frontend claims.
    claimed: BTreeMap<Frontend, BTreeSet<Entry>>,
}

impl NodePortFrontends {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Ok(Self {
            v4: take_typed(ebpf, MAP_NODE_PORTS4)?,
            v6: take_typed(ebpf, MAP_NODE_PORTS6)?,
            claims: BTreeMap::new(),
            claimed: BTreeMap::new(),
        })
    }

    /// Claims the entries of the NodePorts of `backends` for `frontend`,
    /// keeping those it has; before its service is swapped in, so that the
    /// first replies find their way back.
    pub fn claim(
        &mut self,
        frontend: &Frontend,
        backends: &[BackendSpec],
    ) -> Result<(), MapsError> {
        for entry in entries(frontend, backends) {
            if self.claimed.entry(*frontend).or_default().insert(entry) {
                self.claims.entry(entry).or_default().push(*frontend);
                self.write(entry)?;
            }
        }
        Ok(())
    }

    /// Releases the entries `frontend` claims that no NodePort of `backends`
    /// needs (all of them, for none); once its removed backends are retired.
    pub fn release_unused(
        &mut self,
        frontend: &Frontend,
        backends: &[BackendSpec],
    ) -> Result<(), MapsError> {
        let kept = entries(frontend, backends);
        let Some(claimed) = self.claimed.remove(frontend) else {
            return Ok(());
        };
        for entry in claimed.difference(&kept) {
            let Some(claims) = self.claims.get_mut(entry) else {
                continue;
            };
            let served = claims.last() == Some(frontend);
            claims.retain(|claim| claim != frontend);
            if claims.is_empty() {
                self.claims.remove(entry);
            }
            if served {
                self.write(*entry)?;
            }
        }
        let still: BTreeSet<Entry> = claimed.intersection(&kept).copied().collect();
        if !still.is_empty() {
            self.claimed.insert(*frontend, still);
        }
        Ok(())
    }

    /// Writes `entry`'s latest claim, or empties it.
    fn write(&mut self, entry: Entry) -> Result<(), MapsError> {
        let served = self
            .claims
            .get(&entry)
            .and_then(|claims| claims.last())
            .map(service_key)
            .unwrap_or_default();
        match entry {
            (false, slot) => self
                .v4
                .set(slot, served.to_v4().unwrap_or_default(), 0)
                .map_err(|e| map_error(MAP_NODE_PORTS4, e)),
            (true, slot) => self
                .v6
                .set(slot, served, 0)
                .map_err(|e| map_error(MAP_NODE_PORTS6, e)),
        }
    }
}

/// The entries of the NodePorts of `backends`, which serve `frontend`.
fn entries(frontend: &Frontend, backends: &[BackendSpec]) -> BTreeSet<Entry> {
    let proto = frontend.protocol.number();
    backends
        .iter()
        .filter_map(|backend| node_port_slot(backend.port.to_be(), proto))
        .map(|slot| (frontend.vip.is_ipv6(), slot))
        .collect()
}
