//! Read-only views of the pinned maps, for the CLI: what is served, by whom, and
//! how much traffic went where.

use std::{collections::BTreeMap, net::Ipv4Addr};

use lb_common::{PROTO_TCP, PROTO_UDP, counters};
use serde::Serialize;

use crate::maps::{Maps, MapsError, map_error};

#[derive(Debug, Serialize)]
pub struct ServiceRow {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: &'static str,
    pub id: u32,
    pub backends: u32,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct BackendRow {
    /// `vip:port/protocol` of the service.
    pub service: String,
    pub id: u32,
    pub address: Ipv4Addr,
    pub port: u16,
    /// Entries of the service's Maglev table that point at this backend.
    pub ring_entries: u32,
    /// `ring_entries` over the table size.
    pub share: f64,
    pub packets: u64,
    pub bytes: u64,
}

fn protocol_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "?",
    }
}

/// Every service in the `SERVICES` map, sorted by (VIP, port, protocol).
pub fn services(maps: &Maps) -> Result<Vec<ServiceRow>, MapsError> {
    let mut rows = Vec::new();
    for entry in maps.services.iter() {
        let (key, info) = entry.map_err(|e| map_error(lb_common::MAP_SERVICES, e))?;
        let traffic = maps.service_traffic(info.id)?;
        rows.push(ServiceRow {
            vip: Ipv4Addr::from(key.vip.to_ne_bytes()),
            port: u16::from_be(key.port),
            protocol: protocol_name(key.proto),
            id: info.id,
            backends: info.backend_count,
            packets: traffic.packets,
            bytes: traffic.bytes,
        });
    }
    rows.sort_by_key(|r| (r.vip, r.port, r.protocol));
    Ok(rows)
}

/// Every backend of every service, found by walking each service's live Maglev
/// table: the kernel's own view of who gets traffic.
pub fn backends(maps: &Maps) -> Result<Vec<BackendRow>, MapsError> {
    let mut rows = Vec::new();
    for entry in maps.services.iter() {
        let (key, info) = entry.map_err(|e| map_error(lb_common::MAP_SERVICES, e))?;
        let service = format!(
            "{}:{}/{}",
            Ipv4Addr::from(key.vip.to_ne_bytes()),
            u16::from_be(key.port),
            protocol_name(key.proto)
        );
        let mut entries: BTreeMap<u32, u32> = BTreeMap::new();
        if info.backend_count > 0 {
            for slot in info.ring_base..info.ring_base + info.ring_size {
                let id = maps
                    .maglev
                    .get(&slot, 0)
                    .map_err(|e| map_error(lb_common::MAP_MAGLEV, e))?;
                *entries.entry(id).or_default() += 1;
            }
        }
        for (id, ring_entries) in entries {
            let backend = maps
                .backends
                .get(&id, 0)
                .map_err(|e| map_error(lb_common::MAP_BACKENDS, e))?;
            let traffic = maps.backend_traffic(id)?;
            rows.push(BackendRow {
                service: service.clone(),
                id,
                address: Ipv4Addr::from(backend.ip.to_ne_bytes()),
                port: u16::from_be(backend.port),
                ring_entries,
                share: f64::from(ring_entries) / f64::from(info.ring_size),
                packets: traffic.packets,
                bytes: traffic.bytes,
            });
        }
    }
    rows.sort_by(|a, b| (&a.service, a.address).cmp(&(&b.service, b.address)));
    Ok(rows)
}

/// Global counters by name.
pub fn global(maps: &Maps) -> Result<BTreeMap<&'static str, u64>, MapsError> {
    let values = maps.global_counters()?;
    Ok(counters::NAMES.iter().copied().zip(values).collect())
}
