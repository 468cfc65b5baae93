//! VIP allocation from named pools of address ranges, IPv4 and IPv6 alike.
//!
//! The pools hold no state beyond what the cluster already records: on start the
//! agent claims every address Services use (requested or in their status) before
//! allocating, so a restart hands every Service back the addresses it had.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
};

use ipnet::IpNet;
use thiserror::Error;

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
    #[error("invalid VIP pool {text:?}: {reason}")]
    Invalid { text: String, reason: String },
}

/// A named set of address ranges of either family, e.g.
/// `public=198.51.100.0/28,198.51.100.40-198.51.100.50,2001:db8::/120`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    name: String,
    /// Inclusive ranges, each of one family, sorted (IPv4 first) and disjoint.
    ranges: Vec<RangeInclusive<IpAddr>>,
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
        let invalid = |reason| PoolError::Invalid {
            text: text.to_owned(),
            reason,
        };
        let range = parse_cidr(text.trim()).map_err(invalid)?;
        Self::new(name, vec![range]).map_err(invalid)
    }

    fn new(name: &str, mut ranges: Vec<RangeInclusive<IpAddr>>) -> Result<Self, String> {
        if name.is_empty() {
            return Err("the pool needs a name".to_owned());
        }
        // Every IPv4 address sorts before every IPv6 one, so only ranges of
        // one family can overlap.
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

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.ranges.iter().any(|range| range.contains(&addr))
    }

    /// Whether the pool has addresses of `family` at all (free or not).
    pub fn supplies(&self, family: Family) -> bool {
        self.ranges_of(family).next().is_some()
    }

    fn ranges_of(&self, family: Family) -> impl Iterator<Item = &RangeInclusive<IpAddr>> {
        let ranges = self.ranges.iter();
        ranges.filter(move |range| Family::of(*range.start()) == family)
    }

    fn overlaps(&self, other: &Pool) -> bool {
        self.ranges.iter().any(|a| {
            other
                .ranges
                .iter()
                .any(|b| a.start() <= b.end() && b.start() <= a.end())
        })
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<String> = self
            .ranges
            .iter()
            .map(|range| format!("{}-{}", range.start(), range.end()))
            .collect();
        write!(f, "{} ({})", self.name, ranges.join(","))
    }
}

/// `FIRST-LAST` (one family) or a CIDR.
fn parse_range(text: &str) -> Result<RangeInclusive<IpAddr>, String> {
    let Some((first, last)) = text.split_once('-') else {
        return parse_cidr(text);
    };
    let parse = |part: &str| {
        part.trim()
            .parse::<IpAddr>()
            .map_err(|_| format!("{part:?} is not an IP address"))
    };
    let (first, last) = (parse(first)?, parse(last)?);
    if Family::of(first) != Family::of(last) {
        return Err(format!("{text:?} mixes IPv4 and IPv6"));
    }
    if first > last {
        return Err(format!("{text:?} ends before it starts"));
    }
    Ok(first..=last)
}

/// The usable addresses of a CIDR. IPv4: without the network and broadcast
/// addresses, except in a /31 or /32, which have none (RFC 3021). IPv6:
/// without the all-zero host, the subnet-router anycast address (RFC 4291),
/// except in a /127 (RFC 6164) or /128.
fn parse_cidr(text: &str) -> Result<RangeInclusive<IpAddr>, String> {
    let net = text
        .parse::<IpNet>()
        .map_err(|e| format!("{text:?}: {e}, expected a CIDR or FIRST-LAST"))?
        .trunc();
    let (network, last) = (number(net.network()), number(net.broadcast()));
    let family = Family::of(net.addr());
    let has_special_hosts = net.prefix_len() < net.max_prefix_len() - 1;
    let (first, last) = match family {
        _ if !has_special_hosts => (network, last),
        Family::V4 => (network + 1, last - 1),
        Family::V6 => (network + 1, last),
    };
    let address = |number| address(family, number).expect("within the CIDR");
    Ok(address(first)..=address(last))
}

/// An address as a number within its family, to walk ranges.
fn number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of `family` numbered `number`, if there is one.
fn address(family: Family, number: u128) -> Option<IpAddr> {
    match family {
        Family::V4 => u32::try_from(number).ok().map(|n| Ipv4Addr::from(n).into()),
        Family::V6 => Some(Ipv6Addr::from(number).into()),
    }
}

/// Addresses handed to Services, sticky per owner (the Service's `namespace/name`).
/// One owner holds at most one address per family; an address has at most one
/// owner across all pools, so conflicts are found wherever the address came from.
#[derive(Debug, Clone, Default)]
pub struct Pools {
    /// The first one is the default for Services that name none.
    pools: Vec<Pool>,
    allocations: BTreeMap<(String, Family), IpAddr>,
    /// The reverse of `allocations`, so conflicts are found without a scan and free
    /// addresses by walking only the used ones in order.
    owners: BTreeMap<IpAddr, String>,
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

    /// The pool `addr` is in, if any.
    pub fn pool_of(&self, addr: IpAddr) -> Option<&Pool> {
        self.pools.iter().find(|pool| pool.contains(addr))
    }

    /// The owner's `family` address in pool `name` (the default when `None`):
    /// the one it holds if that is in the pool, else the lowest free one (then
    /// it gives up any address of that family it held elsewhere).
    pub fn allocate(
        &mut self,
        owner: &str,
        name: Option<&str>,
        family: Family,
    ) -> Result<IpAddr, PoolError> {
        let pool = self.pool(name)?;
        if let Some(held) = self
            .lookup(owner, family)
            .filter(|&held| pool.contains(held))
        {
            return Ok(held);
        }
        if !pool.supplies(family) {
            return Err(PoolError::NoRange {
                pool: pool.name.clone(),
                family,
            });
        }
        let addr = pool
            .ranges_of(family)
            .find_map(|range| self.lowest_free(range))
            .ok_or_else(|| PoolError::Exhausted {
                pool: pool.name.clone(),
                family,
            })?;
        self.release_family(owner, family);
        self.insert(owner, addr);
        Ok(addr)
    }

    /// The lowest address of `range` no owner holds.
    fn lowest_free(&self, range: &RangeInclusive<IpAddr>) -> Option<IpAddr> {
        // Used addresses come sorted and distinct, so until the first gap the
        // k-th one is `start + k`; the first one that is not marks a free address.
        let mut candidate = number(*range.start());
        for (addr, _) in self.owners.range(range.clone()) {
            if number(*addr) != candidate {
                break;
            }
            // Past the top of the IPv6 space: every address up to it is used.
            candidate = candidate.checked_add(1)?;
        }
        address(Family::of(*range.start()), candidate).filter(|candidate| candidate <= range.end())
    }

    /// Records an address the owner uses (requested, or found in its status), so
    /// it is never handed to another owner. Addresses outside every pool are fine
    /// (they just reserve nothing inside one). An owner claiming a new address
    /// gives up its old one of that family, as when a Service's requested
    /// address changes.
    pub fn claim(&mut self, owner: &str, addr: IpAddr) -> Result<(), PoolError> {
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
        self.release_family(owner, Family::of(addr));
        self.insert(owner, addr);
        Ok(())
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
        if let Some(addr) = self.allocations.remove(&(owner.to_owned(), family)) {
            self.owners.remove(&addr);
        }
    }

    pub fn lookup(&self, owner: &str, family: Family) -> Option<IpAddr> {
        self.allocations.get(&(owner.to_owned(), family)).copied()
    }

    fn insert(&mut self, owner: &str, addr: IpAddr) {
        let family = Family::of(addr);
        self.allocations.insert((owner.to_owned(), family), addr);
        self.owners.insert(addr, owner.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: Family = Family::V4;
    const V6: Family = Family::V6;

    fn ip(text: &str) -> IpAddr {
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
        let got: Vec<IpAddr> = (0..6)
            .map(|i| p.allocate(&format!("ns/s{i}"), None, V4).unwrap())
            .collect();
        let want: Vec<IpAddr> = (1..=6).map(|i| ip(&format!("198.51.100.{i}"))).collect();
        assert_eq!(got, want);
        assert_eq!(
            p.allocate("ns/s6", None, V4),
            Err(PoolError::Exhausted {
                pool: "a".into(),
                family: V4
            })
        );

        let mut p = pools(&["a=198.51.100.6/31,198.51.100.9/32"]);
        let got: Vec<IpAddr> = ["ns/a", "ns/b", "ns/c"]
            .iter()
            .map(|owner| p.allocate(owner, None, V4).unwrap())
            .collect();
        assert_eq!(
            got,
            [ip("198.51.100.6"), ip("198.51.100.7"), ip("198.51.100.9")]
        );

        // The very top of the address space must not overflow the search.
        let mut top = pools(&["top=255.255.255.254/31"]);
        assert_eq!(top.allocate("a/a", None, V4), Ok(ip("255.255.255.254")));
        assert_eq!(top.allocate("a/b", None, V4), Ok(ip("255.255.255.255")));
        assert!(matches!(
            top.allocate("a/c", None, V4),
            Err(PoolError::Exhausted { .. })
        ));
    }

    #[test]
    fn ipv6_cidrs_skip_only_the_subnet_router_anycast_address() {
        let mut p = pools(&["a=2001:db8::/126"]);
        let got: Vec<IpAddr> = (0..3)
            .map(|i| p.allocate(&format!("ns/s{i}"), None, V6).unwrap())
            .collect();
        assert_eq!(
            got,
            [ip("2001:db8::1"), ip("2001:db8::2"), ip("2001:db8::3")]
        );
        assert_eq!(
            p.allocate("ns/s3", None, V6).unwrap_err().to_string(),
            "VIP pool a has no free IPv6 address left"
        );

        // A /127 (RFC 6164) and a /128 have no anycast address to skip.
        let mut p = pools(&["a=2001:db8::6/127,2001:db8::9/128"]);
        let got: Vec<IpAddr> = ["ns/a", "ns/b", "ns/c"]
            .iter()
            .map(|owner| p.allocate(owner, None, V6).unwrap())
            .collect();
        assert_eq!(
            got,
            [ip("2001:db8::6"), ip("2001:db8::7"), ip("2001:db8::9")]
        );

        let mut top = pools(&["top=ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"]);
        for owner in ["a/a", "a/b"] {
            top.allocate(owner, None, V6).unwrap();
        }
        assert!(matches!(
            top.allocate("a/c", None, V6),
            Err(PoolError::Exhausted { .. })
        ));
    }

    #[test]
    fn dual_stack_pools_allocate_one_address_per_family() {
        let mut p = pools(&[
            "mixed=2001:db8::10-2001:db8::11,198.51.100.0/30",
            "v4=10.9.0.0/30",
        ]);
        assert_eq!(p.allocate("ns/a", None, V6), Ok(ip("2001:db8::10")));
        assert_eq!(p.allocate("ns/a", None, V4), Ok(ip("198.51.100.1")));
        // Sticky per family: both addresses stay the owner's.
        assert_eq!(p.allocate("ns/a", None, V6), Ok(ip("2001:db8::10")));
        assert_eq!(p.lookup("ns/a", V4), Some(ip("198.51.100.1")));
        assert_eq!(p.allocate("ns/b", None, V6), Ok(ip("2001:db8::11")));
        assert_eq!(
            p.allocate("ns/c", None, V6).unwrap_err().to_string(),
            "VIP pool mixed has no free IPv6 address left"
        );
        assert_eq!(
            p.allocate("ns/c", Some("v4"), V6),
            Err(PoolError::NoRange {
                pool: "v4".into(),
                family: V6
            })
        );
        assert!(p.pool(None).unwrap().supplies(V6));
        assert!(!p.pool(Some("v4")).unwrap().supplies(V6));
        // Giving up one family leaves the other.
        p.release_family("ns/a", V6);
        assert_eq!(p.lookup("ns/a", V6), None);
        assert_eq!(p.lookup("ns/a", V4), Some(ip("198.51.100.1")));
        assert_eq!(p.allocate("ns/c", None, V6), Ok(ip("2001:db8::10")));
        assert_eq!(
            Pool::parse("m=2001:db8::/127,10.0.0.0/31")
                .unwrap()
                .to_string(),
            "m (10.0.0.0-10.0.0.1,2001:db8::-2001:db8::1)"
        );
    }

    #[test]
    fn ranges_and_named_pools() {
        let mut p = pools(&[
            "public=198.51.100.20-198.51.100.22,198.51.100.30-198.51.100.30",
            "internal=10.9.0.0/30",
        ]);
        let public: Vec<IpAddr> = ["ns/a", "ns/b", "ns/c", "ns/d"]
            .iter()
            .map(|owner| p.allocate(owner, Some("public"), V4).unwrap())
            .collect();
        assert_eq!(
            public,
            ["20", "21", "22", "30"].map(|last| ip(&format!("198.51.100.{last}")))
        );
        assert_eq!(
            p.allocate("ns/e", None, V4),
            Err(PoolError::Exhausted {
                pool: "public".into(),
                family: V4
            })
        );
        assert_eq!(p.allocate("ns/e", Some("internal"), V4), Ok(ip("10.9.0.1")));
        assert_eq!(
            p.allocate("ns/f", Some("nope"), V4),
            Err(PoolError::UnknownPool("nope".into()))
        );
        // Switching pools moves the owner and frees its old address.
        assert_eq!(p.allocate("ns/a", Some("internal"), V4), Ok(ip("10.9.0.2")));
        assert_eq!(
            p.allocate("ns/g", Some("public"), V4),
            Ok(ip("198.51.100.20"))
        );
        assert_eq!(
            Pools::default().allocate("ns/a", None, V4),
            Err(PoolError::NoPool)
        );
    }

    #[test]
    fn allocation_is_sticky_and_claims_conflict() {
        let mut p = pools(&["a=198.51.100.0/28,2001:db8::/124"]);
        p.claim("ns/a", ip("198.51.100.1")).unwrap();
        p.claim("ns/b", ip("198.51.100.3")).unwrap();
        p.claim("ns/a", ip("198.51.100.1")).unwrap();
        assert_eq!(p.allocate("ns/a", None, V4), Ok(ip("198.51.100.1")));
        // Allocation fills the gaps around claimed addresses.
        assert_eq!(p.allocate("ns/c", None, V4), Ok(ip("198.51.100.2")));
        assert_eq!(p.allocate("ns/d", None, V4), Ok(ip("198.51.100.4")));
        assert_eq!(p.allocate("ns/c", None, V4), Ok(ip("198.51.100.2")));
        let err = p.claim("other/x", ip("198.51.100.3")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "address 198.51.100.3 is already held by ns/b"
        );
        assert_eq!(p.lookup("other/x", V4), None);
        // Outside every pool: recorded, exclusive, reserving nothing inside.
        p.claim("ns/e", ip("203.0.113.7")).unwrap();
        assert!(p.claim("ns/f", ip("203.0.113.7")).is_err());
        assert_eq!(p.allocate("ns/f", None, V4), Ok(ip("198.51.100.5")));
        // A claim elsewhere moves the owner; allocating again brings it back into the pool.
        assert_eq!(p.allocate("ns/e", None, V4), Ok(ip("198.51.100.6")));
        p.claim("ns/a", ip("198.51.100.9")).unwrap();
        assert_eq!(p.allocate("ns/g", None, V4), Ok(ip("198.51.100.1")));
        // Claims are per family: an IPv6 claim keeps the owner's IPv4 address.
        p.claim("ns/a", ip("2001:db8::2")).unwrap();
        assert_eq!(p.lookup("ns/a", V4), Some(ip("198.51.100.9")));
        assert_eq!(p.allocate("ns/h", None, V6), Ok(ip("2001:db8::1")));
        assert_eq!(p.allocate("ns/i", None, V6), Ok(ip("2001:db8::3")));
        assert_eq!(
            p.claim("ns/h", ip("2001:db8::2")).unwrap_err().to_string(),
            "address 2001:db8::2 is already held by ns/a"
        );
    }

    #[test]
    fn retain_owners_returns_what_it_frees() {
        let mut p = pools(&["a=198.51.100.0/28,2001:db8::/120"]);
        for owner in ["ns/a", "ns/b", "ns/c"] {
            p.allocate(owner, None, V4).unwrap();
        }
        p.allocate("ns/a", None, V6).unwrap();
        let live = BTreeSet::from(["ns/b"]);
        assert_eq!(
            p.retain_owners(&live),
            [
                ("ns/a".to_owned(), ip("198.51.100.1")),
                ("ns/a".to_owned(), ip("2001:db8::1")),
                ("ns/c".to_owned(), ip("198.51.100.3"))
            ]
        );
        assert_eq!(p.lookup("ns/b", V4), Some(ip("198.51.100.2")));
        assert_eq!(p.allocate("ns/d", None, V4), Ok(ip("198.51.100.1")));
        assert_eq!(p.allocate("ns/d", None, V6), Ok(ip("2001:db8::1")));
    }

    #[test]
    fn parse_names_bad_input() {
        for bad in [
            "",
            "noname",
            "=198.51.100.0/28",
            "a=not-a-cidr",
            "a=198.51.100.0/33",
            "a=2001:db8::/129",
            "a=198.51.100.9-198.51.100.1",
            "a=2001:db8::9-2001:db8::1",
            "a=198.51.100.1-2001:db8::1",
            "a=198.51.100.0/28,198.51.100.8-198.51.100.20",
            "a=2001:db8::/64,2001:db8::ff-2001:db8:1::",
        ] {
            let err = Pool::parse(bad).unwrap_err();
            assert!(matches!(err, PoolError::Invalid { .. }), "{bad}: {err:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(
            Pool::parse("a=198.51.100.1-2001:db8::1")
                .unwrap_err()
                .to_string()
                .ends_with("\"198.51.100.1-2001:db8::1\" mixes IPv4 and IPv6")
        );
        assert!(Pool::from_cidr("default", "198.51.100.0").is_err());
        assert!(Pool::from_cidr("default", "2001:db8::/64").is_ok());
        let clash = |specs: &[&str]| {
            Pools::new(specs.iter().map(|s| Pool::parse(s).unwrap()).collect()).is_err()
        };
        assert!(clash(&["a=10.0.0.0/24", "a=10.0.1.0/24"]));
        assert!(clash(&["a=10.0.0.0/24", "b=10.0.0.200-10.0.1.5"]));
        assert!(!clash(&["a=10.0.0.0/24", "b=10.0.1.0/24"]));
        assert!(clash(&[
            "a=10.0.0.0/24,2001:db8::/64",
            "b=2001:db8::8000-2001:db8:1::"
        ]));
        // Families overlap only with themselves, however their numbers compare.
        assert!(!clash(&["a=0.0.0.0/8", "b=::/120"]));
        assert!(!clash(&[
            "a=10.0.0.0/24,2001:db8::/64",
            "b=10.0.1.0/24,2001:db8:1::/64"
        ]));
    }
}
