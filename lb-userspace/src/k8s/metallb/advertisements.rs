//! MetalLB's L2Advertisements and BGPAdvertisements made into the
//! announcement plan: which VIPs are announced at layer 2 (on which
//! interfaces) and which over BGP (with which attributes, to which peers),
//! by the pool each VIP was allocated from.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{
    communities::Aliases,
    objects::{BGPAdvertisementSpec, IPAddressPool, L2AdvertisementSpec},
};
use crate::{
    announce::plan::{AnnouncementPlan, BgpAnnouncement, L2Announcement},
    k8s::{
        family::Family,
        objects::MetallbObjects,
        pools::Pool,
        selector::Selector,
        translate::{Problem, Skipped},
    },
};

/// The plan MetalLB's advertisements make, and the advertisements skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advertised {
    /// `None` when there is no advertisement at all: then the `--announce`
    /// flag decides, as it does without MetalLB's configuration.
    pub plan: Option<AnnouncementPlan>,
    pub skipped: Vec<Skipped>,
}

/// The plan for the VIPs of `vip_pools` (each VIP's pool, by name) that
/// `metallb`'s advertisements make; `in_use` are the pools the VIPs were
/// allocated from. An invalid advertisement is skipped with the field at
/// fault; the others still count.
pub fn plan(
    metallb: &MetallbObjects,
    in_use: &[Pool],
    vip_pools: &BTreeMap<IpAddr, String>,
) -> Advertised {
    if metallb.l2_advertisements.is_empty() && metallb.bgp_advertisements.is_empty() {
        return Advertised::default();
    }
    let pools = Pools::of(&metallb.pools, in_use);
    let mut plan = AnnouncementPlan::default();
    let mut skipped = Vec::new();
    let mut l2 = BTreeMap::<&str, Interfaces>::new();
    for advertisement in &metallb.l2_advertisements {
        let object = Object::new("L2Advertisement", &advertisement.metadata);
        match l2_advertisement(&advertisement.spec, &pools) {
            Ok((selected, interfaces)) => {
                for pool in selected {
                    l2.entry(pool).or_default().add(&interfaces);
                }
            }
            Err(reason) => skipped.push(object.skipped(reason)),
        }
    }
    let (aliases, bad_aliases) = Aliases::of(&metallb.communities);
    skipped.extend(bad_aliases);
    let mut bgp = BTreeMap::<&str, Vec<(&BGPAdvertisementSpec, BTreeSet<String>)>>::new();
    for advertisement in &metallb.bgp_advertisements {
        let object = Object::new("BGPAdvertisement", &advertisement.metadata);
        match bgp_advertisement(&advertisement.spec, &pools, &aliases) {
            Ok((selected, communities)) => {
                for pool in selected {
                    bgp.entry(pool)
                        .or_default()
                        .push((&advertisement.spec, communities.clone()));
                }
            }
            Err(reason) => skipped.push(object.skipped(reason)),
        }
    }
    for (vip, pool) in vip_pools {
        let announcement = plan.vips.entry(*vip).or_default();
        announcement.l2 = l2.get(pool.as_str()).map(Interfaces::announcement);
        let mut routes: Vec<BgpAnnouncement> = bgp
            .get(pool.as_str())
            .into_iter()
            .flatten()
            .map(|(spec, communities)| bgp_announcement(spec, communities, *vip))
            .collect();
        routes.sort();
        routes.dedup();
        announcement.bgp = routes;
        if announcement.l2.is_none() && announcement.bgp.is_empty() {
            plan.vips.remove(vip);
        }
    }
    Advertised {
        plan: Some(plan),
        skipped,
    }
}

/// The IPAddressPools' labels, by name, and the addresses of those in use.
struct Pools<'a> {
    labels: BTreeMap<&'a str, &'a BTreeMap<String, String>>,
    in_use: &'a [Pool],
}

impl<'a> Pools<'a> {
    fn of(pools: &'a [std::sync::Arc<IPAddressPool>], in_use: &'a [Pool]) -> Self {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        let labels = pools
            .iter()
            .filter_map(|pool| {
                let name = pool.metadata.name.as_deref()?;
                Some((name, pool.metadata.labels.as_ref().unwrap_or(&NO_LABELS)))
            })
            .collect();
        Self { labels, in_use }
    }

    /// Whether routes of `length` for the addresses of `pool` cover nothing
    /// outside it (MetalLB's rule): if not, why.
    fn check_aggregation(
        &self,
        pool: &str,
        field: &str,
        length: i32,
        family: Family,
    ) -> Result<(), String> {
        let pool_in_use = self.in_use.iter().find(|p| p.name() == pool);
        let longest = pool_in_use.and_then(|pool| pool.longest_prefix(family));
        match longest {
            Some(longest) if length < i32::from(longest) => Err(format!(
                "spec.{field}: {length} is shorter than /{longest}, a block of IPAddressPool \
                 {pool}'s addresses: the route would cover addresses outside it"
            )),
            _ => Ok(()),
        }
    }

    /// The pools an advertisement selects: those it names and those its
    /// selectors match; every pool when it does neither.
    fn select(
        &self,
        names: &[String],
        selectors: &[LabelSelector],
    ) -> Result<BTreeSet<&'a str>, String> {
        if names.is_empty() && selectors.is_empty() {
            return Ok(self.labels.keys().copied().collect());
        }
        let mut selected = BTreeSet::new();
        for (index, name) in names.iter().enumerate() {
            let (name, _) = self.labels.get_key_value(name.as_str()).ok_or_else(|| {
                format!("spec.ipAddressPools[{index}]: no IPAddressPool named {name:?}")
            })?;
            selected.insert(*name);
        }
        for (index, selector) in selectors.iter().enumerate() {
            let selector = Selector::new(selector)
                .map_err(|reason| format!("spec.ipAddressPoolSelectors[{index}]: {reason}"))?;
            selected.extend(
                self.labels
                    .iter()
                    .filter(|(_, labels)| selector.matches(labels))
                    .map(|(name, _)| *name),
            );
        }
        Ok(selected)
    }
}

/// An advertisement as its skip reports name it.
struct Object {
    kind: &'static str,
    name: String,
}

impl Object {
    fn new(kind: &'static str, metadata: &ObjectMeta) -> Self {
        let namespace = metadata.namespace.as_deref().unwrap_or("default");
        let name = metadata.name.as_deref().unwrap_or("<unnamed>");
        Self {
            kind,
            name: format!("{namespace}/{name}"),
        }
    }

    fn skipped(&self, reason: String) -> Skipped {
        Skipped {
            kind: self.kind,
            name: self.name.clone(),
            problem: Problem::Invalid,
            reason,
        }
    }
}

fn l2_advertisement<'a>(
    spec: &'a L2AdvertisementSpec,
    pools: &Pools<'a>,
) -> Result<(BTreeSet<&'a str>, BTreeSet<String>), String> {
    let selected = pools.select(&spec.ip_address_pools, &spec.ip_address_pool_selectors)?;
    if let Some(index) = spec.interfaces.iter().position(|name| name.is_empty()) {
        return Err(format!("spec.interfaces[{index}]: empty interface name"));
    }
    Ok((selected, spec.interfaces.iter().cloned().collect()))
}

/// The pools an advertisement selects and its communities' values.
fn bgp_advertisement<'a>(
    spec: &'a BGPAdvertisementSpec,
    pools: &Pools<'a>,
    aliases: &Aliases,
) -> Result<(BTreeSet<&'a str>, BTreeSet<String>), String> {
    let communities = aliases.resolve(&spec.communities)?;
    let selected = pools.select(&spec.ip_address_pools, &spec.ip_address_pool_selectors)?;
    for (field, length, family) in [
        ("aggregationLength", spec.aggregation_length, Family::V4),
        (
            "aggregationLengthV6",
            spec.aggregation_length_v6,
            Family::V6,
        ),
    ] {
        let max = match family {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        let Some(length) = length else { continue };
        if !(0..=max).contains(&length) {
            return Err(format!("spec.{field}: {length} is not 0 to {max}"));
        }
        for pool in &selected {
            pools.check_aggregation(pool, field, length, family)?;
        }
    }
    Ok((
        selected,
        communities.iter().map(ToString::to_string).collect(),
    ))
}

/// The route one BGPAdvertisement makes for `vip`, with its communities'
/// values.
fn bgp_announcement(
    spec: &BGPAdvertisementSpec,
    communities: &BTreeSet<String>,
    vip: IpAddr,
) -> BgpAnnouncement {
    let length = match vip {
        IpAddr::V4(_) => spec.aggregation_length.unwrap_or(32),
        IpAddr::V6(_) => spec.aggregation_length_v6.unwrap_or(128),
    };
    BgpAnnouncement {
        // Checked in range by `bgp_advertisement`.
        prefix_len: u8::try_from(length).unwrap_or(u8::MAX),
        local_pref: spec.local_pref,
        communities: communities.clone(),
        peers: (!spec.peers.is_empty()).then(|| spec.peers.iter().cloned().collect()),
    }
}

/// The union of the interfaces of the L2Advertisements selecting a pool.
#[derive(Default)]
struct Interfaces {
    /// One of them names no interface: every interface.
    all: bool,
    named: BTreeSet<String>,
}

impl Interfaces {
    fn add(&mut self, interfaces: &BTreeSet<String>) {
        self.all |= interfaces.is_empty();
        self.named.extend(interfaces.iter().cloned());
    }

    fn announcement(&self) -> L2Announcement {
        L2Announcement {
            interfaces: if self.all {
                BTreeSet::new()
            } else {
                self.named.clone()
            },
        }
    }
}

#[cfg(test)]
mod tests;
