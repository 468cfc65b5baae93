//! VIP allocation from a CIDR pool.
//!
//! The pool holds no state beyond what the cluster already records: on start the agent
//! claims every address services use (requested or in their status) before allocating, so a
//! restart hands every service back the address it had.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use thiserror::Error;

#[derive(Error, Debug, PartialEq, Eq)]
pub enum PoolError {
    #[error("VIP pool {pool} has no free address left")]
    Exhausted { pool: String },
    #[error("address {addr} is already held by {owner}")]
    AlreadyTaken { addr: Ipv4Addr, owner: String },
    #[error("invalid VIP pool {0}")]
    Invalid(String),
}

/// Addresses handed to services, sticky per owner (the service's `namespace/name`).
#[derive(Debug, Clone)]
pub struct VipPool {
    cidr: Ipv4Net,
    allocations: BTreeMap<String, Ipv4Addr>,
    /// The reverse of `allocations`, kept so conflicts are found without a scan and free
    /// addresses by walking only the used ones in order.
    owners: BTreeMap<Ipv4Addr, String>,
}

impl VipPool {
    /// Host bits in `cidr` are dropped, so `198.51.100.5/28` means `198.51.100.0/28`.
    pub fn new(cidr: Ipv4Net) -> Self {
        VipPool {
            cidr: cidr.trunc(),
            allocations: BTreeMap::new(),
            owners: BTreeMap::new(),
        }
    }

    /// Parses "198.51.100.0/28"; error names the bad text.
    pub fn parse(text: &str) -> Result<Self, PoolError> {
        text.trim()
            .parse::<Ipv4Net>()
            .map(Self::new)
            .map_err(|e| PoolError::Invalid(format!("{text:?}: {e}, expected an IPv4 CIDR")))
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The owner's address: its existing allocation, else the lowest free usable host address
    /// (skip network and broadcast addresses for prefixes shorter than /31).
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, PoolError> {
        if let Some(addr) = self.lookup(owner) {
            return Ok(addr);
        }
        let (first, last) = self.usable();
        // Used addresses come sorted and distinct, so until the first gap the k-th one is
        // `first + k`; the first one that is not marks a free address.
        let mut candidate = u64::from(first);
        for used in self
            .owners
            .range(Ipv4Addr::from(first)..=Ipv4Addr::from(last))
        {
            if u64::from(u32::from(*used.0)) != candidate {
                break;
            }
            candidate += 1;
        }
        let addr = u32::try_from(candidate)
            .ok()
            .filter(|&c| c <= last)
            .map(Ipv4Addr::from)
            .ok_or_else(|| PoolError::Exhausted {
                pool: self.cidr.to_string(),
            })?;
        self.insert(owner, addr);
        Ok(addr)
    }

    /// Records an address the owner already uses (requested via spec.loadBalancerIP or found
    /// in status), so it is never handed to another owner. Addresses outside the pool are fine
    /// to record (they just reserve nothing inside it). An owner claiming a new address gives
    /// up its old one, as when a service's requested IP changes.
    pub fn claim(&mut self, owner: &str, addr: Ipv4Addr) -> Result<(), PoolError> {
        match self.owners.get(&addr) {
            Some(holder) if holder == owner => return Ok(()),
            Some(holder) => {
                return Err(PoolError::AlreadyTaken {
                    addr,
                    owner: holder.clone(),
                });
            }
            None => {}
        }
        self.release(owner);
        self.insert(owner, addr);
        Ok(())
    }

    /// Frees every owner not in `live` (services that disappeared), returning freed owners.
    pub fn retain_owners(&mut self, live: &BTreeSet<String>) -> Vec<String> {
        let gone: Vec<String> = self
            .allocations
            .keys()
            .filter(|owner| !live.contains(*owner))
            .cloned()
            .collect();
        for owner in &gone {
            self.release(owner);
        }
        gone
    }

    pub fn release(&mut self, owner: &str) {
        if let Some(addr) = self.allocations.remove(owner) {
            self.owners.remove(&addr);
        }
    }

    pub fn lookup(&self, owner: &str) -> Option<Ipv4Addr> {
        self.allocations.get(owner).copied()
    }

    fn insert(&mut self, owner: &str, addr: Ipv4Addr) {
        self.allocations.insert(owner.to_owned(), addr);
        self.owners.insert(addr, owner.to_owned());
    }

    /// First and last address a service may get. In a /31 or /32 there is no network or
    /// broadcast address to avoid (RFC 3021), so every address is usable.
    fn usable(&self) -> (u32, u32) {
        let network = u32::from(self.cidr.network());
        let broadcast = u32::from(self.cidr.broadcast());
        if self.cidr.prefix_len() < 31 {
            (network + 1, broadcast - 1)
        } else {
            (network, broadcast)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(text: &str) -> VipPool {
        VipPool::parse(text).unwrap()
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn allocates_sequentially_skipping_network_and_broadcast() {
        let mut pool = pool("198.51.100.0/29");
        let got: Vec<Ipv4Addr> = (0..6)
            .map(|i| pool.allocate(&format!("default/svc-{i}")).unwrap())
            .collect();
        let want: Vec<Ipv4Addr> = (1..=6).map(|i| Ipv4Addr::new(198, 51, 100, i)).collect();
        assert_eq!(got, want);
        assert_eq!(
            pool.allocate("default/svc-6"),
            Err(PoolError::Exhausted {
                pool: "198.51.100.0/29".into()
            })
        );
    }

    #[test]
    fn small_prefixes_use_every_address() {
        let mut pool31 = pool("198.51.100.6/31");
        assert_eq!(pool31.allocate("a/a"), Ok(ip("198.51.100.6")));
        assert_eq!(pool31.allocate("a/b"), Ok(ip("198.51.100.7")));
        assert!(matches!(
            pool31.allocate("a/c"),
            Err(PoolError::Exhausted { .. })
        ));

        let mut pool32 = pool("198.51.100.9/32");
        assert_eq!(pool32.allocate("a/a"), Ok(ip("198.51.100.9")));
        assert!(matches!(
            pool32.allocate("a/b"),
            Err(PoolError::Exhausted { .. })
        ));

        // The very top of the address space must not overflow the search.
        let mut top = pool("255.255.255.254/31");
        assert_eq!(top.allocate("a/a"), Ok(ip("255.255.255.254")));
        assert_eq!(top.allocate("a/b"), Ok(ip("255.255.255.255")));
        assert!(matches!(
            top.allocate("a/c"),
            Err(PoolError::Exhausted { .. })
        ));
    }

    #[test]
    fn allocation_is_sticky_per_owner() {
        let mut pool = pool("198.51.100.0/28");
        let a = pool.allocate("default/a").unwrap();
        let b = pool.allocate("default/b").unwrap();
        assert_ne!(a, b);
        assert_eq!(pool.allocate("default/a"), Ok(a));
        assert_eq!(pool.allocate("default/b"), Ok(b));
        assert_eq!(pool.lookup("default/a"), Some(a));
        assert_eq!(pool.lookup("default/missing"), None);
    }

    #[test]
    fn claims_reserve_addresses_and_conflict() {
        let mut pool = pool("198.51.100.0/28");
        pool.claim("default/a", ip("198.51.100.1")).unwrap();
        pool.claim("default/b", ip("198.51.100.3")).unwrap();
        // Claiming again what one already holds is fine.
        pool.claim("default/a", ip("198.51.100.1")).unwrap();
        assert_eq!(pool.allocate("default/a"), Ok(ip("198.51.100.1")));

        // Allocation fills the gaps around claimed addresses.
        assert_eq!(pool.allocate("default/c"), Ok(ip("198.51.100.2")));
        assert_eq!(pool.allocate("default/d"), Ok(ip("198.51.100.4")));

        let err = pool.claim("other/x", ip("198.51.100.3")).unwrap_err();
        assert_eq!(
            err,
            PoolError::AlreadyTaken {
                addr: ip("198.51.100.3"),
                owner: "default/b".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "address 198.51.100.3 is already held by default/b"
        );
        assert_eq!(pool.lookup("other/x"), None);

        // Outside the pool: recorded, sticky, exclusive, and reserving nothing inside.
        pool.claim("default/e", ip("203.0.113.7")).unwrap();
        assert_eq!(pool.lookup("default/e"), Some(ip("203.0.113.7")));
        assert_eq!(pool.allocate("default/e"), Ok(ip("203.0.113.7")));
        assert!(matches!(
            pool.claim("default/f", ip("203.0.113.7")),
            Err(PoolError::AlreadyTaken { .. })
        ));
        assert_eq!(pool.allocate("default/f"), Ok(ip("198.51.100.5")));

        // A new claim moves the owner, freeing its old address.
        pool.claim("default/a", ip("198.51.100.9")).unwrap();
        assert_eq!(pool.lookup("default/a"), Some(ip("198.51.100.9")));
        assert_eq!(pool.allocate("default/g"), Ok(ip("198.51.100.1")));
    }

    #[test]
    fn released_addresses_are_reused_lowest_first() {
        let mut pool = pool("198.51.100.0/28");
        for owner in ["ns/a", "ns/b", "ns/c", "ns/d"] {
            pool.allocate(owner).unwrap();
        }
        pool.release("ns/c");
        pool.release("ns/b");
        pool.release("ns/never-allocated");
        assert_eq!(pool.lookup("ns/b"), None);
        assert_eq!(pool.allocate("ns/e"), Ok(ip("198.51.100.2")));
        assert_eq!(pool.allocate("ns/f"), Ok(ip("198.51.100.3")));
        assert_eq!(pool.allocate("ns/g"), Ok(ip("198.51.100.5")));
        // A released owner that comes back gets whatever is free, not its old address.
        assert_eq!(pool.allocate("ns/b"), Ok(ip("198.51.100.6")));
    }

    #[test]
    fn exhaustion_on_a_slash_30() {
        let mut pool = pool("198.51.100.8/30");
        assert_eq!(pool.allocate("ns/a"), Ok(ip("198.51.100.9")));
        assert_eq!(pool.allocate("ns/b"), Ok(ip("198.51.100.10")));
        let err = pool.allocate("ns/c").unwrap_err();
        assert_eq!(
            err,
            PoolError::Exhausted {
                pool: "198.51.100.8/30".into()
            }
        );
        assert!(err.to_string().contains("198.51.100.8/30"), "{err}");
        // Existing owners still get theirs, and a release makes room again.
        assert_eq!(pool.allocate("ns/a"), Ok(ip("198.51.100.9")));
        pool.release("ns/a");
        assert_eq!(pool.allocate("ns/c"), Ok(ip("198.51.100.9")));
    }

    #[test]
    fn parse_accepts_cidrs_and_names_bad_input() {
        assert_eq!(
            pool("198.51.100.0/28").cidr(),
            "198.51.100.0/28".parse::<Ipv4Net>().unwrap()
        );
        assert_eq!(
            pool(" 198.51.100.5/28\n").cidr(),
            "198.51.100.0/28".parse::<Ipv4Net>().unwrap()
        );
        for bad in [
            "",
            "not-a-cidr",
            "198.51.100.0",
            "198.51.100.0/33",
            "198.51.100.256/24",
            "2001:db8::/64",
        ] {
            let err = VipPool::parse(bad).unwrap_err();
            assert!(matches!(err, PoolError::Invalid(_)), "{bad}: {err:?}");
            let message = err.to_string();
            assert!(message.contains(&format!("{bad:?}")), "{message}");
        }
    }

    #[test]
    fn retain_owners_frees_the_departed() {
        let mut pool = pool("198.51.100.0/28");
        for owner in ["ns/a", "ns/b", "ns/c", "ns/d"] {
            pool.allocate(owner).unwrap();
        }
        pool.claim("ns/outside", ip("203.0.113.1")).unwrap();
        let live: BTreeSet<String> = ["ns/a", "ns/c"].into_iter().map(String::from).collect();
        assert_eq!(pool.retain_owners(&live), ["ns/b", "ns/d", "ns/outside"]);
        assert_eq!(pool.lookup("ns/a"), Some(ip("198.51.100.1")));
        assert_eq!(pool.lookup("ns/c"), Some(ip("198.51.100.3")));
        assert_eq!(pool.lookup("ns/b"), None);
        assert_eq!(pool.lookup("ns/outside"), None);
        assert_eq!(pool.allocate("ns/e"), Ok(ip("198.51.100.2")));
        pool.claim("ns/f", ip("203.0.113.1")).unwrap();
        assert_eq!(pool.retain_owners(&live), ["ns/e", "ns/f"]);
        assert_eq!(pool.retain_owners(&live), Vec::<String>::new());
    }
}
