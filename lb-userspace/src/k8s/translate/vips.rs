//! Which VIPs each Service gets: one per IP family it is served in.

use std::{collections::BTreeMap, net::IpAddr};

use super::{
    LoadBalancer, Problem, Role, Skips,
    annotations::{ADDRESSES, POOL},
};
use crate::k8s::{
    family::Family,
    ingress_ips,
    pools::{Pool, PoolError, Pools},
};

/// `spec.ipFamilyPolicy`: how many families a Service is served in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[expect(
    clippy::enum_variant_names,
    reason = "named as the values of spec.ipFamilyPolicy"
)]
enum Policy {
    /// One family: the first of `spec.ipFamilies`, IPv4 when none is listed.
    SingleStack,
    /// Each family of `spec.ipFamilies` (both when none is listed) that the
    /// Service requests or its pool supplies; at least one.
    PreferDualStack,
    /// Both families, or the Service is not served.
    RequireDualStack,
}

impl Policy {
    fn of(service: &LoadBalancer) -> Result<Self, String> {
        match service.spec.ip_family_policy.as_deref() {
            None | Some("SingleStack") => Ok(Self::SingleStack),
            Some("PreferDualStack") => Ok(Self::PreferDualStack),
            Some("RequireDualStack") => Ok(Self::RequireDualStack),
            Some(other) => Err(format!(
                "spec.ipFamilyPolicy {other:?} is not SingleStack, PreferDualStack or RequireDualStack"
            )),
        }
    }

    /// The families a Service with `listed` as `spec.ipFamilies` asks for.
    /// PreferDualStack keeps to the listed ones because the API server lists
    /// only the families the cluster has: kube-proxy opens NodePorts only on
    /// node addresses of the Service's families.
    fn families(self, listed: &[Family]) -> Vec<Family> {
        let first = listed.first().copied().unwrap_or(Family::V4);
        match self {
            Self::SingleStack => vec![first],
            Self::PreferDualStack if !listed.is_empty() => listed.to_vec(),
            Self::PreferDualStack | Self::RequireDualStack => vec![first, first.other()],
        }
    }
}

/// Where one VIP of a Service comes from.
enum Want {
    /// An address it names (annotation or `spec.loadBalancerIP`).
    Requested(IpAddr),
    /// The address its status shows: it had it before (maybe from an earlier
    /// agent), so it keeps it.
    Held(IpAddr),
    /// Any free address of the family from the Service's pools.
    Allocate,
}

/// What a Service asks for: a VIP of each family it names, and how many of
/// them it needs to be served.
struct Plan<'a> {
    policy: Policy,
    /// The pool it names (`None`: those it may have automatically).
    pool: Option<&'a str>,
    wants: Vec<(Family, Want)>,
}

/// Who wins a contested address, best first: the Service the pools already
/// give it to, then one they give it to that changed its sharing terms
/// (key, ports) since, then one whose status shows it, then one that merely
/// asks; names break ties. So a Service never loses a working VIP to a
/// newcomer, nor to a sharer that changed terms.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Standing {
    Owner,
    Altered,
    Held,
    Requested,
}

/// One VIP of one Service: its index among the Services and the family.
type Slot = (usize, Family);

/// Why a slot got no VIP.
struct Failure {
    problem: Problem,
    reason: String,
}

/// What each slot got.
type Outcomes = BTreeMap<Slot, Result<IpAddr, Failure>>;

/// Gives each Service its VIPs (IPv4 first), claiming requested and held ones
/// in the pools before allocating the rest; in `Role::Adopt`, only those its
/// status shows.
pub(super) fn assign<'s, 'a>(
    services: &'s [LoadBalancer<'a>],
    role: Role,
    pools: &mut Pools,
    skips: &mut Skips,
) -> Vec<(&'s LoadBalancer<'a>, Vec<IpAddr>)> {
    let mut demand = Demand::of(services, role, pools, skips);
    let mut outcomes = Outcomes::new();
    for (vip, candidates) in std::mem::take(&mut demand.contenders) {
        let moving = settle(vip, candidates, role, pools, &mut outcomes);
        demand.unassigned.extend(moving);
    }
    for ((index, family), pool) in demand.unassigned {
        let outcome = pools
            .allocate(&services[index].claimant(), pool, family)
            .map_err(|err| allocation_failure(family, err));
        outcomes.insert((index, family), outcome);
    }
    let policies = demand.policies.into_iter();
    policies
        .filter_map(|(index, policy)| {
            let vips = served_vips(&services[index], index, policy, &outcomes, skips)?;
            Some((&services[index], vips))
        })
        .collect()
}

/// The slots of every Service with a valid plan: addresses wanted by name,
/// with who wants them, and families to allocate from a pool.
struct Demand<'s, 'a> {
    policies: Vec<(usize, Policy)>,
    contenders: BTreeMap<IpAddr, Vec<Contender<'s, 'a>>>,
    unassigned: Vec<(Slot, Option<&'a str>)>,
}

impl<'s, 'a> Demand<'s, 'a> {
    fn of(
        services: &'s [LoadBalancer<'a>],
        role: Role,
        pools: &mut Pools,
        skips: &mut Skips,
    ) -> Self {
        let mut demand = Self {
            policies: Vec::new(),
            contenders: BTreeMap::new(),
            unassigned: Vec::new(),
        };
        for (index, service) in services.iter().enumerate() {
            match plan(service, role, pools) {
                Ok(plan) => demand.add(index, service, plan, pools),
                Err(reason) => {
                    // Not served, but the addresses its status shows stay
                    // its own until its setting is fixed: also for an agent
                    // that restarted meanwhile, whose pools are empty.
                    for vip in ingress_ips(service.service) {
                        let _ = pools.claim(&service.claimant(), vip);
                    }
                    skips.service(&service.owner, Problem::Invalid, reason);
                }
            }
        }
        demand
    }

    fn add(
        &mut self,
        index: usize,
        service: &'s LoadBalancer<'a>,
        plan: Plan<'a>,
        pools: &mut Pools,
    ) {
        self.policies.push((index, plan.policy));
        // A family the Service is no longer served in frees its address.
        for family in Family::ALL {
            if !plan.wants.iter().any(|(wanted, _)| *wanted == family) {
                pools.release_family(&service.owner, family);
            }
        }
        for (family, want) in plan.wants {
            let slot = (index, family);
            let (vip, asks) = match want {
                Want::Requested(vip) => (vip, true),
                Want::Held(vip) => (vip, false),
                Want::Allocate => {
                    self.unassigned.push((slot, plan.pool));
                    continue;
                }
            };
            let standing = standing(pools, service, vip, asks);
            self.contenders.entry(vip).or_default().push(Contender {
                standing,
                asks,
                slot,
                pool: plan.pool,
                service,
            });
        }
    }
}

/// Decides who gets `vip` of the Services that want it, and claims it for
/// them. Assigning, returns the slots to allocate afresh: those of Services
/// that lost it and asked for no address in particular (one whose sharing
/// terms changed, one whose status shows an address another holds), as
/// MetalLB gives them another. One that asked for it is refused, and gives
/// it up if it held it. Adopting, nothing moves: the elected agent decides.
fn settle<'a>(
    vip: IpAddr,
    mut candidates: Vec<Contender<'_, 'a>>,
    role: Role,
    pools: &mut Pools,
    outcomes: &mut Outcomes,
) -> Vec<(Slot, Option<&'a str>)> {
    candidates.sort_by(|a, b| (a.standing, &a.service.owner).cmp(&(b.standing, &b.service.owner)));
    let (sharers, blocked) = sharers(vip, &candidates);
    let mut moving = Vec::new();
    for (candidate, reason) in blocked {
        if role == Role::Assign && candidate.standing <= Standing::Altered {
            // It held the address on other terms: they no longer fit.
            pools.release_family(&candidate.service.owner, Family::of(vip));
        }
        if role == Role::Assign && !candidate.asks {
            moving.push((candidate.slot, candidate.pool));
        } else {
            let failure = Failure {
                problem: Problem::AddressConflict,
                reason,
            };
            outcomes.insert(candidate.slot, Err(failure));
        }
    }
    for (sharer, claimed) in sharers.iter().zip(claim(pools, vip, &sharers)) {
        let outcome = claimed.map(|()| vip).map_err(|err| Failure {
            problem: Problem::AddressConflict,
            reason: err.to_string(),
        });
        outcomes.insert(sharer.slot, outcome);
    }
    moving
}

/// How strong the Service's claim to `vip` is. Moving to another address of
/// the family frees the old one, so Services swapping addresses do not look
/// like a conflict. One whose status shows the address it asks for had it
/// before: after a restart, when the pools are empty, it keeps it against
/// a newcomer asking for the same, whatever their names.
fn standing(pools: &mut Pools, service: &LoadBalancer, vip: IpAddr, asks: bool) -> Standing {
    let family = Family::of(vip);
    let owner = service.owner.as_str();
    match pools.lookup(owner, family) {
        Some(held) if held == vip => {
            return if pools.holds_on_terms(owner, vip, service.sharing.as_ref()) {
                Standing::Owner
            } else {
                Standing::Altered
            };
        }
        Some(_) => pools.release_family(owner, family),
        None => {}
    }
    if asks && !ingress_ips(service.service).contains(&vip) {
        Standing::Requested
    } else {
        Standing::Held
    }
}

fn allocation_failure(family: Family, err: PoolError) -> Failure {
    let problem = match err {
        PoolError::UnknownPool(_) => Problem::Invalid,
        _ => Problem::AllocationFailed,
    };
    let reason = match err {
        PoolError::NoPool => {
            format!("no {family} VIP: it requests none and no VIP pool is configured")
        }
        err => format!("no {family} VIP: {err}"),
    };
    Failure { problem, reason }
}

/// The VIPs of the Service at `index` if it is served, reporting each
/// family it did not get.
fn served_vips(
    service: &LoadBalancer,
    index: usize,
    policy: Policy,
    outcomes: &Outcomes,
    skips: &mut Skips,
) -> Option<Vec<IpAddr>> {
    let mut vips = Vec::new();
    let mut missing = false;
    for outcome in outcomes.range((index, Family::V4)..=(index, Family::V6)) {
        match outcome.1 {
            Ok(vip) => vips.push(*vip),
            Err(failure) if policy == Policy::RequireDualStack => {
                missing = true;
                let reason = format!(
                    "not served, as ipFamilyPolicy RequireDualStack needs a VIP of each family: {}",
                    failure.reason
                );
                skips.service(&service.owner, failure.problem, reason);
            }
            Err(failure) => skips.service(&service.owner, failure.problem, &failure.reason),
        }
    }
    (!vips.is_empty() && !missing).then_some(vips)
}

/// What the Service asks for, or why that makes no sense. Adopting, a
/// family its status shows no address of is not served (the elected agent
/// has not assigned it yet), and one it shows is wanted whatever this
/// agent's pools say (the elected agent's decided).
fn plan<'a>(service: &LoadBalancer<'a>, role: Role, pools: &Pools) -> Result<Plan<'a>, String> {
    if let Some(refusal) = &service.refusal {
        return Err(refusal.clone());
    }
    let policy = Policy::of(service)?;
    let mut families = policy.families(&listed_families(service)?);
    let requested = requested(service, &families)?;
    let named_pool = service.setting(&POOL)?;
    let pool = named_pool.as_ref().map(|pool| pool.value);
    let candidates = pools.candidates(pool, &service.claimant().service);
    // As MetalLB: an address asked for must lie in the pool named too.
    if let Some(named) = &named_pool
        && !requested.is_empty()
    {
        let candidates = candidates
            .as_ref()
            .map_err(|err| format!("annotation {}: {err}", named.name))?;
        if let Some(vip) = requested
            .iter()
            .find(|vip| !candidates.iter().any(|pool| pool.contains(**vip)))
        {
            return Err(format!(
                "{vip} is requested, but annotation {} names pool {:?}, which does not hold it",
                named.name, named.value
            ));
        }
    }
    // Adopting, the status says which families the elected agent could
    // supply, whatever this agent's pools say.
    if policy == Policy::PreferDualStack && role == Role::Assign {
        families = supplied(
            families,
            &requested,
            candidates.as_deref().unwrap_or_default(),
        );
    }
    let statuses = ingress_ips(service.service);
    // An address outside the Service's pools is not kept: the pools (or its
    // annotation) changed, and the Service moves into them.
    let in_pool = |vip: &IpAddr| match &candidates {
        Ok(candidates) => candidates.iter().any(|pool| pool.contains(*vip)),
        Err(_) => pool.is_none(),
    };
    let want = |family: Family| {
        let of_family = |vip: &&IpAddr| Family::of(**vip) == family;
        if role == Role::Adopt {
            // Asked for, it may be shared as the elected agent shares it.
            let shown = statuses.iter().find(of_family)?;
            return Some(if requested.contains(shown) {
                Want::Requested(*shown)
            } else {
                Want::Held(*shown)
            });
        }
        Some(if let Some(vip) = requested.iter().find(of_family) {
            Want::Requested(*vip)
        } else if let Some(vip) = statuses.iter().find(of_family).filter(|vip| in_pool(vip)) {
            // A status that does not show yet where the pools moved the
            // Service (its write not seen yet, or failed) is out of date.
            let moved = pools
                .lookup(&service.owner, family)
                .filter(|moved| in_pool(moved));
            Want::Held(moved.unwrap_or(*vip))
        } else {
            Want::Allocate
        })
    };
    let wants = families
        .into_iter()
        .filter_map(|family| Some((family, want(family)?)))
        .collect();
    Ok(Plan {
        policy,
        pool,
        wants,
    })
}

/// The `families` a PreferDualStack Service can get: those it requests an
/// address of or one of its pools supplies. With none, the first, to report why.
fn supplied(families: Vec<Family>, requested: &[IpAddr], pools: &[&Pool]) -> Vec<Family> {
    let first = families[..1].to_vec();
    let supplied: Vec<Family> = families
        .into_iter()
        .filter(|&family| {
            requested.iter().any(|vip| Family::of(*vip) == family)
                || pools.iter().any(|pool| pool.supplies(family))
        })
        .collect();
    if supplied.is_empty() { first } else { supplied }
}

/// `spec.ipFamilies`, in order.
fn listed_families(service: &LoadBalancer) -> Result<Vec<Family>, String> {
    let mut families = Vec::new();
    for name in service.spec.ip_families.as_deref().unwrap_or_default() {
        let family = Family::from_kubernetes(name)
            .ok_or_else(|| format!("spec.ipFamilies lists {name:?}, which is not IPv4 or IPv6"))?;
        if families.contains(&family) {
            return Err(format!("spec.ipFamilies lists {family} twice"));
        }
        families.push(family);
    }
    Ok(families)
}

/// The addresses the Service names, at most one per family and each of a
/// family it is served in: the `lb.dev/address` annotation or MetalLB's
/// `loadBalancerIPs` (comma-separated), else `spec.loadBalancerIP`.
fn requested(service: &LoadBalancer, families: &[Family]) -> Result<Vec<IpAddr>, String> {
    let (source, parts): (String, Vec<&str>) =
        if let Some(annotated) = service.setting(&ADDRESSES)? {
            let text = annotated.value;
            let source = format!("annotation {}={text:?}", annotated.name);
            (source, text.split(',').map(str::trim).collect())
        } else if let Some(text) = service
            .spec
            .load_balancer_ip
            .as_deref()
            .filter(|text| !text.is_empty())
        {
            (format!("spec.loadBalancerIP {text:?}"), vec![text])
        } else {
            return Ok(Vec::new());
        };
    let mut addresses: Vec<IpAddr> = Vec::new();
    for part in &parts {
        let vip = part.parse::<IpAddr>().map_err(|_| match parts.len() {
            1 => format!("{source} is not an IP address"),
            _ => format!("{source}: {part:?} is not an IP address"),
        })?;
        // `::ffff:a.b.c.d` is the IPv4 address a.b.c.d to the data path.
        let vip = vip.to_canonical();
        let family = Family::of(vip);
        if addresses.iter().any(|other| Family::of(*other) == family) {
            return Err(format!("{source} names more than one {family} address"));
        }
        if !families.contains(&family) {
            let served: Vec<String> = families.iter().map(ToString::to_string).collect();
            return Err(format!(
                "{source} names an {family} address, but the Service is served in {} only \
                 (spec.ipFamilies, spec.ipFamilyPolicy)",
                served.join(" and ")
            ));
        }
        addresses.push(vip);
    }
    Ok(addresses)
}

/// A Service that wants a given address.
struct Contender<'s, 'a> {
    standing: Standing,
    /// Requested rather than merely held: only such Services share.
    asks: bool,
    slot: Slot,
    /// The pool the Service names, to allocate from if it must move.
    pool: Option<&'a str>,
    service: &'s LoadBalancer<'a>,
}

/// Candidates that do not get an address, each with the reason.
type Blocked<'c, 's, 'a> = Vec<(&'c Contender<'s, 'a>, String)>;

/// The candidates for `vip` that get it, best standing first: the first one,
/// then any that requested it, as all before did, and listen on other ports;
/// and the others, with the reason.
fn sharers<'c, 's, 'a>(
    vip: IpAddr,
    candidates: &'c [Contender<'s, 'a>],
) -> (Vec<&'c Contender<'s, 'a>>, Blocked<'c, 's, 'a>) {
    let mut sharers: Vec<&Contender> = Vec::new();
    let mut blocked = Vec::new();
    for candidate in candidates {
        let blocker = sharers.iter().find_map(|holder| {
            let owner = &holder.service.owner;
            if !(candidate.asks && holder.asks || same_key(candidate.service, holder.service)) {
                Some(format!(
                    "VIP {vip} is already used by {owner}; only Services that both request it, \
                     or have the same sharing key (allow-shared-ip), may share it"
                ))
            } else if !holder
                .service
                .listeners()
                .is_disjoint(&candidate.service.listeners())
            {
                Some(format!(
                    "VIP {vip} is already used by {owner} on an overlapping port"
                ))
            } else {
                None
            }
        });
        match blocker {
            Some(reason) => blocked.push((candidate, reason)),
            None => sharers.push(candidate),
        }
    }
    (sharers, blocked)
}

/// Whether both Services agree to share an address by key.
fn same_key(a: &LoadBalancer, b: &LoadBalancer) -> bool {
    match (&a.sharing, &b.sharing) {
        (Some(a), Some(b)) => a.key == b.key && a.backend == b.backend,
        _ => false,
    }
}

/// Records `vip` in the pools for the Services sharing it, each only if its
/// pool admits it (a pool reserved for a namespace is not reached through a
/// sharer of another): the sharer already holding it claims it first and
/// stays its holder (so a new sharer is not mistaken for a conflict), else
/// the first the pools let claim it; the others join it. What each got, in
/// the order of `sharers`.
fn claim(pools: &mut Pools, vip: IpAddr, sharers: &[&Contender]) -> Vec<Result<(), PoolError>> {
    let family = Family::of(vip);
    let mut order: Vec<usize> = (0..sharers.len()).collect();
    if let Some(holding) = order
        .iter()
        .position(|&index| pools.lookup(&sharers[index].service.owner, family) == Some(vip))
    {
        order[..=holding].rotate_right(1);
    }
    let mut claimed = false;
    let mut outcomes: Vec<Result<(), PoolError>> = sharers.iter().map(|_| Ok(())).collect();
    for index in order {
        let claimant = sharers[index].service.claimant();
        outcomes[index] = if claimed {
            pools
                .admit(&claimant, vip)
                .map(|()| pools.join(&claimant, vip))
        } else {
            let outcome = pools.claim(&claimant, vip);
            claimed = outcome.is_ok();
            outcome
        };
        // Refused, it gives the address up (as one refused for a conflict),
        // so that it does not block the sharers its pool admits.
        if outcomes[index].is_err() && pools.lookup(claimant.owner, family) == Some(vip) {
            pools.release_family(claimant.owner, family);
        }
    }
    outcomes
}
