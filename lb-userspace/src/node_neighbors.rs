//! The nodes' entries in the kernel's neighbour table, with direct server
//! return. The data path sends a node's packets to its MAC, which it reads
//! from that table through `bpf_fib_lookup`; a packet that keeps its VIP
//! cannot be handed to the kernel to resolve the node (the kernel would
//! route it by the VIP), so it is dropped until something else resolved
//! the node: without these entries, the health checks' connections, or
//! nothing with checks off. So the agent makes each node's entry *managed*
//! (`NTF_EXT_MANAGED`, Linux 5.16): the kernel resolves it at once and keeps
//! it resolved without traffic, noticing a new MAC as it would any.
//!
//! The agent's entries are marked with [`NEIGHBOR_PROTOCOL`], so that it
//! removes those of nodes it no longer sends to, also after a restart, and
//! only those. It takes over only entries the kernel learnt (no protocol,
//! not set by hand, not another control plane's): one set by hand
//! (`permanent`, `noarp`, or managed already) or by a daemon (a protocol of
//! its own, `extern_learn`) is left as it is. The entries are checked again
//! every [`RECHECK`], so one flushed or lost with its interface comes back.
//! The entries of `proto 108` are one agent's per network namespace: two
//! agents in one namespace would remove each other's. A stopping agent
//! leaves its entries: the pinned data path it leaves serving still needs
//! them; `lb down` and `--detach-on-exit` remove them.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    io,
    net::IpAddr,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::netlink::{Neighbor, Netlink};

/// The `protocol` of the agent's neighbour entries (`ip neigh show proto
/// 108`): no routing daemon's number in iproute2's `rt_protos`.
pub const NEIGHBOR_PROTOCOL: u8 = 108;

/// How often entries made are checked again.
pub const RECHECK: Duration = Duration::from_secs(5);

/// The node addresses the data path sends to directly, each with the
/// interface its route leaves by.
pub type Nodes = BTreeMap<IpAddr, String>;

/// Keeps the nodes' neighbour entries managed.
pub struct NodeNeighbors {
    /// The kernel keeps managed entries (Linux 5.16): older ones ignore the
    /// flag, and the entry written would be an unresolved one.
    supported: bool,
    /// The nodes last asked for.
    nodes: Nodes,
    /// When the entries last matched `nodes`; `None` if they never did, or
    /// the last attempt failed (the next check tries again).
    matched_at: Option<Instant>,
    /// When the last attempt was made: a failing one is retried every
    /// [`RECHECK`], not at every round.
    tried_at: Option<Instant>,
    /// The last attempt's failure, logged when it changes.
    failure: Option<String>,
}

impl Default for NodeNeighbors {
    fn default() -> Self {
        Self {
            supported: kernel_at_least(5, 16),
            nodes: Nodes::new(),
            matched_at: None,
            tried_at: None,
            failure: None,
        }
    }
}

impl NodeNeighbors {
    /// Makes the entries of `nodes` managed, and removes the agent's entries
    /// of other addresses: when `nodes` changed (every round asks), or the
    /// last attempt failed.
    pub fn keep(&mut self, nodes: &Nodes) {
        let retry_due = self.tried_at.is_none_or(|at| at.elapsed() >= RECHECK);
        if self.nodes == *nodes && (self.matched_at.is_some() || !retry_due) {
            return;
        }
        if !self.supported {
            if !nodes.is_empty() && self.nodes.is_empty() {
                warn!(
                    "this kernel keeps no managed neighbour entries (Linux 5.16): the nodes' \
                     MACs are resolved only by the health checks' connections"
                );
            }
            self.nodes.clone_from(nodes);
            return;
        }
        self.nodes.clone_from(nodes);
        self.tried_at = Some(Instant::now());
        let outcome = reconcile(nodes);
        self.matched_at = matches!(outcome, Ok(true)).then(Instant::now);
        let failure = outcome.err().map(|e| e.to_string());
        if let Some(error) = failure
            .as_ref()
            .filter(|f| Some(*f) != self.failure.as_ref())
        {
            warn!(%error, "keeping the nodes' neighbour entries resolved");
        }
        if failure.is_none() && self.failure.is_some() {
            info!("the nodes' neighbour entries are kept again");
        }
        self.failure = failure;
    }

    /// Checks the entries again if [`RECHECK`] has passed since the last
    /// attempt (but not while no node is asked for and none is left).
    pub fn recheck(&mut self) {
        let recent = self.tried_at.is_some_and(|at| at.elapsed() < RECHECK);
        let settled = self.matched_at.is_some() && self.nodes.is_empty();
        // Before the first round, which says which nodes, the entries left
        // are the pinned data path's, which still serves.
        let unasked = self.tried_at.is_none();
        if !self.supported || recent || settled || unasked {
            return;
        }
        self.matched_at = None;
        let nodes = std::mem::take(&mut self.nodes);
        self.keep(&nodes);
    }
}

/// Brings the table in line with `nodes`; false if a node's interface is
/// missing (its entry waits for the next attempt).
fn reconcile(nodes: &Nodes) -> io::Result<bool> {
    let mut netlink = Netlink::open()?;
    let existing = netlink.neighbors()?;
    let mut complete = true;
    let mut wanted = Vec::new();
    for (ip, iface) in nodes {
        match crate::iface::ifindex(iface) {
            Ok(ifindex) => wanted.push((ifindex, *ip)),
            Err(error) => {
                warn!(interface = %iface, %error, "no interface for a node's neighbour entry");
                complete = false;
            }
        }
    }
    for &(ifindex, ip) in &wanted {
        let entry = existing.iter().find(|n| n.ifindex == ifindex && n.ip == ip);
        if entry.is_some_and(|n| !taken_over(n)) {
            continue;
        }
        // Replacing only the entry seen: one made since (by hand) stays.
        match netlink.manage_neighbor(ifindex, ip, NEIGHBOR_PROTOCOL, entry.is_some()) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            result => result?,
        }
        info!(%ip, ifindex, "node's neighbour entry managed");
    }
    let theirs = |n: &&Neighbor| !wanted.contains(&(n.ifindex, n.ip));
    forget(&mut netlink, existing.iter().filter(theirs))?;
    Ok(complete)
}

/// Whether an existing entry is to be made the agent's managed one: one the
/// kernel learnt, not one already.
fn taken_over(entry: &Neighbor) -> bool {
    entry.protocol == 0 && !entry.fixed && !entry.managed && !entry.external
}

/// Removes the agent's entries among `entries` (never one set by hand
/// since: `ip neigh replace` keeps the protocol).
fn forget<'a>(
    netlink: &mut Netlink,
    entries: impl Iterator<Item = &'a Neighbor>,
) -> io::Result<()> {
    let ours = entries.filter(|n| n.protocol == NEIGHBOR_PROTOCOL && !n.fixed);
    for Neighbor { ifindex, ip, .. } in ours {
        match netlink.delete_neighbor(*ifindex, *ip) {
            // Gone meanwhile (its interface with it).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            result => result?,
        }
        info!(%ip, ifindex, "neighbour entry of a node no longer served removed");
    }
    Ok(())
}

/// Removes every entry the agent made (`lb down`).
pub fn remove_all() -> io::Result<()> {
    let mut netlink = Netlink::open()?;
    let existing = netlink.neighbors()?;
    forget(&mut netlink, existing.iter())
}

/// Whether the running kernel's release is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    // SAFETY: `uname` fills the zeroed struct it is given.
    let release = unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut name) != 0 {
            return false;
        }
        CStr::from_ptr(name.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    release_at_least(&release, major, minor)
}

/// Whether a kernel release string (`6.18.44-fc-v1300`) is at least
/// `major.minor`.
fn release_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let found = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    found >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_by_major_then_minor() {
        assert!(release_at_least("6.18.44-fc-v1300", 5, 16));
        assert!(release_at_least("5.16.0", 5, 16));
        assert!(!release_at_least("5.15.0-91-generic", 5, 16));
        assert!(!release_at_least("4.19.0", 5, 16));
        assert!(!release_at_least("", 5, 16));
    }

    #[test]
    fn only_entries_the_kernel_learnt_are_taken_over() {
        let learnt = Neighbor {
            ifindex: 3,
            ip: "10.1.0.11".parse().unwrap(),
            fixed: false,
            protocol: 0,
            managed: false,
            external: false,
        };
        assert!(taken_over(&learnt));
        for other in [
            Neighbor {
                fixed: true,
                ..learnt.clone()
            },
            Neighbor {
                protocol: 186,
                ..learnt.clone()
            },
            Neighbor {
                managed: true,
                ..learnt.clone()
            },
            Neighbor {
                external: true,
                ..learnt.clone()
            },
            Neighbor {
                protocol: NEIGHBOR_PROTOCOL,
                managed: true,
                ..learnt.clone()
            },
        ] {
            assert!(!taken_over(&other), "{other:?}");
        }
    }
}
