//! VIP allocation from named pools of address ranges, IPv4 and IPv6 alike.
//!
//! The pools hold no state beyond what the cluster already records: on start the
//! agent claims every address Services use (requested or in their status) before
//! allocating, so a restart hands every Service back the addresses it had.

mod pool;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    ops::RangeInclusive,
};

use thiserror::Error;

pub use self::pool::{Allocation, Hosts, Pool, ServiceIdentity};
use self::pool::{address, number};
use super::family::Family;

#[derive(Error, Debug, PartialEq, Eq)]
pub enum PoolError {
    #[error("VIP pool {pool} has no free {family} address left")]
    Exhausted { pool: String, family: Family },
    #[error("VIP pool {pool} has no {family} range")]
    NoRange { pool: String, family: Family },
    #[error("address {addr} is already held by {owner}")]
    AlreadyTaken { addr: IpAddr, owner: String },
    #[error("no VIP pool named {0:?}")]
    UnknownPool(String),
    #[error("no VIP pool is configured")]
    NoPool,
    #[error("no VIP pool hands out addresses to it (autoAssign, serviceAllocation)")]
    NoPoolFor,
    #[error("{0}")]
    NotAdmitted(String),
    #[error("address {0} is in no IPAddressPool")]
    OutsidePools(IpAddr),
    #[error("invalid VIP pool {text:?}: {reason}")]
    Invalid { text: String, reason: String },
}

/// What Services sharing an address agree on (MetalLB's `allow-shared-ip`):
/// Services with the same key, and the same backends, may share an address
/// if they listen on different ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharing {
    pub key: String,
    /// What the Service's traffic goes to, where that depends on the Service
    /// (its pod selector with policy Local): sharers must agree on it.
    pub backend: String,
    /// (port, protocol) pairs.
    pub listeners: BTreeSet<(i32, String)>,
}

/// A Service asking the pools for an address.
#[derive(Clone, Copy, Debug)]
pub struct Claimant<'a> {
    /// `namespace/name`.
    pub owner: &'a str,
    pub service: ServiceIdentity<'a>,
    pub sharing: Option<&'a Sharing>,
}

/// The Services using one address: one, or several that share it.
type Holders = BTreeMap<String, Option<Sharing>>;

/// Addresses handed to Services, sticky per owner (the Service's `namespace/name`).
/// One owner holds at most one address per family; an address has one owner
/// across all pools, or several that share it, so conflicts are found
/// wherever the address came from.
#[derive(Debug, Clone, Default)]
pub struct Pools {
    /// In the order they are tried among pools of the same rank.
    pools: Vec<Pool>,
    /// Every address must be in a pool (MetalLB's rule for its pools).
    strict: bool,
    allocations: BTreeMap<(String, Family), IpAddr>,
    /// Who uses each address, so conflicts are found without a scan and free
    /// addresses by walking only the used ones in order.
    holders: BTreeMap<IpAddr, Holders>,
    /// By the first address of a range: an address of it below which every
    /// one is held or avoided, where a Service that shares nothing starts
    /// looking. Without it, handing out n addresses in a row walks the used
    /// ones n times. Forgotten when an address is freed or the pools change.
    taken_below: BTreeMap<IpAddr, IpAddr>,
    /// Every (owner, address) released since [`Pools::take_given_up`] last
    /// took them: what statuses must stop showing.
    given_up: Vec<(String, IpAddr)>,
}

impl Pools {
    /// Pools with distinct names and no address in two of them.
    pub fn new(pools: Vec<Pool>) -> Result<Self, PoolError> {
        for (index, pool) in pools.iter().enumerate() {
            if let Some(other) = pools[..index]
                .iter()
                .find(|other| other.name == pool.name || other.overlaps(pool))
            {
                return Err(PoolError::Invalid {
                    text: pool.to_string(),
                    reason: format!("clashes with pool {other}"),
                });
            }
        }
        Ok(Self {
            pools,
            ..Self::default()
        })
    }

    /// The pools of `--vip-pool` and `--pool`: the first is handed out to
    /// Services that name none, the others only to those naming them.
    pub fn from_flags(mut pools: Vec<Pool>) -> Result<Self, PoolError> {
        for pool in pools.iter_mut().skip(1) {
            pool.auto_assign = false;
        }
        Self::new(pools)
    }

    /// Replaces the pools, keeping every address handed out: a Service whose
    /// address is in no pool it may use any more moves at its next
    /// allocation. `strict`: addresses outside every pool are refused.
    pub fn reconfigure(&mut self, pools: Pools, strict: bool) {
        self.pools = pools.pools;
        self.strict = strict;
        self.taken_below.clear();
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The pool `addr` is in, if any.
    pub fn pool_of(&self, addr: IpAddr) -> Option<&Pool> {
        self.pools.iter().find(|pool| pool.contains(addr))
    }

    /// The pools a Service may get an address from, in the order they are
    /// tried: the one it names, or those handed out automatically.
    pub fn candidates(
        &self,
        name: Option<&str>,
        service: &ServiceIdentity,
    ) -> Result<Vec<&Pool>, PoolError> {
        if let Some(name) = name {
            let pool = self
                .pools
                .iter()
                .find(|pool| pool.name == name)
                .ok_or_else(|| PoolError::UnknownPool(name.to_owned()))?;
            pool.admits(service).map_err(PoolError::NotAdmitted)?;
            return Ok(vec![pool]);
        }
        if self.pools.is_empty() {
            return Err(PoolError::NoPool);
        }
        let mut candidates: Vec<&Pool> = self
            .pools
            .iter()
            .filter(|pool| pool.auto_assign && pool.admits(service).is_ok())
            .collect();
        // Stable: pools of one rank keep their order.
        candidates.sort_by_key(|pool| pool.rank());
        if candidates.is_empty() {
            return Err(PoolError::NoPoolFor);
        }
        Ok(candidates)
    }

    /// The claimant's `family` address from pool `name` (or the pools it
    /// may have automatically): the one it holds if in one of them, else the
    /// lowest available one of the first pool that has one (then it gives up
    /// any address of that family it held elsewhere).
    pub fn allocate(
        &mut self,
        claimant: &Claimant,
        name: Option<&str>,
        family: Family,
    ) -> Result<IpAddr, PoolError> {
        let candidates = self.candidates(name, &claimant.service)?;
        // What it holds, unless its terms (key, ports) changed so that it
        // can no longer share it: then it moves, and the others keep it.
        if let Some(held) = self.lookup(claimant.owner, family).filter(|&held| {
            candidates.iter().any(|pool| pool.contains(held))
                && self
                    .holders
                    .get(&held)
                    .is_some_and(|holders| shareable(holders, claimant))
        }) {
            self.insert(claimant, held);
            return Ok(held);
        }
        let names = || {
            let names: Vec<&str> = candidates.iter().map(|pool| pool.name()).collect();
            names.join(", ")
        };
        if !candidates.iter().any(|pool| pool.supplies(family)) {
            return Err(PoolError::NoRange {
                pool: names(),
                family,
            });
        }
        let (range, addr) = candidates
            .iter()
            .find_map(|pool| {
                pool.ranges_of(family).find_map(|range| {
                    Some((
                        *range.start(),
                        self.lowest_available(pool, range, claimant)?,
                    ))
                })
            })
            .ok_or_else(|| PoolError::Exhausted {
                pool: names(),
                family,
            })?;
        self.release_family(claimant.owner, family);
        if claimant.sharing.is_none() {
            self.taken_below.insert(range, addr);
        }
        self.insert(claimant, addr);
        Ok(addr)
    }

    /// The lowest address of `range` the claimant may take: one nobody
    /// holds, or one it may share.
    fn lowest_available(
        &self,
        pool: &Pool,
        range: &RangeInclusive<IpAddr>,
        claimant: &Claimant,
    ) -> Option<IpAddr> {
        let family = Family::of(*range.start());
        let end = number(*range.end());
        // Only one that shares can have an address someone holds.
        let start = match claimant.sharing {
            None => self.taken_below.get(range.start()).unwrap_or(range.start()),
            Some(_) => range.start(),
        };
        let mut candidate = number(*start);
        // Used addresses come sorted: walked once, alongside the candidate.
        let mut used = self.holders.range(*start..=*range.end()).peekable();
        loop {
            if candidate > end {
                return None;
            }
            let addr = address(family, candidate)?;
            if pool.avoids(addr) {
                candidate += 1;
                continue;
            }
            while used.next_if(|(used, _)| **used < addr).is_some() {}
            match used.peek() {
                Some((used, holders)) if **used == addr => {
                    if shareable(holders, claimant) {
                        return Some(addr);
                    }
                    // Past the top of the IPv6 space: every address up to it is used.
                    candidate = candidate.checked_add(1)?;
                }
                _ => return Some(addr),
            }
        }
    }

    /// Records an address the claimant uses (requested, or found in its
    /// status), so it is never handed to another Service it cannot share
    /// with, if it may have it ([`Self::admit`]). A claimant claiming a new
    /// address gives up its old one of that family, as when a Service's
    /// requested address changes.
    pub fn claim(&mut self, claimant: &Claimant, addr: IpAddr) -> Result<(), PoolError> {
        self.admit(claimant, addr)?;
        if self.lookup(claimant.owner, Family::of(addr)) == Some(addr) {
            self.insert(claimant, addr);
            return Ok(());
        }
        if let Some(holders) = self.holders.get(&addr)
            && !shareable(holders, claimant)
        {
            let owner = holders.keys().find(|owner| *owner != claimant.owner);
            return Err(PoolError::AlreadyTaken {
                addr,
                owner: owner.cloned().unwrap_or_default(),
            });
        }
        self.join(claimant, addr);
        Ok(())
    }

    /// Whether the claimant may have `addr`: its pool admits it, and one
    /// outside every pool is fine unless the pools are strict (they just
    /// reserve nothing inside one). Asked every round, also of an address
    /// held: a pool's terms or the Service's labels may have changed since.
    pub fn admit(&self, claimant: &Claimant, addr: IpAddr) -> Result<(), PoolError> {
        match self.pool_of(addr) {
            Some(pool) => pool
                .admits(&claimant.service)
                .map_err(PoolError::NotAdmitted),
            None if self.strict => Err(PoolError::OutsidePools(addr)),
            None => Ok(()),
        }
    }

    /// Records that the claimant uses `addr` along with its holders, which
    /// the caller found it may share with and [`Self::admit`] it to.
    pub fn join(&mut self, claimant: &Claimant, addr: IpAddr) {
        if self.lookup(claimant.owner, Family::of(addr)) != Some(addr) {
            self.release_family(claimant.owner, Family::of(addr));
        }
        // Also when it holds the address already: its terms (ports, key)
        // may have changed, and they decide who may share it next.
        self.insert(claimant, addr);
    }

    /// Whether `owner` holds `addr` on the sharing terms `sharing`, as it
    /// did when it last claimed it.
    pub fn holds_on_terms(&self, owner: &str, addr: IpAddr, sharing: Option<&Sharing>) -> bool {
        self.holders
            .get(&addr)
            .and_then(|holders| holders.get(owner))
            .is_some_and(|recorded| recorded.as_ref() == sharing)
    }

    /// Frees every owner not in `live` (Services gone or no longer served) and
    /// returns them with each address they held.
    pub fn retain_owners(&mut self, live: &BTreeSet<&str>) -> Vec<(String, IpAddr)> {
        let gone: Vec<(String, IpAddr)> = self
            .allocations
            .iter()
            .filter(|((owner, _), _)| !live.contains(owner.as_str()))
            .map(|((owner, _), addr)| (owner.clone(), *addr))
            .collect();
        for (owner, addr) in &gone {
            self.release_family(owner, Family::of(*addr));
        }
        gone
    }

    pub fn release_family(&mut self, owner: &str, family: Family) {
        let Some(addr) = self.allocations.remove(&(owner.to_owned(), family)) else {
            return;
        };
        self.given_up.push((owner.to_owned(), addr));
        if let Some(holders) = self.holders.get_mut(&addr) {
            holders.remove(owner);
            if holders.is_empty() {
                self.holders.remove(&addr);
                self.taken_below.clear();
            }
        }
    }

    /// The addresses released since the last call, with their owners: a
    /// Service gone, no longer served, or moved to another address.
    pub fn take_given_up(&mut self) -> Vec<(String, IpAddr)> {
        std::mem::take(&mut self.given_up)
    }

    pub fn lookup(&self, owner: &str, family: Family) -> Option<IpAddr> {
        self.allocations.get(&(owner.to_owned(), family)).copied()
    }

    fn insert(&mut self, claimant: &Claimant, addr: IpAddr) {
        let family = Family::of(addr);
        let owner = claimant.owner.to_owned();
        self.allocations.insert((owner.clone(), family), addr);
        let holders = self.holders.entry(addr).or_default();
        holders.insert(owner, claimant.sharing.cloned());
    }
}

/// Whether the claimant may use an address these Services use: it is the
/// only one, or every other one shares with it.
fn shareable(holders: &Holders, claimant: &Claimant) -> bool {
    holders
        .iter()
        .filter(|(owner, _)| *owner != claimant.owner)
        .all(|(_, theirs)| match (theirs, claimant.sharing) {
            (Some(theirs), Some(ours)) => {
                theirs.key == ours.key
                    && theirs.backend == ours.backend
                    && theirs.listeners.is_disjoint(&ours.listeners)
            }
            _ => false,
        })
}

#[cfg(test)]
mod tests;
