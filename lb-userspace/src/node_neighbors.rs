//! The nodes' entries in the kernel's neighbour table, with direct server
//! return. The data path sends a node's packets to its MAC, which it reads
//! from that table through `bpf_fib_lookup`; a packet that keeps its VIP
//! cannot be handed to the kernel to resolve the node (the kernel would
//! route it by the VIP), so it is dropped until something else resolved
//! the node: without these entries, the health checks' connections, or
//! nothing with checks off. So the agent makes each node's entry *managed*
//! (`NTF_EXT_MANAGED`): the kernel resolves it at once and keeps it
//! resolved without traffic, noticing a new MAC as it would any.
//!
//! The entries are marked with [`NEIGHBOR_PROTOCOL`], so that the agent
//! removes those of nodes it no longer sends to, also after a restart, and
//! only those. An entry set by hand (`permanent`, `noarp`) is left alone:
//! it is resolved already. A stopping agent leaves its entries: the pinned
//! data path it leaves serving still needs them.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    io,
    net::IpAddr,
};

use tracing::{info, warn};

use crate::netlink::{Neighbor, Netlink};

/// The `protocol` of the agent's neighbour entries (`ip neigh show proto
/// 108`): no routing daemon's number in iproute2's `rt_protos`.
pub const NEIGHBOR_PROTOCOL: u8 = 108;

/// The node addresses the data path sends to directly, each with the
/// interface its route leaves by.
pub type Nodes = BTreeMap<IpAddr, String>;

/// Keeps the nodes' neighbour entries managed.
#[derive(Default)]
pub struct NodeNeighbors {
    /// What the entries were last made to match; `None` before the first
    /// time, or after a failure, so that the next round tries again.
    kept: Option<Nodes>,
}

impl NodeNeighbors {
    /// Makes the entries of `nodes` managed, and removes the agent's entries
    /// of other addresses. Only when `nodes` changed (every round asks).
    pub fn keep(&mut self, nodes: &Nodes) {
        if self.kept.as_ref() == Some(nodes) {
            return;
        }
        match reconcile(nodes) {
            Ok(()) => self.kept = Some(nodes.clone()),
            Err(e) => {
                warn!(error = %e, "keeping the nodes' neighbour entries resolved");
                self.kept = None;
            }
        }
    }
}

fn reconcile(nodes: &Nodes) -> io::Result<()> {
    let mut netlink = Netlink::open()?;
    let existing = netlink.neighbors()?;
    let wanted: BTreeSet<(u32, IpAddr)> = nodes
        .iter()
        .filter_map(|(ip, iface)| Some((ifindex(iface)?, *ip)))
        .collect();
    for &(ifindex, ip) in &wanted {
        let entry = existing.iter().find(|n| n.ifindex == ifindex && n.ip == ip);
        if entry.is_some_and(|n| n.fixed || (n.managed && n.protocol == NEIGHBOR_PROTOCOL)) {
            continue;
        }
        netlink.manage_neighbor(ifindex, ip, NEIGHBOR_PROTOCOL)?;
        info!(%ip, ifindex, "node's neighbour entry managed");
    }
    for Neighbor { ifindex, ip, .. } in existing
        .iter()
        .filter(|n| n.protocol == NEIGHBOR_PROTOCOL && !wanted.contains(&(n.ifindex, n.ip)))
    {
        match netlink.delete_neighbor(*ifindex, *ip) {
            // Gone meanwhile (its interface with it).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            result => result?,
        }
        info!(%ip, ifindex, "neighbour entry of a node no longer served removed");
    }
    Ok(())
}

/// The index of interface `name`; `None` (logged) if it is gone.
fn ifindex(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        warn!(
            interface = name,
            "no such interface for a node's neighbour entry"
        );
    }
    (index != 0).then_some(index)
}
