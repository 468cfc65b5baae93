//! Header parsing: the one place that touches raw packet offsets.

use core::mem::size_of;

use aya_ebpf::{EbpfContext, bindings::xdp_action, programs::XdpContext};
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

/// The packet being processed, with its bounds read once.
///
/// Reading `data`/`data_end` from the context again after a write to the
/// packet gives the verifier a fresh pointer it has no bounds for, while the
/// compiler may have dropped the check as implied by an earlier one. Every
/// pointer is therefore derived from this one snapshot.
pub struct Frame {
    ctx: XdpContext,
    start: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn new(ctx: XdpContext) -> Self {
        let (start, end) = (ctx.data(), ctx.data_end());
        Self { ctx, start, end }
    }

    #[inline(always)]
    pub fn data(&self) -> usize {
        self.start
    }

    #[inline(always)]
    pub fn data_end(&self) -> usize {
        self.end
    }

    #[inline(always)]
    pub fn ingress_ifindex(&self) -> u32 {
        self.ctx.ingress_ifindex() as u32
    }

    /// Bytes of the frame, Ethernet header included.
    #[inline(always)]
    pub fn len(&self) -> u64 {
        (self.end - self.start) as u64
    }
}

impl EbpfContext for Frame {
    fn as_ptr(&self) -> *mut core::ffi::c_void {
        self.ctx.as_ptr()
    }
}

/// Returns a pointer to a `T` at `offset` bytes into the packet, if it fits.
///
/// The end is read volatile so the compiler cannot drop this check as implied
/// by an earlier one: the verifier only trusts a pointer it saw compared.
#[inline(always)]
pub fn ptr_at<T>(ctx: &Frame, offset: usize) -> Result<*mut T, Verdict> {
    // SAFETY: reading a field of a live reference.
    let end = unsafe { core::ptr::read_volatile(&ctx.end) };
    if ctx.start + offset + size_of::<T>() > end {
        return Err(Verdict::PassMalformed);
    }
    Ok((ctx.start + offset) as *mut T)
}

/// Offset of the checksum in a TCP or UDP header.
#[inline(always)]
pub fn l4_check_offset(proto: u8) -> usize {
    if proto == PROTO_TCP {
        TCP_CHECK_OFFSET
    } else {
        UDP_CHECK_OFFSET
    }
}

/// The IPv4 header of a packet that is neither malformed nor a fragment.
pub struct Ipv4 {
    /// Header length in bytes, options included.
    pub header_len: usize,
    /// Total length, host order.
    pub total_len: u16,
    pub tos: u8,
    pub proto: u8,
    /// Addresses, network order.
    pub src: u32,
    pub dst: u32,
}

impl Ipv4 {
    #[inline(always)]
    pub fn parse(ctx: &Frame) -> Result<Self, Verdict> {
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
        let total_len = u16::from_be_bytes(ip.tot_len);
        let frame_ip_len = ctx.data_end() - ctx.data() - EthHdr::LEN;
        if usize::from(total_len) > frame_ip_len || usize::from(total_len) < header_len {
            return Err(Verdict::PassMalformed);
        }
        if u16::from_ne_bytes(ip.frags) & IP_FRAGMENT_MASK_BE != 0 {
            return Err(Verdict::PassFragment);
        }
        Ok(Self {
            header_len,
            total_len,
            tos: ip.tos,
            proto: ip.proto,
            src: u32::from_ne_bytes(ip.src_addr),
            dst: u32::from_ne_bytes(ip.dst_addr),
        })
    }

    /// Offset of the header after this one.
    #[inline(always)]
    pub fn l4_offset(&self) -> usize {
        EthHdr::LEN + self.header_len
    }
}

/// What the FIB lookup needs to know about a packet.
pub struct Route {
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// IP total length, host order.
    pub total_len: u16,
    pub tos: u8,
}

/// An IPv4 TCP or UDP packet the program may own.
pub struct Packet {
    pub key: FlowKey,
    /// Offset of the L4 header (after any IP options).
    pub l4_offset: usize,
    /// Offset of the L4 checksum.
    pub l4_check_offset: usize,
    pub route: Route,
}

impl Packet {
    #[inline(always)]
    pub fn parse(ctx: &Frame, ip: &Ipv4) -> Result<Self, Verdict> {
        let (l4_min_len, check_offset) = match ip.proto {
            PROTO_TCP => (TCP_MIN_LEN, TCP_CHECK_OFFSET),
            PROTO_UDP => (UDP_LEN, UDP_CHECK_OFFSET),
            _ => return Err(Verdict::PassOtherProto),
        };
        if usize::from(ip.total_len) < ip.header_len + l4_min_len {
            return Err(Verdict::PassMalformed);
        }
        let l4_offset = ip.l4_offset();
        let ports: *const [u16; 2] = ptr_at(ctx, l4_offset)?;
        // The checksum must be inside the packet too before anyone rewrites it.
        ptr_at::<u16>(ctx, l4_offset + check_offset)?;
        // SAFETY: checked by `ptr_at`.
        let [src_port, dst_port] = unsafe { *ports };
        Ok(Self {
            key: FlowKey {
                src_ip: ip.src,
                dst_ip: ip.dst,
                src_port,
                dst_port,
                proto: ip.proto,
                _pad: [0; 3],
            },
            l4_offset,
            l4_check_offset: l4_offset + check_offset,
            route: Route {
                proto: ip.proto,
                src_port,
                dst_port,
                total_len: ip.total_len,
                tos: ip.tos,
            },
        })
    }
}
