//! The TCP and UDP path, shared by the entry point and the side path of
//! IPv4 datagrams' later fragments.

use core::mem::MaybeUninit;

use lb_common::counters;

use crate::{
    balance::{self, Claim},
    forward::{self, Direction, HopCache, Route, check_ttl},
    fragments,
    maps::{self, count},
    nat,
    parse::{Frame, Ip, Packet},
    verdict::Verdict,
};

/// The TCP and UDP path: a packet for a service goes to its backend (DNAT,
/// or with direct server return only the node's MAC), a node's reply leaves
/// with its VIP (reverse NAT); `ports` are its source and destination port
/// (`Transport::ports`). `HEADER`: the packet holds its transport header,
/// which all but an IPv4 datagram's later fragments do (their ports come
/// from the first, and only their addresses are rewritten). Inlined in the
/// entry point, whose stack it fits now that the other paths are programs
/// of their own, and in the later fragments' side path.
#[inline(always)]
pub fn serve<const HEADER: bool>(
    ctx: &Frame,
    ip: &Ip,
    ports: u32,
    claim: Claim,
) -> Result<u32, Verdict> {
    let mut packet = MaybeUninit::uninit();
    Packet::parse::<HEADER>(ctx, ip, ports, &mut packet)?;
    // SAFETY: `parse` returned `Ok`, so it wrote the packet.
    let packet = unsafe { packet.assume_init_ref() };
    let key = &packet.key;
    // The end of the packet that changes, and to what (the address by
    // reference: copied, it is stored a byte at a time); where its next hop
    // is cached.
    let reply;
    let (cache, new_ip, new_port, tracked, now) =
        match balance::backend_of(ctx, packet, claim, ip.ttl)? {
            Some((backend, now)) => (
                HopCache::Backend(backend.id),
                backend.ip,
                backend.port,
                true,
                now,
            ),
            None => {
                let now = forward::clock();
                reply = balance::reply_of(key, |request| balance::flow_backend(request, now))
                    .ok_or(Verdict::PassNotService)?;
                check_ttl(ip.ttl)?;
                (
                    HopCache::Destination,
                    &reply.frontend.vip,
                    reply.frontend.port,
                    reply.tracked,
                    now,
                )
            }
        };
    if HEADER {
        fragments::remember(ctx, ip, ports)?;
    }
    // Looked up before anything is rewritten: a reply addressed to this host
    // (a health check, the host's own connection to a NodePort) is the
    // kernel's, and must reach it as it came.
    let to_backend = matches!(cache, HopCache::Backend(_));
    let ends = if to_backend {
        [&key.src_ip, new_ip]
    } else {
        [new_ip, &key.dst_ip]
    };
    let route = Route::of(ip, [key.src_port, key.dst_port]);
    let hop = match forward::next_hop(ctx, &route, ends, cache, now) {
        Ok(hop) => hop,
        Err(verdict) => forward::too_big(ctx, &route, verdict)?,
    };
    let direction = if !to_backend {
        nat::rewrite_source::<HEADER>(ctx, packet, new_ip, new_port)?;
        if !tracked {
            count(counters::REPLIES_UNTRACKED);
        }
        Direction::ToClient
    } else if maps::direct_server_return() {
        hop.check_direct()?;
        Direction::ToBackend
    } else {
        nat::rewrite_destination::<HEADER>(ctx, packet, new_ip, new_port)?;
        Direction::ToBackend
    };
    forward::send(ctx, ip.family, &hop, direction)
}
