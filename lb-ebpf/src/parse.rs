//! Header parsing: the one place that touches raw packet offsets.

use core::mem::size_of;

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{FlowKey, PROTO_TCP, PROTO_UDP, counters};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
/// More-fragments flag and fragment offset, network order.
const IP_FRAGMENT_MASK_BE: u16 = 0x3fffu16.to_be();
const TCP_MIN_LEN: usize = 20;
const UDP_LEN: usize = 8;
/// Offsets of the checksum inside the L4 header.
const TCP_CHECK_OFFSET: usize = 16;
const UDP_CHECK_OFFSET: usize = 6;

/// Why a packet was not forwarded: each maps to one XDP action and one counter.
#[derive(Clone, Copy)]
pub enum Verdict {
    PassNotIpv4,
    PassFragment,
    PassOtherProto,
    PassMalformed,
    PassNotService,
    PassFibMiss,
    PassFibOther,
    DropNoBackend,
    DropInternal,
}

impl Verdict {
    #[inline(always)]
    pub fn counter(self) -> u32 {
        match self {
            Self::PassNotIpv4 => counters::PASS_NOT_IPV4,
            Self::PassFragment => counters::PASS_FRAGMENT,
            Self::PassOtherProto => counters::PASS_OTHER_PROTO,
            Self::PassMalformed => counters::PASS_MALFORMED,
            Self::PassNotService => counters::PASS_NOT_SERVICE,
            Self::PassFibMiss => counters::FIB_MISS,
            Self::PassFibOther => counters::FIB_OTHER,
            Self::DropNoBackend => counters::DROP_NO_BACKEND,
            Self::DropInternal => counters::DROP_INTERNAL,
        }
    }

    #[inline(always)]
    pub fn action(self) -> u32 {
        match self {
            Self::DropNoBackend | Self::DropInternal => xdp_action::XDP_DROP,
            _ => xdp_action::XDP_PASS,
        }
    }
}

/// Returns a pointer to a `T` at `offset` bytes into the packet, if it fits.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Verdict> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Verdict::PassMalformed);
    }
    Ok((start + offset) as *mut T)
}

/// An IPv4 TCP or UDP packet the program may own.
pub struct Packet {
    pub key: FlowKey,
    /// Offset of the L4 header (after any IP options).
    pub l4_offset: usize,
    /// Offset of the L4 checksum.
    pub l4_check_offset: usize,
    /// IP total length, host order.
    pub ip_total_len: u16,
    pub tos: u8,
}

impl Packet {
    #[inline(always)]
    pub fn parse(ctx: &XdpContext) -> Result<Self, Verdict> {
        let eth: *const EthHdr = ptr_at(ctx, 0).map_err(|_| Verdict::PassNotIpv4)?;
        // SAFETY: `ptr_at` checked the header lies inside the packet.
        if unsafe { (*eth).ether_type } != ETH_P_IPV4_BE {
            return Err(Verdict::PassNotIpv4);
        }
        let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
        // SAFETY: as above.
        let ip = unsafe { &*ip };
        let header_len = usize::from(ip.vihl & 0x0f) * 4;
        if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
            return Err(Verdict::PassMalformed);
        }
        let ip_total_len = u16::from_be_bytes(ip.tot_len);
        let frame_ip_len = ctx.data_end() - ctx.data() - EthHdr::LEN;
        if usize::from(ip_total_len) > frame_ip_len {
            return Err(Verdict::PassMalformed);
        }
        if u16::from_ne_bytes(ip.frags) & IP_FRAGMENT_MASK_BE != 0 {
            return Err(Verdict::PassFragment);
        }
        let (l4_min_len, check_offset) = match ip.proto {
            PROTO_TCP => (TCP_MIN_LEN, TCP_CHECK_OFFSET),
            PROTO_UDP => (UDP_LEN, UDP_CHECK_OFFSET),
            _ => return Err(Verdict::PassOtherProto),
        };
        if usize::from(ip_total_len) < header_len + l4_min_len {
            return Err(Verdict::PassMalformed);
        }
        let l4_offset = EthHdr::LEN + header_len;
        let ports: *const [u16; 2] = ptr_at(ctx, l4_offset)?;
        // The checksum must be inside the packet too before anyone rewrites it.
        ptr_at::<u16>(ctx, l4_offset + check_offset)?;
        // SAFETY: checked by `ptr_at`.
        let [src_port, dst_port] = unsafe { *ports };
        Ok(Self {
            key: FlowKey {
                src_ip: u32::from_ne_bytes(ip.src_addr),
                dst_ip: u32::from_ne_bytes(ip.dst_addr),
                src_port,
                dst_port,
                proto: ip.proto,
                _pad: [0; 3],
            },
            l4_offset,
            l4_check_offset: l4_offset + check_offset,
            ip_total_len,
            tos: ip.tos,
        })
    }
}

/// Bytes of the frame, Ethernet header included.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}
