//! `--announce bgp`: the settings of the BGP sessions, checked before
//! anything is loaded, and the BIRD configuration they make.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    str::FromStr,
    time::Duration,
};

/// Names of BIRD's protocols, which `lb bgp` and the tests read back.
pub const STATIC_V4: &str = "lb_vips4";
pub const STATIC_V6: &str = "lb_vips6";

#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum BgpError {
    #[error(
        "--bgp-peer {0}: no AS: write ADDR@ASN, e.g. {0}@64500 (the peer's AS, 1 to 4294967295)"
    )]
    PeerWithoutAs(String),
    #[error("--bgp-peer {peer}: {address:?} is not an IP address")]
    PeerAddress { peer: String, address: String },
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
        let asn = parse_asn("--bgp-peer", asn).map_err(|_| BgpError::AsOutOfRange {
            flag: "--bgp-peer",
            value: text.to_owned(),
        })?;
        Ok(Self { address, asn })
    }
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

/// Bidirectional Forwarding Detection on every session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bfd {
    pub interval: Duration,
    pub multiplier: u32,
}

/// Everything BIRD is configured from, besides the VIPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpSettings {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub peers: Vec<BgpPeer>,
    pub hold_time: u16,
    /// `None`: BFD off.
    pub bfd: Option<Bfd>,
}

impl BgpSettings {
    /// BIRD's configuration; the VIPs' routes are in `routes`, included, so
    /// they can be withdrawn without this configuration (`lb drain`, `lb down`).
    pub fn bird_config(&self, routes: &Path, log: &Path) -> String {
        let mut conf = format!(
            "# Written by lb agent, rewritten on every change: do not edit.\n\
             router id {};\n\
             log \"{}\" all;\n\
             protocol device {{}}\n",
            self.router_id,
            log.display()
        );
        if let Some(bfd) = self.bfd {
            let ms = bfd.interval.as_millis();
            let _ = writeln!(
                conf,
                "protocol bfd lb_bfd {{ interface \"*\" {{ min rx interval {ms} ms; \
                 min tx interval {ms} ms; multiplier {}; }}; }}",
                bfd.multiplier
            );
        }
        let _ = writeln!(conf, "include \"{}\";", routes.display());
        for (index, peer) in self.peers.iter().enumerate() {
            let (family, routes) = match peer.address {
                IpAddr::V4(_) => ("ipv4", STATIC_V4),
                IpAddr::V6(_) => ("ipv6", STATIC_V6),
            };
            let _ = writeln!(
                conf,
                "protocol bgp {} {{ local as {}; neighbor {} as {}; hold time {}; {}\
                 {family} {{ import none; export where proto = \"{routes}\"; next hop self; }}; }}",
                peer_name(index),
                self.asn,
                peer.address,
                peer.asn,
                self.hold_time,
                if self.bfd.is_some() { "bfd on; " } else { "" },
            );
        }
        conf
    }
}

/// BIRD's name of the session with the `index`th peer.
pub fn peer_name(index: usize) -> String {
    format!("lb_peer{}", index + 1)
}

/// The static routes BIRD announces: one /32 or /128 per VIP. Blackhole:
/// they are only announced; no route enters this host's kernel table.
pub fn routes(vips: &BTreeSet<IpAddr>) -> String {
    let mut v4 = String::new();
    let mut v6 = String::new();
    for vip in vips {
        match vip {
            IpAddr::V4(ip) => {
                let _ = write!(v4, " route {ip}/32 blackhole;");
            }
            IpAddr::V6(ip) => {
                let _ = write!(v6, " route {ip}/128 blackhole;");
            }
        }
    }
    format!(
        "protocol static {STATIC_V4} {{ ipv4;{v4} }}\nprotocol static {STATIC_V6} {{ ipv6;{v6} }}\n"
    )
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

    #[test]
    fn the_configuration_has_every_session_with_bfd() {
        let settings = BgpSettings {
            asn: 64512,
            router_id: Ipv4Addr::new(10, 1, 0, 2),
            peers: vec![
                "10.1.0.1@64500".parse().unwrap(),
                "2001:db8:1::1@64500".parse().unwrap(),
            ],
            hold_time: 90,
            bfd: Some(Bfd {
                interval: Duration::from_millis(100),
                multiplier: 3,
            }),
        };
        let conf = settings.bird_config(
            Path::new("/run/lb/x/routes.conf"),
            Path::new("/run/lb/x/bird.log"),
        );
        assert_eq!(
            conf,
            "# Written by lb agent, rewritten on every change: do not edit.\n\
             router id 10.1.0.2;\n\
             log \"/run/lb/x/bird.log\" all;\n\
             protocol device {}\n\
             protocol bfd lb_bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }\n\
             include \"/run/lb/x/routes.conf\";\n\
             protocol bgp lb_peer1 { local as 64512; neighbor 10.1.0.1 as 64500; hold time 90; bfd on; \
             ipv4 { import none; export where proto = \"lb_vips4\"; next hop self; }; }\n\
             protocol bgp lb_peer2 { local as 64512; neighbor 2001:db8:1::1 as 64500; hold time 90; bfd on; \
             ipv6 { import none; export where proto = \"lb_vips6\"; next hop self; }; }\n"
        );
        let without = BgpSettings {
            bfd: None,
            ..settings
        };
        let conf = without.bird_config(Path::new("r"), Path::new("l"));
        assert!(!conf.contains("bfd"), "{conf}");
    }

    #[test]
    fn routes_are_host_routes_per_family() {
        let vips: BTreeSet<IpAddr> = ["198.51.100.10", "2001:db8:ff::10", "198.51.100.11"]
            .iter()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(
            routes(&vips),
            "protocol static lb_vips4 { ipv4; route 198.51.100.10/32 blackhole; route 198.51.100.11/32 blackhole; }\n\
             protocol static lb_vips6 { ipv6; route 2001:db8:ff::10/128 blackhole; }\n"
        );
        assert_eq!(
            routes(&BTreeSet::new()),
            "protocol static lb_vips4 { ipv4; }\nprotocol static lb_vips6 { ipv6; }\n"
        );
    }
}
