//! One pool: its address ranges and who may have its addresses.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
};

use ipnet::IpNet;

use super::PoolError;
use crate::k8s::{family::Family, selector::Selector};

/// Which addresses of a CIDR are handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hosts {
    /// IPv4 without the network and broadcast addresses, except in a /31 or
    /// /32 (RFC 3021); IPv6 without the subnet-router anycast address (RFC
    /// 4291), except in a /127 (RFC 6164) or /128. lb's own pools (flags).
    Usable,
    /// Every address, as MetalLB hands them out: its pools keep its meaning.
    All,
}

/// A named set of address ranges of either family, e.g.
/// `public=198.51.100.0/28,198.51.100.40-198.51.100.50,2001:db8::/120`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub(super) name: String,
    /// Inclusive ranges, each of one family, disjoint, in the order given:
    /// the order addresses are handed out in.
    pub(super) ranges: Vec<RangeInclusive<IpAddr>>,
    /// Handed out to Services that name no pool (MetalLB's `autoAssign`).
    pub auto_assign: bool,
    /// Never hands out IPv4 addresses ending in .0 or .255, which some
    /// routers' smurf protection drops (MetalLB's `avoidBuggyIPs`).
    pub avoid_buggy_ips: bool,
    /// `None`: any Service may have its addresses.
    pub allocation: Option<Allocation>,
}

/// Which Services a pool is for, and before which other pools it is tried
/// (MetalLB's `serviceAllocation`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Lower first; pools without one come after those with one.
    pub priority: Option<i32>,
    /// With either of these, only Services in a namespace named or selected.
    pub namespaces: BTreeSet<String>,
    pub namespace_selectors: Vec<Selector>,
    /// With any, only Services one of them selects.
    pub service_selectors: Vec<Selector>,
}

/// What a pool needs to know of a Service: where it is and its labels.
#[derive(Clone, Copy, Debug)]
pub struct ServiceIdentity<'a> {
    pub namespace: &'a str,
    /// `None`: the Namespace object is not known (no labels).
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    pub labels: Option<&'a BTreeMap<String, String>>,
}

impl Pool {
    /// Parses `NAME=RANGE[,RANGE...]`, each RANGE a CIDR or `FIRST-LAST`.
    pub fn parse(text: &str) -> Result<Self, PoolError> {
        let invalid = |reason: String| PoolError::Invalid {
            text: text.to_owned(),
            reason,
        };
        let (name, ranges) = text
            .split_once('=')
            .ok_or_else(|| invalid("expected NAME=RANGE[,RANGE...]".to_owned()))?;
        let ranges: Vec<&str> = ranges.split(',').collect();
        Self::new(name.trim(), &ranges, Hosts::Usable).map_err(invalid)
    }

    /// A pool named `name` covering one CIDR (the `--vip-pool` flag).
    pub fn from_cidr(name: &str, text: &str) -> Result<Self, PoolError> {
        Self::new(name, &[text], Hosts::Usable).map_err(|reason| PoolError::Invalid {
            text: text.to_owned(),
            reason,
        })
    }

    /// A pool of `ranges` (CIDRs or `FIRST-LAST`), handed out in that order,
    /// to any Service.
    pub fn new(name: &str, ranges: &[&str], hosts: Hosts) -> Result<Self, String> {
        if name.is_empty() {
            return Err("the pool needs a name".to_owned());
        }
        let ranges = ranges
            .iter()
            .map(|range| parse_range(range.trim(), hosts))
            .collect::<Result<Vec<_>, _>>()?;
        let pool = Self {
            name: name.to_owned(),
            ranges,
            auto_assign: true,
            avoid_buggy_ips: false,
            allocation: None,
        };
        if pool.ranges.iter().enumerate().any(|(index, range)| {
            let earlier = &pool.ranges[..index];
            earlier.iter().any(|other| overlap(range, other))
        }) {
            return Err("ranges overlap".to_owned());
        }
        Ok(pool)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the pool hands out `addr` (to some Service).
    pub fn contains(&self, addr: IpAddr) -> bool {
        !self.avoids(addr) && self.ranges.iter().any(|range| range.contains(&addr))
    }

    /// Whether the pool never hands out `addr`, though in its ranges.
    pub(super) fn avoids(&self, addr: IpAddr) -> bool {
        self.avoid_buggy_ips && matches!(addr, IpAddr::V4(v4) if matches!(v4.octets()[3], 0 | 255))
    }

    /// Whether the pool has addresses of `family` at all (free or not).
    pub fn supplies(&self, family: Family) -> bool {
        self.ranges_of(family).next().is_some()
    }

    pub(super) fn ranges_of(
        &self,
        family: Family,
    ) -> impl Iterator<Item = &RangeInclusive<IpAddr>> {
        let ranges = self.ranges.iter();
        ranges.filter(move |range| Family::of(*range.start()) == family)
    }

    /// The longest prefix among the CIDR blocks its `family` ranges split
    /// into: an aggregate route shorter than that would cover addresses
    /// outside the pool.
    pub fn longest_prefix(&self, family: Family) -> Option<u8> {
        let bits = match family {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        let mut longest = None;
        for range in self.ranges_of(family) {
            let (mut at, end) = (number(*range.start()), number(*range.end()));
            loop {
                // The largest block starting at `at`: as aligned as `at` is,
                // and no longer than what is left of the range.
                let left = end - at;
                let aligned = if at == 0 {
                    bits
                } else {
                    at.trailing_zeros().min(bits)
                };
                let fits = if left == u128::MAX {
                    128
                } else {
                    127 - (left + 1).leading_zeros()
                };
                let size = aligned.min(fits);
                let prefix = (bits - size) as u8;
                longest = longest.max(Some(prefix));
                match at.checked_add(1u128.checked_shl(size).unwrap_or(0)) {
                    Some(next) if size < 128 && next <= end && next != 0 => at = next,
                    _ => break,
                }
            }
        }
        longest
    }

    pub fn overlaps(&self, other: &Pool) -> bool {
        self.ranges
            .iter()
            .any(|a| other.ranges.iter().any(|b| overlap(a, b)))
    }

    /// Whether the Service may have this pool's addresses; if not, why.
    pub fn admits(&self, service: &ServiceIdentity) -> Result<(), String> {
        let Some(allocation) = &self.allocation else {
            return Ok(());
        };
        let name = &self.name;
        let selects = |selectors: &[Selector], labels: Option<&BTreeMap<String, String>>| {
            const NO_LABELS: &BTreeMap<String, String> = &BTreeMap::new();
            let labels = labels.unwrap_or(NO_LABELS);
            selectors.iter().any(|selector| selector.matches(labels))
        };
        let by_namespace =
            !allocation.namespaces.is_empty() || !allocation.namespace_selectors.is_empty();
        if by_namespace
            && !allocation.namespaces.contains(service.namespace)
            && !selects(&allocation.namespace_selectors, service.namespace_labels)
        {
            return Err(format!(
                "pool {name} is reserved for other namespaces (serviceAllocation)"
            ));
        }
        if !allocation.service_selectors.is_empty()
            && !selects(&allocation.service_selectors, service.labels)
        {
            return Err(format!(
                "pool {name} is reserved for Services its serviceSelectors select"
            ));
        }
        Ok(())
    }

    /// The order pools are tried in for a Service that names none: those
    /// reserved for it (`serviceAllocation`) by priority, then the others.
    pub(super) fn rank(&self) -> (bool, i32) {
        match &self.allocation {
            Some(allocation) => (false, allocation.priority.unwrap_or(i32::MAX)),
            None => (true, 0),
        }
    }
}

fn overlap(a: &RangeInclusive<IpAddr>, b: &RangeInclusive<IpAddr>) -> bool {
    // Every IPv4 address sorts before every IPv6 one, so only ranges of one
    // family can overlap.
    a.start() <= b.end() && b.start() <= a.end()
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
fn parse_range(text: &str, hosts: Hosts) -> Result<RangeInclusive<IpAddr>, String> {
    let Some((first, last)) = text.split_once('-') else {
        return parse_cidr(text, hosts);
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

/// The addresses of a CIDR handed out, as `hosts` says.
fn parse_cidr(text: &str, hosts: Hosts) -> Result<RangeInclusive<IpAddr>, String> {
    let net = text
        .parse::<IpNet>()
        .map_err(|e| format!("{text:?}: {e}, expected a CIDR or FIRST-LAST"))?
        .trunc();
    let (network, last) = (number(net.network()), number(net.broadcast()));
    let family = Family::of(net.addr());
    let has_special_hosts = net.prefix_len() < net.max_prefix_len() - 1;
    let (first, last) = match family {
        _ if hosts == Hosts::All || !has_special_hosts => (network, last),
        Family::V4 => (network + 1, last - 1),
        Family::V6 => (network + 1, last),
    };
    let address = |number| address(family, number).expect("within the CIDR");
    Ok(address(first)..=address(last))
}

/// An address as a number within its family, to walk ranges.
pub(super) fn number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of `family` numbered `number`, if there is one.
pub(super) fn address(family: Family, number: u128) -> Option<IpAddr> {
    match family {
        Family::V4 => u32::try_from(number).ok().map(|n| Ipv4Addr::from(n).into()),
        Family::V6 => Some(Ipv6Addr::from(number).into()),
    }
}
