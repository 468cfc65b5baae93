//! The files BIRD reads. `bird.conf` holds the sessions; it includes
//! `routes.conf`, the prefixes as static routes, and `exports.conf`, one
//! export filter per session: which prefixes it announces, with which
//! attributes. A prefix goes to its peers only, with their attributes, from
//! one route. Emptying `routes.conf` alone withdraws everything (`lb drain`,
//! `lb down`, which know nothing of the sessions) and leaves the filters the
//! sessions name in place.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use ipnet::IpNet;

use super::{
    bgp::{BgpSettings, Session},
    community::Community,
    plan::BgpAnnouncement,
};

/// Names of BIRD's static protocols, which `lb bgp` and the tests read back.
pub const STATIC_V4: &str = "lb_vips4";
pub const STATIC_V6: &str = "lb_vips6";
const BFD: &str = "lb_bfd";
/// What BIRD's protocol names add to the sessions' names.
pub const SESSION_PREFIX: &str = "lb_";
/// What the sessions' export filters add to their names.
const EXPORT_PREFIX: &str = "lb_export_";

/// Whether a session named `session` would be named as one of lb's own BIRD
/// protocols or filters (a BGPPeer `vips4`, `bfd`, `export_x`): BIRD refuses
/// the whole configuration, every session's, for a name defined twice.
/// (Renaming the sessions instead would restart every session of a BIRD an
/// earlier agent started, once.)
pub fn session_name_taken(session: &str) -> bool {
    let name = protocol_name(session);
    [STATIC_V4, STATIC_V6, BFD].contains(&name.as_str()) || name.starts_with(EXPORT_PREFIX)
}

/// An announced prefix: a VIP alone, or an aggregate covering VIPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The prefix of length `len` covering `vip` (at most the address's
    /// length).
    pub fn covering(vip: IpAddr, len: u8) -> Self {
        let max = IpNet::from(vip).max_prefix_len();
        let network = IpNet::new_assert(vip, len.min(max)).trunc();
        Self {
            address: network.addr(),
            len: network.prefix_len(),
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

/// What a route carries to a peer besides its prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub local_pref: Option<u32>,
    pub communities: BTreeSet<Community>,
}

impl Attributes {
    /// Several VIPs (or advertisements) asking for one prefix to one peer:
    /// every community any of them asks for, and the highest preference.
    fn merge(&mut self, other: Attributes) {
        self.local_pref = self.local_pref.max(other.local_pref);
        self.communities.extend(other.communities);
    }
}

/// What each session (by name) announces. A prefix stays while any VIP
/// needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exports {
    pub sessions: BTreeMap<String, BTreeMap<Prefix, Attributes>>,
}

impl Exports {
    /// The routes `wanted` (each VIP's announcements) make on `sessions`: a
    /// VIP goes to the sessions of its family its announcement names (every
    /// one without names). An announcement whose communities are not values
    /// is left out, and said why.
    pub fn of(
        wanted: &BTreeMap<IpAddr, Vec<BgpAnnouncement>>,
        sessions: &[Session],
    ) -> (Self, Vec<String>) {
        let mut exports = Self::default();
        let mut problems = Vec::new();
        for (vip, announcements) in wanted {
            for announcement in announcements {
                let communities: Result<BTreeSet<Community>, _> = announcement
                    .communities
                    .iter()
                    .map(|c| c.parse::<Community>())
                    .collect();
                let communities = match communities {
                    Ok(communities) => communities,
                    Err(e) => {
                        problems.push(format!("{vip}: not announced over BGP: {e}"));
                        continue;
                    }
                };
                let prefix = Prefix::covering(*vip, announcement.prefix_len);
                let names = announcement.peers.as_ref();
                for session in sessions.iter().filter(|s| {
                    s.address.is_ipv4() == vip.is_ipv4()
                        && names.is_none_or(|names| names.contains(&s.name))
                }) {
                    let attributes = Attributes {
                        local_pref: announcement.local_pref,
                        communities: communities.clone(),
                    };
                    exports
                        .sessions
                        .entry(session.name.clone())
                        .or_default()
                        .entry(prefix)
                        .or_default()
                        .merge(attributes);
                }
            }
        }
        (exports, problems)
    }

    /// Whether some session announces a prefix covering `vip`: not one of
    /// another family than every session's, nor one whose advertisements
    /// name only peers that are not.
    pub fn carries(&self, vip: IpAddr) -> bool {
        self.sessions.values().flatten().any(|(prefix, _)| {
            IpNet::new(prefix.address, prefix.len).is_ok_and(|net| net.contains(&vip))
        })
    }

    /// Every prefix some session announces.
    pub fn prefixes(&self) -> BTreeSet<Prefix> {
        self.sessions
            .values()
            .flat_map(|p| p.keys().copied())
            .collect()
    }
}

/// BIRD's main configuration.
pub fn bird_config(settings: &BgpSettings, dir: &Path) -> String {
    let mut conf = "# Written by lb agent, rewritten on every change: do not edit.\n".to_owned();
    if let Some(id) = router_id(settings) {
        let _ = writeln!(conf, "router id {id};");
    }
    let _ = writeln!(
        conf,
        "log \"{}\" all;\nprotocol device {{}}",
        dir.join("bird.log").display()
    );
    if settings.sessions.iter().any(|s| s.bfd.is_some()) {
        let _ = writeln!(conf, "protocol bfd {BFD} {{}}");
    }
    for file in ["routes.conf", "exports.conf"] {
        let _ = writeln!(conf, "include \"{}\";", dir.join(file).display());
    }
    for session in &settings.sessions {
        conf.push_str(&session_config(session));
    }
    conf
}

/// BIRD's own router id: `--bgp-router-id`, else the lowest of the
/// sessions' own. Without one BIRD takes an IPv4 address of the host, and on
/// a host without any it exits once started, whatever the sessions have. A
/// session without its own takes this one, as in MetalLB, where a BGPPeer's
/// `routerID` is the whole speaker's in its FRR mode (`bgp router-id`).
fn router_id(settings: &BgpSettings) -> Option<Ipv4Addr> {
    let sessions = settings.sessions.iter().filter_map(|s| s.router_id);
    settings.router_id.or_else(|| sessions.min())
}

fn session_config(session: &Session) -> String {
    let mut conf = format!("protocol bgp '{}' {{ local", protocol_name(&session.name));
    if let Some(source) = session.source_address {
        let _ = write!(conf, " {source}");
    }
    let _ = write!(
        conf,
        " as {}; neighbor {} port {} {};",
        session.local_as, session.address, session.port, session.peer_as
    );
    if let Some(id) = session.router_id {
        let _ = write!(conf, " router id {id};");
    }
    let _ = write!(conf, " hold time {};", session.hold_time);
    if let Some(keepalive) = session.keepalive_time {
        let _ = write!(conf, " keepalive time {keepalive};");
    }
    // A session that failed (BFD lost a few packets, the peer restarted)
    // starts again a second later: BIRD's default waits a minute, refusing
    // the peer's own attempts meanwhile. Failures in a row still back off,
    // doubling the wait up to a minute.
    let _ = write!(
        conf,
        " connect delay time 1; connect retry time {}; error wait time 1, 60;",
        session.connect_time
    );
    // BIRD's strings have no escapes: the validation let no `"` through.
    if let Some(password) = &session.password {
        let _ = write!(conf, " password \"{password}\";");
    }
    // BIRD takes an iBGP peer for a distant one unless told, and BFD with
    // a distant peer needs a source address.
    if session.multihop {
        conf.push_str(" multihop;");
    } else if session.internal() {
        conf.push_str(" direct;");
    }
    if let Some(bfd) = session.bfd {
        let _ = write!(
            conf,
            " bfd {{ min rx interval {} ms; min tx interval {} ms; multiplier {};{} }};",
            bfd.receive_interval.as_millis(),
            bfd.transmit_interval.as_millis(),
            bfd.multiplier,
            if bfd.passive { " passive on;" } else { "" }
        );
    }
    let family = if session.address.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    };
    let _ = writeln!(
        conf,
        " {family} {{ import none; export filter '{}'; next hop self; }}; }}",
        export_filter(&session.name)
    );
    conf
}

fn export_filter(session: &str) -> String {
    symbol(EXPORT_PREFIX, session)
}

/// BIRD's name for a session: quoted, a name may hold `-` and `.`, but one
/// that is a keyword of BIRD's (`ibgp`, `static`) still reads as that
/// keyword, so each gets a prefix.
fn protocol_name(session: &str) -> String {
    symbol(SESSION_PREFIX, session)
}

/// The longest name (symbol) BIRD takes, in bytes.
const SYMBOL_MAX: usize = 64;

/// `prefix` and `name` as one BIRD symbol: whole where that fits in
/// [`SYMBOL_MAX`], else `name` cut short and a hash of all of it after a
/// `-h`. A BGPPeer's name may have 253 characters, and BIRD refuses the
/// whole configuration, every session's, for one symbol too long.
fn symbol(prefix: &str, name: &str) -> String {
    let whole = format!("{prefix}{name}");
    if whole.len() <= SYMBOL_MAX {
        return whole;
    }
    let hash = format!("-h{:08x}", crate::maglev::name_hash(name, 0) as u32);
    let room = SYMBOL_MAX - prefix.len() - hash.len();
    let cut = name
        .char_indices()
        .map(|(at, c)| at + c.len_utf8())
        .take_while(|&end| end <= room)
        .last()
        .unwrap_or(0);
    format!("{prefix}{}{hash}", &name[..cut])
}

/// The static routes BIRD announces. Blackhole: they are only announced; no
/// route enters this host's kernel table.
pub fn routes(prefixes: &BTreeSet<Prefix>) -> String {
    let mut v4 = String::new();
    let mut v6 = String::new();
    for prefix in prefixes {
        let routes = if prefix.address.is_ipv4() {
            &mut v4
        } else {
            &mut v6
        };
        let _ = write!(routes, " route {prefix} blackhole;");
    }
    format!(
        "protocol static {STATIC_V4} {{ ipv4;{v4} }}\nprotocol static {STATIC_V6} {{ ipv6;{v6} }}\n"
    )
}

/// One export filter per session, for every session of `settings`.
pub fn exports(settings: &BgpSettings, exports: &Exports) -> String {
    let mut conf = String::new();
    for session in &settings.sessions {
        let _ = write!(conf, "filter '{}' {{", export_filter(&session.name));
        for (prefix, attributes) in exports.sessions.get(&session.name).into_iter().flatten() {
            let _ = write!(conf, " if net = {prefix} then {{");
            if let Some(preference) = attributes.local_pref {
                let _ = write!(conf, " bgp_local_pref = {preference};");
            }
            for community in &attributes.communities {
                let _ = write!(conf, " {}", community.bird_statement());
            }
            conf.push_str(" accept; }");
        }
        conf.push_str(" reject; }\n");
    }
    conf
}

#[cfg(test)]
mod tests;
