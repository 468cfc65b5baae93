//! VIP allocation from named pools of address ranges.
//!
//! The pools hold no state beyond what the cluster already records: on start the
//! agent claims every address Services use (requested or in their status) before
//! allocating, so a restart hands every Service back the address it had.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
    ops::RangeInclusive,
};

use ipnet::Ipv4Net;
use thiserror::Error;

#[derive(Error, Debug, PartialEq, Eq)]
pub enum PoolError {
    #[error("VIP pool {pool} has no free address left")]
    Exhausted { pool: String },
    #[error("address {addr} is already held by {owner}")]
    AlreadyTaken { addr: Ipv4Addr, owner: String },
    #[error("no VIP pool named {0:?}")]
    UnknownPool(String),
    #[error("no VIP pool is configured")]
    NoPool,
    #[error("invalid VIP pool {text:?}: {reason}")]
    Invalid { text: String, reason: String },
}

/// A named set of address ranges, e.g. `public=198.51.100.0/28,198.51.100.40-198.51.100.50`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    name: String,
    /// Inclusive `u32` ranges, sorted and disjoint.
    ranges: Vec<RangeInclusive<u32>>,
}

impl Pool {
    /// Parses `NAME=RANGE[,RANGE...]`, each RANGE a CIDR or `FIRST-LAST`.
    pub fn parse(text: &str) -> Result<Self, PoolError> {
        let invalid = |reason: &str| PoolError::Invalid {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, ranges) = text
            .split_once('=')
            .ok_or_else(|| invalid("expected NAME=RANGE[,RANGE...]"))?;
        let ranges = ranges
            .split(',')
            .map(|range| parse_range(range.trim()).map_err(|reason| invalid(&reason)))
            .collect::<Result<_, _>>()?;
        Self::new(name.trim(), ranges).map_err(|reason| invalid(&reason))
    }

    /// A pool named `name` covering one CIDR (the `--vip-pool` flag).
    pub fn from_cidr(name: &str, text: &str) -> Result<Self, PoolError> {
        let range = parse_cidr(text.trim()).map_err(|reason| PoolError::Invalid {
            text: text.to_owned(),
            reason,
        })?;
        Self::new(name, vec![range]).map_err(|reason| PoolError::Invalid {
            text: text.to_owned(),
            reason,
        })
    }

    fn new(name: &str, mut ranges: Vec<RangeInclusive<u32>>) -> Result<Self, String> {
        if name.is_empty() {
            return Err("the pool needs a name".to_owned());
        }
        ranges.sort_by_key(|range| *range.start());
        if ranges.windows(2).any(|w| w[0].end() >= w[1].start()) {
            return Err("ranges overlap".to_owned());
        }
        Ok(Self {
            name: name.to_owned(),
            ranges,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let addr = u32::from(addr);
        self.ranges.iter().any(|range| range.contains(&addr))
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<String> = self
            .ranges
            .iter()
            .map(|range| {
                let (first, last) = (Ipv4Addr::from(*range.start()), Ipv4Addr::from(*range.end()));
                format!("{first}-{last}")
            })
            .collect();
        write!(f, "{} ({})", self.name, ranges.join(","))
    }
}

/// `FIRST-LAST` or a CIDR.
fn parse_range(text: &str) -> Result<RangeInclusive<u32>, String> {
    let Some((first, last)) = text.split_once('-') else {
        return parse_cidr(text);
    };
    let parse = |part: &str| {
        part.trim()
            .parse::<Ipv4Addr>()
            .map(u32::from)
            .map_err(|_| format!("{part:?} is not an IPv4 address"))
    };
    let (first, last) = (parse(first)?, parse(last)?);
    if first > last {
        return Err(format!("{text:?} ends before it starts"));
    }
    Ok(first..=last)
}

/// The usable addresses of a CIDR: without the network and broadcast addresses,
/// except in a /31 or /32, which have none (RFC 3021).
fn parse_cidr(text: &str) -> Result<RangeInclusive<u32>, String> {
    let net = text
        .parse::<Ipv4Net>()
        .map_err(|e| format!("{text:?}: {e}, expected an IPv4 CIDR or FIRST-LAST"))?
        .trunc();
    let (network, broadcast) = (u32::from(net.network()), u32::from(net.broadcast()));
    Ok(if net.prefix_len() < 31 {
        network + 1..=broadcast - 1
    } else {
        network..=broadcast
    })
}

/// Addresses handed to Services, sticky per owner (the Service's `namespace/name`).
/// One owner holds at most one address; an address has at most one owner across
/// all pools, so conflicts are found wherever the address came from.
#[derive(Debug, Clone, Default)]
pub struct Pools {
    /// The first one is the default for Services that name none.
    pools: Vec<Pool>,
    allocations: BTreeMap<String, Ipv4Addr>,
    /// The reverse of `allocations`, so conflicts are found without a scan and free
    /// addresses by walking only the used ones in order.
    owners: BTreeMap<Ipv4Addr, String>,
}

impl Pools {
    /// Pools with distinct names and no address in two of them.
    pub fn new(pools: Vec<Pool>) -> Result<Self, PoolError> {
        for (index, pool) in pools.iter().enumerate() {
            for other in &pools[..index] {
                let overlap = pool.ranges.iter().any(|a| {
                    other
                        .ranges
                        .iter()
                        .any(|b| a.start() <= b.end() && b.start() <= a.end())
                });
                if other.name == pool.name || overlap {
                    return Err(PoolError::Invalid {
                        text: pool.to_string(),
                        reason: format!("clashes with pool {other}"),
                    });
                }
            }
        }
        Ok(Self {
            pools,
            ..Self::default()
        })
    }

    /// The pool `name`, or the default one.
    pub fn pool(&self, name: Option<&str>) -> Result<&Pool, PoolError> {
        match name {
            Some(name) => self
                .pools
                .iter()
                .find(|pool| pool.name == name)
                .ok_or_else(|| PoolError::UnknownPool(name.to_owned())),
            None => self.pools.first().ok_or(PoolError::NoPool),
        }
    }

    /// The owner's address in pool `name` (the default when `None`): the one it
    /// holds if that is in the pool, else the lowest free one (then it gives up
    /// any address it held elsewhere).
    pub fn allocate(&mut self, owner: &str, name: Option<&str>) -> Result<Ipv4Addr, PoolError> {
        let pool = self.pool(name)?;
        if let Some(held) = self.lookup(owner).filter(|&held| pool.contains(held)) {
            return Ok(held);
        }
        let addr = pool
            .ranges
            .iter()
            .find_map(|range| self.lowest_free(range))
            .ok_or_else(|| PoolError::Exhausted {
                pool: pool.name.clone(),
            })?;
        self.release(owner);
        self.insert(owner, addr);
        Ok(addr)
    }

    /// The lowest address of `range` no owner holds.
    fn lowest_free(&self, range: &RangeInclusive<u32>) -> Option<Ipv4Addr> {
        // Used addresses come sorted and distinct, so until the first gap the
        // k-th one is `start + k`; the first one that is not marks a free address.
        let mut candidate = u64::from(*range.start());
        let used = self
            .owners
            .range(Ipv4Addr::from(*range.start())..=Ipv4Addr::from(*range.end()));
        for (addr, _) in used {
            if u64::from(u32::from(*addr)) != candidate {
                break;
            }
            candidate += 1;
        }
        u32::try_from(candidate)
            .ok()
            .filter(|candidate| candidate <= range.end())
            .map(Ipv4Addr::from)
    }

    /// Records an address the owner uses (requested, or found in its status), so
    /// it is never handed to another owner. Addresses outside every pool are fine
    /// (they just reserve nothing inside one). An owner claiming a new address
    /// gives up its old one, as when a Service's requested address changes.
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

    /// Frees every owner not in `live` (Services gone or no longer served) and
    /// returns them with the address each held.
    pub fn retain_owners(&mut self, live: &BTreeSet<&str>) -> Vec<(String, Ipv4Addr)> {
        let gone: Vec<(String, Ipv4Addr)> = self
            .allocations
            .iter()
            .filter(|(owner, _)| !live.contains(owner.as_str()))
            .map(|(owner, addr)| (owner.clone(), *addr))
            .collect();
        for (owner, _) in &gone {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn pools(specs: &[&str]) -> Pools {
        Pools::new(
            specs
                .iter()
                .map(|spec| Pool::parse(spec).unwrap())
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn cidrs_skip_network_and_broadcast_except_in_tiny_prefixes() {
        let mut p = pools(&["a=198.51.100.0/29"]);
        let got: Vec<Ipv4Addr> = (0..6)
            .map(|i| p.allocate(&format!("ns/s{i}"), None).unwrap())
            .collect();
        let want: Vec<Ipv4Addr> = (1..=6).map(|i| Ipv4Addr::new(198, 51, 100, i)).collect();
        assert_eq!(got, want);
        assert_eq!(
            p.allocate("ns/s6", None),
            Err(PoolError::Exhausted { pool: "a".into() })
        );

        let mut p = pools(&["a=198.51.100.6/31,198.51.100.9/32"]);
        let got: Vec<Ipv4Addr> = ["ns/a", "ns/b", "ns/c"]
            .iter()
            .map(|owner| p.allocate(owner, None).unwrap())
            .collect();
        assert_eq!(
            got,
            [ip("198.51.100.6"), ip("198.51.100.7"), ip("198.51.100.9")]
        );

        // The very top of the address space must not overflow the search.
        let mut top = pools(&["top=255.255.255.254/31"]);
        assert_eq!(top.allocate("a/a", None), Ok(ip("255.255.255.254")));
        assert_eq!(top.allocate("a/b", None), Ok(ip("255.255.255.255")));
        assert!(matches!(
            top.allocate("a/c", None),
            Err(PoolError::Exhausted { .. })
        ));
    }

    #[test]
    fn ranges_and_named_pools() {
        let mut p = pools(&[
            "public=198.51.100.20-198.51.100.22,198.51.100.30-198.51.100.30",
            "internal=10.9.0.0/30",
        ]);
        let public: Vec<Ipv4Addr> = ["ns/a", "ns/b", "ns/c", "ns/d"]
            .iter()
            .map(|owner| p.allocate(owner, Some("public")).unwrap())
            .collect();
        assert_eq!(
            public,
            ["20", "21", "22", "30"].map(|last| ip(&format!("198.51.100.{last}")))
        );
        assert_eq!(
            p.allocate("ns/e", None),
            Err(PoolError::Exhausted {
                pool: "public".into()
            })
        );
        assert_eq!(p.allocate("ns/e", Some("internal")), Ok(ip("10.9.0.1")));
        assert_eq!(
            p.allocate("ns/f", Some("nope")),
            Err(PoolError::UnknownPool("nope".into()))
        );
        // Switching pools moves the owner and frees its old address.
        assert_eq!(p.allocate("ns/a", Some("internal")), Ok(ip("10.9.0.2")));
        assert_eq!(p.allocate("ns/g", Some("public")), Ok(ip("198.51.100.20")));
        assert_eq!(
            Pools::default().allocate("ns/a", None),
            Err(PoolError::NoPool)
        );
    }

    #[test]
    fn allocation_is_sticky_and_claims_conflict() {
        let mut p = pools(&["a=198.51.100.0/28"]);
        p.claim("ns/a", ip("198.51.100.1")).unwrap();
        p.claim("ns/b", ip("198.51.100.3")).unwrap();
        p.claim("ns/a", ip("198.51.100.1")).unwrap();
        assert_eq!(p.allocate("ns/a", None), Ok(ip("198.51.100.1")));
        // Allocation fills the gaps around claimed addresses.
        assert_eq!(p.allocate("ns/c", None), Ok(ip("198.51.100.2")));
        assert_eq!(p.allocate("ns/d", None), Ok(ip("198.51.100.4")));
        assert_eq!(p.allocate("ns/c", None), Ok(ip("198.51.100.2")));
        let err = p.claim("other/x", ip("198.51.100.3")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "address 198.51.100.3 is already held by ns/b"
        );
        assert_eq!(p.lookup("other/x"), None);
        // Outside every pool: recorded, exclusive, reserving nothing inside.
        p.claim("ns/e", ip("203.0.113.7")).unwrap();
        assert!(p.claim("ns/f", ip("203.0.113.7")).is_err());
        assert_eq!(p.allocate("ns/f", None), Ok(ip("198.51.100.5")));
        // A claim elsewhere moves the owner; allocating again brings it back into the pool.
        assert_eq!(p.allocate("ns/e", None), Ok(ip("198.51.100.6")));
        p.claim("ns/a", ip("198.51.100.9")).unwrap();
        assert_eq!(p.allocate("ns/g", None), Ok(ip("198.51.100.1")));
    }

    #[test]
    fn retain_owners_returns_what_it_frees() {
        let mut p = pools(&["a=198.51.100.0/28"]);
        for owner in ["ns/a", "ns/b", "ns/c"] {
            p.allocate(owner, None).unwrap();
        }
        let live = BTreeSet::from(["ns/b"]);
        assert_eq!(
            p.retain_owners(&live),
            [
                ("ns/a".to_owned(), ip("198.51.100.1")),
                ("ns/c".to_owned(), ip("198.51.100.3"))
            ]
        );
        assert_eq!(p.lookup("ns/b"), Some(ip("198.51.100.2")));
        assert_eq!(p.allocate("ns/d", None), Ok(ip("198.51.100.1")));
    }

    #[test]
    fn parse_names_bad_input() {
        for bad in [
            "",
            "noname",
            "=198.51.100.0/28",
            "a=not-a-cidr",
            "a=198.51.100.0/33",
            "a=2001:db8::/64",
            "a=198.51.100.9-198.51.100.1",
            "a=198.51.100.0/28,198.51.100.8-198.51.100.20",
        ] {
            let err = Pool::parse(bad).unwrap_err();
            assert!(matches!(err, PoolError::Invalid { .. }), "{bad}: {err:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(Pool::from_cidr("default", "198.51.100.0").is_err());
        let clash = |specs: &[&str]| {
            Pools::new(specs.iter().map(|s| Pool::parse(s).unwrap()).collect()).is_err()
        };
        assert!(clash(&["a=10.0.0.0/24", "a=10.0.1.0/24"]));
        assert!(clash(&["a=10.0.0.0/24", "b=10.0.0.200-10.0.1.5"]));
        assert!(!clash(&["a=10.0.0.0/24", "b=10.0.1.0/24"]));
    }
}
