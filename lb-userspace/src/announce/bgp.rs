//! The BGP sessions: what BIRD is configured with, from the `--bgp-*` flags
//! (checked before anything is loaded) or from MetalLB's BGPPeers.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
    time::Duration,
};

#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum BgpError {
    #[error(
        "--bgp-peer {0}: no AS: write ADDR@ASN, e.g. {0}@64500 (the peer's AS, 1 to 4294967295)"
    )]
    PeerWithoutAs(String),
    #[error("--bgp-peer {peer}: {address:?} is not an IP address")]
    PeerAddress { peer: String, address: String },
    #[error(
        "--bgp-peer {0}: a link-local address needs an interface, which lb does not give BIRD; \
         use a global or unique local address of the peer"
    )]
    PeerLinkLocal(String),
    #[error(
        "--bgp-peer {peer}: {address} is a peer already (--bgp-peer {earlier}): BIRD runs one \
         session per neighbour address and port"
    )]
    DuplicatePeer {
        peer: String,
        earlier: String,
        address: IpAddr,
    },
    #[error("{flag} {value}: an AS number is 1 to 4294967295")]
    AsOutOfRange { flag: &'static str, value: String },
    #[error("--announce bgp needs --bgp-asn (this host's AS)")]
    NoLocalAs,
    #[error("--announce bgp needs at least one --bgp-peer ADDR@ASN")]
    NoPeers,
    #[error("{0} is for --announce bgp")]
    NotBgp(&'static str),
    #[error("--announce bgp needs a router id: no IPv4 address on {0}; pass --bgp-router-id IPV4")]
    NoRouterId(String),
}

/// A BGP neighbour: `ADDR@ASN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpPeer {
    pub address: IpAddr,
    pub asn: u32,
}

impl FromStr for BgpPeer {
    type Err = BgpError;

    fn from_str(text: &str) -> Result<Self, BgpError> {
        let (address, asn) = text
            .split_once('@')
            .ok_or_else(|| BgpError::PeerWithoutAs(text.to_owned()))?;
        let address = address.parse().map_err(|_| BgpError::PeerAddress {
            peer: text.to_owned(),
            address: address.to_owned(),
        })?;
        if needs_interface(address) {
            return Err(BgpError::PeerLinkLocal(text.to_owned()));
        }
        let asn = parse_asn("--bgp-peer", asn).map_err(|_| BgpError::AsOutOfRange {
            flag: "--bgp-peer",
            value: text.to_owned(),
        })?;
        Ok(Self { address, asn })
    }
}

/// The `--bgp-peer`s, each address once: every session of the flags is on
/// port 179, and BIRD's sessions to one address and port take turns at one
/// lock, so the second would wait forever.
pub fn parse_peers(texts: &[String]) -> Result<Vec<BgpPeer>, BgpError> {
    let mut peers: Vec<BgpPeer> = Vec::with_capacity(texts.len());
    for text in texts {
        let peer: BgpPeer = text.parse()?;
        if let Some(earlier) = peers.iter().position(|p| p.address == peer.address) {
            return Err(BgpError::DuplicatePeer {
                peer: text.clone(),
                earlier: texts[earlier].clone(),
                address: peer.address,
            });
        }
        peers.push(peer);
    }
    Ok(peers)
}

/// Whether BIRD reaches `address` only through a named interface: an IPv6
/// link-local one (fe80::/10), as a neighbour or as the source. lb names no
/// interface for a session, and BIRD refuses the whole configuration,
/// every session's, for one such address.
pub fn needs_interface(address: IpAddr) -> bool {
    matches!(address, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

/// An AS number: 1 to 2^32 - 1 (0 is reserved, RFC 7607).
pub fn parse_asn(flag: &'static str, text: &str) -> Result<u32, BgpError> {
    text.parse::<u32>()
        .ok()
        .filter(|asn| *asn != 0)
        .ok_or_else(|| BgpError::AsOutOfRange {
            flag,
            value: text.to_owned(),
        })
}

/// The BGP sessions BIRD runs, from the flags or from BGPPeer objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpSettings {
    /// `None`: the lowest of the sessions' own, else BIRD picks one of this
    /// host's IPv4 addresses.
    pub router_id: Option<Ipv4Addr>,
    pub sessions: Vec<Session>,
}

/// One BGP session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The name advertisements pick it by (a BGPPeer's name; `peerN` for
    /// the `N`th `--bgp-peer`); BIRD's protocol is `lb_` and the name.
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub peer_as: PeerAs,
    pub local_as: u32,
    pub source_address: Option<IpAddr>,
    /// Seconds; 0: no hold timer, and no keepalives.
    pub hold_time: u16,
    /// Seconds; `None`: a third of the hold time.
    pub keepalive_time: Option<u16>,
    /// Seconds between attempts to connect to the peer.
    pub connect_time: u16,
    /// This session's own router id, else BIRD's.
    pub router_id: Option<Ipv4Addr>,
    pub bfd: Option<Bfd>,
    /// TCP MD5 signatures (RFC 2385).
    pub password: Option<String>,
    /// An eBGP peer that is not on a segment of this host.
    pub multihop: bool,
}

/// The peer's AS: a number, or whichever the peer says, the same as ours
/// (`internal`) or another (`external`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAs {
    Number(u32),
    Internal,
    External,
}

impl fmt::Display for PeerAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(asn) => write!(f, "as {asn}"),
            Self::Internal => f.write_str("internal"),
            Self::External => f.write_str("external"),
        }
    }
}

impl Session {
    /// The session of the `index`th `--bgp-peer`, as the flags set it up.
    pub fn of_flag(index: usize, peer: &BgpPeer, flags: &FlagSettings) -> Self {
        Self {
            name: format!("peer{}", index + 1),
            address: peer.address,
            port: BGP_PORT,
            peer_as: PeerAs::Number(peer.asn),
            local_as: flags.asn,
            source_address: None,
            hold_time: flags.hold_time,
            keepalive_time: None,
            connect_time: CONNECT_TIME_SECONDS,
            router_id: None,
            bfd: flags.bfd,
            password: None,
            multihop: false,
        }
    }

    /// Whether both ends are in one AS.
    pub fn internal(&self) -> bool {
        match self.peer_as {
            PeerAs::Number(asn) => asn == self.local_as,
            PeerAs::Internal => true,
            PeerAs::External => false,
        }
    }
}

pub const BGP_PORT: u16 = 179;

/// How often a session that is down tries to connect, unless a BGPPeer's
/// `connectTime` says otherwise: soon, as a host that is not peering takes
/// no share of its VIPs' traffic (BIRD's own default is 120 s, and FRR's).
pub const CONNECT_TIME_SECONDS: u16 = 5;

#[cfg(test)]
impl Session {
    /// A session as MetalLB sets one up when a BGPPeer gives only its AS
    /// numbers and address: port 179, a 90 s hold time, lb's connect time,
    /// nothing else.
    pub fn with_metallb_defaults(name: &str, address: &str, peer_as: u32, local_as: u32) -> Self {
        Self {
            name: name.to_owned(),
            address: address.parse().expect("an IP address"),
            port: 179,
            peer_as: PeerAs::Number(peer_as),
            local_as,
            source_address: None,
            hold_time: 90,
            keepalive_time: None,
            connect_time: CONNECT_TIME_SECONDS,
            router_id: None,
            bfd: None,
            password: None,
            multihop: false,
        }
    }
}

/// What the `--bgp-*` and `--bfd-*` flags set for every session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlagSettings {
    pub asn: u32,
    pub hold_time: u16,
    pub bfd: Option<Bfd>,
}

/// Bidirectional Forwarding Detection on a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bfd {
    pub receive_interval: Duration,
    pub transmit_interval: Duration,
    pub multiplier: u32,
    /// Wait for the peer to start the session.
    pub passive: bool,
}

impl Bfd {
    /// The same interval both ways, as `--bfd-interval` sets it.
    pub fn symmetric(interval: Duration, multiplier: u32) -> Self {
        Self {
            receive_interval: interval,
            transmit_interval: interval,
            multiplier,
            passive: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_ones_say_why() {
        assert_eq!(
            "10.1.0.1@64500".parse(),
            Ok(BgpPeer {
                address: "10.1.0.1".parse().unwrap(),
                asn: 64500
            })
        );
        assert_eq!(
            "2001:db8::1@4200000000".parse::<BgpPeer>().map(|p| p.asn),
            Ok(4_200_000_000)
        );
        let error = "10.1.0.1".parse::<BgpPeer>().unwrap_err().to_string();
        assert!(
            error.contains("no AS") && error.contains("10.1.0.1@64500"),
            "{error}"
        );
        for bad in ["10.1.0.1@0", "10.1.0.1@4294967296", "10.1.0.1@x"] {
            let error = bad.parse::<BgpPeer>().unwrap_err();
            assert!(
                matches!(error, BgpError::AsOutOfRange { .. }),
                "{bad}: {error}"
            );
        }
        assert!(matches!(
            "router@64500".parse::<BgpPeer>(),
            Err(BgpError::PeerAddress { .. })
        ));
    }

    /// BIRD refuses its whole configuration for a link-local neighbour
    /// without an interface.
    #[test]
    fn link_local_peers_are_refused_naming_the_flag() {
        let error = "fe80::1@64500".parse::<BgpPeer>().unwrap_err();
        assert_eq!(error, BgpError::PeerLinkLocal("fe80::1@64500".to_owned()));
        let error = error.to_string();
        assert!(
            error.starts_with("--bgp-peer fe80::1@64500: a link-local address"),
            "{error}"
        );
        for fine in ["fd00::1@64500", "169.254.0.1@64500"] {
            assert!(fine.parse::<BgpPeer>().is_ok(), "{fine}");
        }
    }

    #[test]
    fn a_peer_given_twice_is_refused_naming_both() {
        let texts = |texts: &[&str]| texts.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        let peers = parse_peers(&texts(&["10.1.0.1@64500", "2001:db8::1@64500"])).unwrap();
        assert_eq!(peers.len(), 2);
        let error = parse_peers(&texts(&["10.1.0.1@64500", "10.1.0.2@1", "10.1.0.1@64501"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "--bgp-peer 10.1.0.1@64501: 10.1.0.1 is a peer already (--bgp-peer 10.1.0.1@64500): \
             BIRD runs one session per neighbour address and port"
        );
    }
}
