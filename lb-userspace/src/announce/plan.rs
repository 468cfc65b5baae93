//! What to announce for each VIP and how: the meeting point of the
//! configuration (the flags, or MetalLB's advertisements) and the announcers
//! (layer 2 in the data path, BGP through BIRD).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

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
    /// validated values.
    pub communities: BTreeSet<String>,
    /// The BGP peers (by name) it goes to; `None`: every peer.
    pub peers: Option<BTreeSet<String>>,
}
