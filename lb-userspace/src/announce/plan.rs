//! What to announce for each VIP and how: the meeting point of the
//! configuration (the flags, or MetalLB's advertisements) and the announcers
//! (layer 2 in the data path, BGP through BIRD).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::Announce;

/// How the VIPs are announced, per VIP. A VIP absent from `vips` is served
/// but announced by no one (MetalLB does the same with an address of a pool
/// no advertisement selects).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnnouncementPlan {
    pub vips: BTreeMap<IpAddr, VipAnnouncement>,
}

/// How one VIP is announced: at layer 2, over BGP, or both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipAnnouncement {
    pub l2: Option<L2Announcement>,
    /// One per BGPAdvertisement selecting the VIP's pool (MetalLB announces
    /// each separately when they differ).
    pub bgp: Vec<BgpAnnouncement>,
}

/// ARP replies / Neighbor Advertisements for the VIP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L2Announcement {
    /// The interfaces to answer on, among those lb is attached to; empty:
    /// all of them.
    pub interfaces: BTreeSet<String>,
}

/// A route for the VIP, announced over BGP.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BgpAnnouncement {
    /// The announced prefix's length: 32 / 128 for the VIP alone, shorter
    /// for an aggregate covering it.
    pub prefix_len: u8,
    pub local_pref: Option<u32>,
    /// Standard (`65535:65282`) and large (`large:1:2:3`) communities, as
    /// values (Community aliases resolved).
    pub communities: BTreeSet<String>,
    /// The BGP peers (by name) it goes to; `None`: every peer.
    pub peers: Option<BTreeSet<String>>,
}

impl AnnouncementPlan {
    /// The plan of the `--announce` flag, used when there is no MetalLB
    /// advertisement: every VIP at layer 2 on every interface (`arp`), or to
    /// every BGP peer as a host route (`bgp`), or nothing.
    pub fn of_flag(mode: Announce, vips: impl IntoIterator<Item = IpAddr>) -> Self {
        let announcement = |vip: IpAddr| match mode {
            Announce::Arp => Some(VipAnnouncement {
                l2: Some(L2Announcement::default()),
                bgp: Vec::new(),
            }),
            Announce::Bgp => Some(VipAnnouncement {
                l2: None,
                bgp: vec![BgpAnnouncement::host_route(vip)],
            }),
            Announce::None => None,
        };
        Self {
            vips: vips
                .into_iter()
                .filter_map(|vip| Some((vip, announcement(vip)?)))
                .collect(),
        }
    }
}

impl BgpAnnouncement {
    /// The VIP alone (/32, /128), to every peer, with no attributes.
    pub fn host_route(vip: IpAddr) -> Self {
        Self {
            prefix_len: if vip.is_ipv4() { 32 } else { 128 },
            local_pref: None,
            communities: BTreeSet::new(),
            peers: None,
        }
    }
}
