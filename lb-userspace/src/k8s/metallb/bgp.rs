//! MetalLB's BGPPeers as BGP sessions, with the BFDProfiles and Secrets
//! they name. A peer that cannot be set up as written is skipped with the
//! field at fault; the others still run.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::Duration,
};

use super::{
    invalid,
    objects::{BFDProfileSpec, BGPPeer, BGPPeerSpec, SecretReference},
};
use crate::{
    announce::{
        bgp::{BGP_PORT, Bfd, CONNECT_TIME_SECONDS, PeerAs, Session, needs_interface},
        bird_config::session_name_taken,
    },
    k8s::{objects::MetallbObjects, translate::Skipped},
    units::parse_go_duration,
};

/// MetalLB's defaults.
const HOLD_TIME_SECONDS: u16 = 90;
const BFD_INTERVAL_MS: u32 = 300;
const BFD_MULTIPLIER: u32 = 3;

/// The sessions of `metallb`'s BGPPeers, by name, and the peers skipped.
pub fn sessions(metallb: &MetallbObjects) -> (Vec<Session>, Vec<Skipped>) {
    let mut peers: Vec<&Arc<BGPPeer>> = metallb.bgp_peers.iter().collect();
    peers.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut valid: Vec<Session> = Vec::new();
    let mut skipped = Vec::new();
    for peer in peers {
        // BIRD runs one session per neighbour address.
        let result = session(peer, metallb).and_then(|session| {
            match valid.iter().find(|other| other.address == session.address) {
                Some(other) => Err(format!(
                    "spec.peerAddress: BGPPeer {} has this peer already",
                    other.name
                )),
                None => Ok(session),
            }
        });
        match result {
            Ok(session) => valid.push(session),
            Err(reason) => skipped.push(invalid("BGPPeer", &peer.metadata, reason)),
        }
    }
    (valid, skipped)
}

fn session(peer: &BGPPeer, metallb: &MetallbObjects) -> Result<Session, String> {
    let spec = &peer.spec;
    let name = peer.metadata.name.clone().ok_or("no metadata.name")?;
    if session_name_taken(&name) {
        return Err(format!(
            "metadata.name {name:?}: BIRD has a protocol or filter of lb's by that name; \
             rename the BGPPeer"
        ));
    }
    if let Some(vrf) = spec.vrf.as_deref().filter(|vrf| !vrf.is_empty()) {
        return Err(format!(
            "spec.vrf: {vrf:?}: lb speaks BGP from its host's default routing table only"
        ));
    }
    let local_as = match spec.my_asn {
        None | Some(0) => return Err("spec.myASN: missing (this host's AS)".to_owned()),
        Some(asn) => asn,
    };
    let address = parse_ip("spec.peerAddress", &spec.peer_address)?;
    let source_address = spec
        .source_address
        .as_deref()
        .map(|text| parse_ip("spec.sourceAddress", text))
        .transpose()?;
    if source_address.is_some_and(|source| source.is_ipv4() != address.is_ipv4()) {
        return Err("spec.sourceAddress: not of the family of spec.peerAddress".to_owned());
    }
    let (hold_time, keepalive_time) = timers(spec)?;
    let connect_time = match whole_seconds("spec.connectTime", spec.connect_time.as_deref())? {
        Some(0) => return Err("spec.connectTime: 0s: at least 1s".to_owned()),
        connect => connect.unwrap_or(CONNECT_TIME_SECONDS),
    };
    let bfd = spec
        .bfd_profile
        .as_deref()
        .map(|name| bfd(name, metallb))
        .transpose()?;
    let multihop = spec.ebgp_multi_hop.unwrap_or(false);
    if multihop && bfd.is_some() && source_address.is_none() {
        return Err(
            "spec.bfdProfile: BFD with a multi-hop peer (spec.ebgpMultiHop) needs \
                    spec.sourceAddress"
                .to_owned(),
        );
    }
    Ok(Session {
        name,
        address,
        port: match spec.peer_port {
            Some(0) => return Err("spec.peerPort: 0 is not a port".to_owned()),
            port => port.unwrap_or(BGP_PORT),
        },
        peer_as: peer_as(spec)?,
        local_as,
        source_address,
        hold_time,
        keepalive_time,
        connect_time,
        router_id: spec
            .router_id
            .as_deref()
            .map(|id| {
                id.parse::<Ipv4Addr>()
                    .map_err(|_| format!("spec.routerID: {id:?} is not an IPv4 address"))
            })
            .transpose()?,
        bfd,
        password: password(peer, metallb)?,
        multihop,
    })
}

/// An address of a session's ends.
fn parse_ip(field: &str, text: &str) -> Result<IpAddr, String> {
    let address = text
        .parse()
        .map_err(|_| format!("{field}: {text:?} is not an IP address"))?;
    if needs_interface(address) {
        return Err(format!(
            "{field}: {address} is link-local: BIRD needs an interface for it, which lb does \
             not give; use a global or unique local address"
        ));
    }
    Ok(address)
}

fn peer_as(spec: &BGPPeerSpec) -> Result<PeerAs, String> {
    match (spec.peer_asn, spec.dynamic_asn.as_deref()) {
        (Some(_), Some(_)) => Err("spec.peerASN and spec.dynamicASN: set one, not both".to_owned()),
        (Some(0), None) => Err("spec.peerASN: 0 is not an AS number".to_owned()),
        (Some(asn), None) => Ok(PeerAs::Number(asn)),
        (None, Some("internal")) => Ok(PeerAs::Internal),
        (None, Some("external")) => Ok(PeerAs::External),
        (None, Some(other)) => Err(format!(
            "spec.dynamicASN: {other:?} is neither \"internal\" nor \"external\""
        )),
        (None, None) => Err("no AS: set spec.peerASN (or spec.dynamicASN)".to_owned()),
    }
}

/// Hold time and keepalive in whole seconds, as BGP carries them: the hold
/// time 0 (no keepalives) or 3 seconds and more, the keepalive no longer.
fn timers(spec: &BGPPeerSpec) -> Result<(u16, Option<u16>), String> {
    let hold = whole_seconds("spec.holdTime", spec.hold_time.as_deref())?;
    let hold = hold.unwrap_or(HOLD_TIME_SECONDS);
    if hold != 0 && hold < 3 {
        return Err(format!("spec.holdTime: {hold}s: 0 or at least 3s"));
    }
    let keepalive = whole_seconds("spec.keepaliveTime", spec.keepalive_time.as_deref())?;
    if let Some(keepalive) = keepalive.filter(|k| *k > hold) {
        return Err(format!(
            "spec.keepaliveTime: {keepalive}s is longer than the hold time ({hold}s)"
        ));
    }
    // 0: none to send, which is what BIRD does without one when the hold
    // time is 0 (else a third of it).
    Ok((hold, keepalive.filter(|k| *k != 0)))
}

/// A BGP timer: a Go duration of whole seconds, at most 65535 (BGP and
/// BIRD count them in 16 bits).
fn whole_seconds(field: &str, text: Option<&str>) -> Result<Option<u16>, String> {
    let Some(text) = text else { return Ok(None) };
    let duration = parse_go_duration(text).map_err(|e| format!("{field}: {e}"))?;
    if duration.subsec_nanos() != 0 {
        return Err(format!(
            "{field}: {text:?} is not a whole number of seconds"
        ));
    }
    u16::try_from(duration.as_secs())
        .map(Some)
        .map_err(|_| format!("{field}: {text:?} is longer than 65535s"))
}

/// The BFD settings of the profile named `name`. BIRD has no echo mode and
/// no minimum TTL for BFD: `echoMode`, `echoInterval` and `minimumTtl` are
/// left to the defaults (asynchronous mode, any TTL for multi-hop).
fn bfd(name: &str, metallb: &MetallbObjects) -> Result<Bfd, String> {
    let profile = metallb
        .bfd_profiles
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .ok_or_else(|| format!("spec.bfdProfile: no BFDProfile named {name:?}"))?;
    let spec: &BFDProfileSpec = &profile.spec;
    let within = |field: &str, value: Option<u32>, default: u32, range: (u32, u32)| {
        let value = value.unwrap_or(default);
        if (range.0..=range.1).contains(&value) {
            Ok(value)
        } else {
            Err(format!(
                "spec.bfdProfile: BFDProfile {name}: spec.{field}: {value} is not {} to {}",
                range.0, range.1
            ))
        }
    };
    let interval = |field, value| {
        within(field, value, BFD_INTERVAL_MS, (10, 60_000))
            .map(|ms| Duration::from_millis(ms.into()))
    };
    Ok(Bfd {
        receive_interval: interval("receiveInterval", spec.receive_interval)?,
        transmit_interval: interval("transmitInterval", spec.transmit_interval)?,
        multiplier: within(
            "detectMultiplier",
            spec.detect_multiplier,
            BFD_MULTIPLIER,
            (2, 255),
        )?,
        passive: spec.passive_mode.unwrap_or(false),
    })
}

const BASIC_AUTH: &str = "kubernetes.io/basic-auth";

/// The session's TCP MD5 password: written in the peer, or the `password`
/// of a basic-auth Secret (in the peer's namespace unless it names one).
fn password(peer: &BGPPeer, metallb: &MetallbObjects) -> Result<Option<String>, String> {
    let password = match (&peer.spec.password, &peer.spec.password_secret) {
        (Some(_), Some(_)) => {
            return Err("spec.password and spec.passwordSecret: set one, not both".to_owned());
        }
        (Some(password), None) => password.clone(),
        (None, Some(reference)) => secret_password(peer, reference, metallb)
            .map_err(|reason| format!("spec.passwordSecret: {reason}"))?,
        (None, None) => return Ok(None),
    };
    // BIRD reads it from a quoted string, which has no escapes.
    if password.is_empty() || password.chars().any(|c| c.is_control() || c == '"') {
        return Err(
            "password: empty, or with a '\"' or a control character, which BIRD's \
                    configuration cannot carry"
                .to_owned(),
        );
    }
    Ok(Some(password))
}

fn secret_password(
    peer: &BGPPeer,
    reference: &SecretReference,
    metallb: &MetallbObjects,
) -> Result<String, String> {
    let namespace = reference
        .namespace
        .as_deref()
        .or(peer.metadata.namespace.as_deref())
        .unwrap_or("default");
    let name = format!("{namespace}/{}", reference.name);
    let secret = metallb
        .secrets
        .iter()
        .find(|s| {
            s.metadata.name.as_deref() == Some(reference.name.as_str())
                && s.metadata.namespace.as_deref().unwrap_or("default") == namespace
        })
        .ok_or_else(|| format!("no Secret {name}"))?;
    if let Some(kind) = secret.type_.as_deref().filter(|kind| *kind != BASIC_AUTH) {
        return Err(format!("Secret {name} is of type {kind}, not {BASIC_AUTH}"));
    }
    let from_data = secret
        .data
        .as_ref()
        .and_then(|data| data.get("password"))
        .map(|bytes| String::from_utf8(bytes.0.clone()));
    let from_string_data = || secret.string_data.as_ref()?.get("password").cloned();
    match from_data {
        Some(Ok(password)) => Ok(password),
        Some(Err(_)) => Err(format!("Secret {name}: key \"password\" is not UTF-8")),
        None => from_string_data().ok_or_else(|| format!("Secret {name} has no key \"password\"")),
    }
}

#[cfg(test)]
mod tests;
