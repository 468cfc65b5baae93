//! Which VIP each Service gets.

use std::{collections::BTreeMap, net::Ipv4Addr};

use super::{ADDRESS_ANNOTATION, LoadBalancer, POOL_ANNOTATION, Problem, Skips};
use crate::k8s::pools::{PoolError, Pools};

/// What a Service asks for.
enum Want<'a> {
    /// An address it names (annotation or `spec.loadBalancerIP`).
    Requested(Ipv4Addr),
    /// The address its status shows: it had it before (maybe from an earlier
    /// agent), so it keeps it.
    Held(Ipv4Addr),
    /// Any free address of this pool (`None`: the default one).
    Allocate(Option<&'a str>),
}

/// Who wins a contested address, best first: the Service the pools already
/// give it to, then one whose status shows it, then one that merely asks;
/// names break ties. So a Service never loses a working VIP to a newcomer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Standing {
    Owner,
    Held,
    Requested,
}

/// Gives each Service a VIP, claiming requested and held ones in the pools
/// before allocating the rest.
pub(super) fn assign<'s, 'a>(
    services: &'s [LoadBalancer<'a>],
    pools: &mut Pools,
    skips: &mut Skips,
) -> Vec<(&'s LoadBalancer<'a>, Ipv4Addr)> {
    let mut contenders: BTreeMap<Ipv4Addr, Vec<Contender>> = BTreeMap::new();
    let mut unassigned = Vec::new();
    for service in services {
        let (vip, asks) = match want(service, pools) {
            Ok(Want::Requested(vip)) => (vip, true),
            Ok(Want::Held(vip)) => (vip, false),
            Ok(Want::Allocate(pool)) => {
                unassigned.push((service, pool));
                continue;
            }
            Err(reason) => {
                skips.service(&service.owner, Problem::Invalid, reason);
                continue;
            }
        };
        let standing = match pools.lookup(&service.owner) {
            Some(held) if held == vip => Standing::Owner,
            held => {
                // Moving to another address frees the old one, so Services
                // swapping addresses do not look like a conflict.
                if held.is_some() {
                    pools.release(&service.owner);
                }
                if asks {
                    Standing::Requested
                } else {
                    Standing::Held
                }
            }
        };
        contenders.entry(vip).or_default().push(Contender {
            standing,
            asks,
            service,
        });
    }
    let mut assigned = Vec::new();
    for (vip, mut candidates) in contenders {
        candidates
            .sort_by(|a, b| (a.standing, &a.service.owner).cmp(&(b.standing, &b.service.owner)));
        let sharers = sharers(vip, &candidates, skips);
        match claim(pools, vip, &sharers) {
            Ok(()) => assigned.extend(sharers.into_iter().map(|service| (service, vip))),
            Err(err) => sharers.iter().for_each(|service| {
                skips.service(&service.owner, Problem::AddressConflict, &err);
            }),
        }
    }
    for (service, pool) in unassigned {
        match pools.allocate(&service.owner, pool) {
            Ok(vip) => assigned.push((service, vip)),
            Err(err) => {
                let problem = match err {
                    PoolError::UnknownPool(_) => Problem::Invalid,
                    _ => Problem::AllocationFailed,
                };
                let reason = match err {
                    PoolError::NoPool => {
                        "no VIP: it requests none and no VIP pool is configured".to_owned()
                    }
                    err => format!("no VIP: {err}"),
                };
                skips.service(&service.owner, problem, reason);
            }
        }
    }
    assigned
}

fn want<'a>(service: &LoadBalancer<'a>, pools: &Pools) -> Result<Want<'a>, String> {
    if let Some(text) = service.annotation(ADDRESS_ANNOTATION) {
        let vip = text.parse().map_err(|_| {
            format!("annotation {ADDRESS_ANNOTATION}={text:?} is not an IPv4 address")
        })?;
        return Ok(Want::Requested(vip));
    }
    if let Some(text) = service
        .spec
        .load_balancer_ip
        .as_deref()
        .filter(|text| !text.is_empty())
    {
        let vip = text
            .parse()
            .map_err(|_| format!("spec.loadBalancerIP {text:?} is not an IPv4 address"))?;
        return Ok(Want::Requested(vip));
    }
    let pool = service
        .service
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(POOL_ANNOTATION))
        .map(String::as_str);
    let ingress = service
        .service
        .status
        .as_ref()
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|status| status.ingress.as_deref())
        .unwrap_or_default();
    let held = ingress
        .iter()
        .find_map(|ingress| ingress.ip.as_deref()?.parse().ok());
    // An address outside the Service's pool is not kept: the pool (or its
    // annotation) changed, and the Service moves into it.
    let in_pool = |vip| match pools.pool(pool) {
        Ok(selected) => selected.contains(vip),
        Err(_) => pool.is_none(),
    };
    Ok(match held {
        Some(vip) if in_pool(vip) => Want::Held(vip),
        _ => Want::Allocate(pool),
    })
}

/// A Service that wants a given address.
struct Contender<'s, 'a> {
    standing: Standing,
    /// Requested rather than merely held: only such Services share.
    asks: bool,
    service: &'s LoadBalancer<'a>,
}

/// The candidates for `vip` that get it, best standing first: the first one,
/// then any that requested it, as all before did, and listen on other ports.
fn sharers<'s, 'a>(
    vip: Ipv4Addr,
    candidates: &[Contender<'s, 'a>],
    skips: &mut Skips,
) -> Vec<&'s LoadBalancer<'a>> {
    let mut sharers: Vec<&Contender> = Vec::new();
    for candidate in candidates {
        let listeners = candidate.service.listeners();
        let blocker = sharers.iter().find_map(|holder| {
            let owner = &holder.service.owner;
            if !(candidate.asks && holder.asks) {
                Some(format!(
                    "VIP {vip} is already used by {owner}; only Services that both request it may share it"
                ))
            } else if !holder.service.listeners().is_disjoint(&listeners) {
                Some(format!("VIP {vip} is already used by {owner} on an overlapping port"))
            } else {
                None
            }
        });
        match blocker {
            Some(reason) => {
                skips.service(&candidate.service.owner, Problem::AddressConflict, reason)
            }
            None => sharers.push(candidate),
        }
    }
    sharers.into_iter().map(|sharer| sharer.service).collect()
}

/// Records `vip` in the pools for the Services sharing it. The pools know one
/// owner per address, so the sharer already holding it stays its owner and a
/// new sharer is not mistaken for a conflict.
fn claim(pools: &mut Pools, vip: Ipv4Addr, sharers: &[&LoadBalancer]) -> Result<(), PoolError> {
    let holding = sharers
        .iter()
        .find(|service| pools.lookup(&service.owner) == Some(vip));
    let owner = holding.unwrap_or(&sharers[0]).owner.as_str();
    pools.claim(owner, vip)
}
