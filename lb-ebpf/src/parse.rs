//! Header parsing: the one place that touches raw packet offsets.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{EbpfContext, programs::XdpContext};
use lb_common::{Addr, FlowKey, PROTO_TCP, PROTO_UDP, ipv4_mapped, is_ipv4_mapped, mac_word};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    keys::flow_key,
    maps::{iface_mac_word, opaque_zero},
    nat::copy_addr,
    verdict::Verdict,
};

/// The EtherTypes of IPv4 and IPv6, network order.
pub const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
/// The first byte of an option-less IPv4 header: version 4, 5 words.
pub const PLAIN_IPV4_VIHL: u8 = 0x45;
/// IPv4's fragment offset field, host order: not zero in a later fragment.
pub const IP_FRAGMENT_OFFSET: u16 = 0x1fff;
/// The fragment offset and the more-fragments flag: not zero in a fragment.
pub const IP_FRAGMENT_MASK: u16 = 0x3fff;
/// IPv6 extension headers skipped on the way to the transport header.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;
/// How many extension headers are walked before the packet is left to the kernel.
const IPV6_MAX_EXTENSIONS: usize = 4;
const TCP_MIN_LEN: usize = 20;
const UDP_LEN: usize = 8;
/// Offsets of the checksum inside the L4 header.
const TCP_CHECK_OFFSET: usize = 16;
const UDP_CHECK_OFFSET: usize = 6;
/// The TCP flags byte, and the flags that tell a connection's first packet.
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The packet being processed, with its bounds and interface read once.
///
/// Reading `data`/`data_end` from the context again after a write to the
/// packet gives the verifier a fresh pointer it has no bounds for, while the
/// compiler may have dropped the check as implied by an earlier one. Every
/// pointer is therefore derived from this one snapshot.
pub struct Frame {
    ctx: XdpContext,
    start: usize,
    end: usize,
    /// Read once: the verifier turns each read into three dependent loads
    /// (queue, device, index), and a forwarded packet needs it up to three
    /// times.
    ifindex: u32,
}

impl Frame {
    #[inline(always)]
    pub fn new(ctx: XdpContext) -> Self {
        let (start, end) = (ctx.data(), ctx.data_end());
        let ifindex = ctx.ingress_ifindex() as u32;
        Self {
            ctx,
            start,
            end,
            ifindex,
        }
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
        self.ifindex
    }

    /// The frame as it is after a helper moved its start or end
    /// (`bpf_xdp_adjust_head`, `bpf_xdp_adjust_tail`), which leaves no
    /// pointer into it valid.
    #[inline(always)]
    pub fn reload(&self) -> Self {
        Self::new(XdpContext::new(self.ctx.ctx))
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

/// Which IP version a packet is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Which part of its datagram an IP packet is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// The whole datagram.
    Whole,
    /// An IPv4 TCP or UDP datagram's first fragment: it has the ports.
    First,
    /// An IPv4 TCP or UDP datagram's later fragment: no transport header.
    Later,
}

/// The IP header of a packet that is not malformed, and no fragment but of
/// an IPv4 TCP or UDP datagram; for IPv6, with the extension headers walked
/// to the upper-layer header.
///
/// `repr(C)`: the addresses first, as in a [`FlowKey`], the one-byte fields
/// packed at the end; it is written a field at a time (`write_to`).
#[repr(C)]
pub struct Ip {
    pub src: Addr,
    pub dst: Addr,
    /// Offset of the upper-layer (TCP, UDP, ICMP) header.
    pub l4_offset: usize,
    /// IPv4 total length or IPv6 header plus payload, host order.
    pub total_len: u16,
    pub family: Family,
    /// Upper-layer protocol.
    pub proto: u8,
    pub ttl: u8,
    pub tos: u8,
    pub fragment: Fragment,
}

impl Ip {
    /// Bytes from the upper-layer header to the end of the IP packet. Not
    /// a field: the entry point's frame holds an `Ip`, and the deepest call
    /// chain's stack includes that frame.
    #[inline(always)]
    pub fn l4_len(&self) -> usize {
        EthHdr::LEN + usize::from(self.total_len) - self.l4_offset
    }

    /// The family of a frame, by its EtherType; `None` for one that is not
    /// IP (ARP) or too short to say.
    #[inline(always)]
    pub fn family_of(ctx: &Frame) -> Option<Family> {
        let eth: *const EthHdr = ptr_at(ctx, 0).ok()?;
        // SAFETY: `ptr_at` checked the header lies inside the packet.
        match unsafe { (*eth).ether_type } {
            ETH_P_IPV4_BE => Some(Family::V4),
            ETH_P_IPV6_BE => Some(Family::V6),
            _ => None,
        }
    }

    /// Parses the IP header of a frame of `family` (by `family_of`) into
    /// `ip`, which is initialised when this returns `Ok`. IPv6's
    /// extension-header walk is inlined if `INLINE_V6`, else a BPF
    /// subprogram of its own. Each program takes what keeps its deepest
    /// call chain within the verifier's 512 bytes: the entry point inlines
    /// it, as a subprogram's frame would stack on its own; `lb_icmp6`,
    /// whose handlers are subprograms, keeps the walk's temporaries off its
    /// frame.
    #[inline(always)]
    pub fn parse<const INLINE_V6: bool>(
        ctx: &Frame,
        family: Family,
        ip: &mut MaybeUninit<Ip>,
    ) -> Result<(), Verdict> {
        match family {
            Family::V4 => Self::parse_v4(ctx)?.write_to(ip),
            Family::V6 if INLINE_V6 => Self::parse_v6(ctx)?.write_to(ip),
            Family::V6 => Self::parse_v6_into(ctx, ip)?,
        }
        Ok(())
    }

    /// IPv6's parser as a BPF subprogram (see `parse`). As a subprogram
    /// must, it returns a scalar, writing the header through `ip`.
    #[inline(never)]
    fn parse_v6_into(ctx: &Frame, ip: &mut MaybeUninit<Ip>) -> Result<(), Verdict> {
        Self::parse_v6(ctx)?.write_to(ip);
        Ok(())
    }

    /// Writes the header into `out` a field at a time, addresses as words:
    /// moved whole, the compiler stores the addresses byte by byte, and the
    /// caller's word loads of them stall (see `keys`).
    #[inline(always)]
    fn write_to(&self, out: &mut MaybeUninit<Ip>) {
        let out = out.as_mut_ptr();
        // SAFETY: every field is written through a pointer into `out`.
        unsafe {
            copy_addr(&raw mut (*out).src, &self.src);
            copy_addr(&raw mut (*out).dst, &self.dst);
            (&raw mut (*out).l4_offset).write_volatile(self.l4_offset);
            (&raw mut (*out).total_len).write_volatile(self.total_len);
            (&raw mut (*out).family).write_volatile(self.family);
            (&raw mut (*out).proto).write_volatile(self.proto);
            (&raw mut (*out).ttl).write_volatile(self.ttl);
            (&raw mut (*out).tos).write_volatile(self.tos);
            (&raw mut (*out).fragment).write_volatile(self.fragment);
        }
    }

    #[inline(always)]
    fn parse_v4(ctx: &Frame) -> Result<Self, Verdict> {
        let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
        // SAFETY: checked by `ptr_at`.
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
        let frags = u16::from_be_bytes(ip.frags);
        let fragment = if frags & IP_FRAGMENT_MASK == 0 {
            Fragment::Whole
        } else if !matches!(ip.proto, PROTO_TCP | PROTO_UDP) {
            return Err(Verdict::PassFragment);
        } else if frags & IP_FRAGMENT_OFFSET == 0 {
            Fragment::First
        } else {
            Fragment::Later
        };
        Ok(Self {
            fragment,
            family: Family::V4,
            l4_offset: EthHdr::LEN + header_len,
            total_len,
            proto: ip.proto,
            ttl: ip.ttl,
            tos: ip.tos,
            src: ipv4_mapped(packet_word(&ip.src_addr)),
            dst: ipv4_mapped(packet_word(&ip.dst_addr)),
        })
    }

    #[inline(always)]
    fn parse_v6(ctx: &Frame) -> Result<Self, Verdict> {
        let ip: *const Ipv6Hdr = ptr_at(ctx, EthHdr::LEN)?;
        // SAFETY: checked by `ptr_at`.
        let ip = unsafe { &*ip };
        if ip.vcf[0] >> 4 != 6 {
            return Err(Verdict::PassMalformed);
        }
        let payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
        let frame_ip_len = ctx.data_end() - ctx.data() - EthHdr::LEN;
        // A zero payload length announces a jumbogram, which lb leaves alone.
        if payload_len == 0 || Ipv6Hdr::LEN + payload_len > frame_ip_len {
            return Err(Verdict::PassMalformed);
        }
        let (src, dst) = (words(&ip.src_addr), words(&ip.dst_addr));
        // Addresses of the mapped form never travel in IPv6 packets (RFC 4291
        // 2.5.5.2); letting them through would alias IPv4 keys.
        if is_ipv4_mapped(&src) || is_ipv4_mapped(&dst) {
            return Err(Verdict::PassMalformed);
        }
        let (proto, l4_offset) = skip_extensions(ctx, ip.next_hdr)?;
        let ip_end = EthHdr::LEN + Ipv6Hdr::LEN + payload_len;
        if l4_offset > ip_end {
            return Err(Verdict::PassMalformed);
        }
        Ok(Self {
            fragment: Fragment::Whole,
            family: Family::V6,
            l4_offset,
            total_len: (Ipv6Hdr::LEN + payload_len) as u16,
            proto,
            ttl: ip.hop_limit,
            tos: (ip.vcf[0] << 4) | (ip.vcf[1] >> 4),
            src,
            dst,
        })
    }
}

/// `PassOtherHost` unless the frame is addressed to this host: broadcast,
/// multicast, or the receiving interface's MAC. A NIC in promiscuous mode (a
/// bridge port, a capture) hands up frames for other hosts too, and serving
/// those would take another lb host's traffic (on a segment that floods a
/// dead host's frames, before the router notices). An interface the agent
/// did not register (tests that run the program unattached) is not
/// filtered. Asked only of a frame lb would serve: one for no VIP and from
/// no node passes either way, without the interface's lookup.
#[inline(always)]
pub fn check_for_this_host(ctx: &Frame) -> Result<(), Verdict> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked the header lies inside the packet.
    let dst = unsafe { (*eth).dst_addr };
    let ours = is_group_address(&dst)
        || iface_mac_word(ctx.ingress_ifindex()).is_none_or(|mac| mac == mac_word(dst));
    if !ours {
        return Err(Verdict::PassOtherHost);
    }
    Ok(())
}

/// Whether `mac` is a group address (broadcast, multicast): its group bit.
#[inline(always)]
pub fn is_group_address(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// The 32-bit packet word at `word` (as it lies, network order) from two
/// 16-bit loads. Every field lb reads or writes lies at an even offset, and
/// a frame starts 2-byte aligned (see `forward::set_macs`), so 16-bit
/// accesses are aligned; `read_unaligned` would load the bytes one by one.
///
/// # Safety
/// `word` must point at 4 readable bytes of the packet at an even offset.
#[inline(always)]
pub unsafe fn read_word(word: *const [u16; 2]) -> u32 {
    // SAFETY: as the caller vouches.
    let [low, high] = unsafe { word.read() };
    u32::from(low) | (u32::from(high) << 16)
}

/// Writes the 32-bit packet word at `word` as two 16-bit stores.
///
/// # Safety
/// As for [`read_word`], and writable.
#[inline(always)]
pub unsafe fn write_word(word: *mut [u16; 2], value: u32) {
    // SAFETY: as the caller vouches.
    unsafe { word.write([value as u16, (value >> 16) as u16]) };
}

/// A 32-bit word of the packet from its bytes (see [`read_word`]).
#[inline(always)]
pub fn packet_word(bytes: &[u8; 4]) -> u32 {
    // SAFETY: 4 readable bytes of the packet at an even offset.
    unsafe { read_word((bytes as *const [u8; 4]).cast()) }
}

/// An IPv6 address from the packet as an [`Addr`].
#[inline(always)]
pub fn words(bytes: &[u8; 16]) -> Addr {
    let mut addr = [0u32; 4];
    for (i, word) in addr.iter_mut().enumerate() {
        // SAFETY: a 4-byte window of the 16, at an even offset.
        *word = packet_word(unsafe { &*bytes.as_ptr().add(4 * i).cast::<[u8; 4]>() });
    }
    addr
}

/// Walks the IPv6 extension headers that may precede TCP or UDP: hop-by-hop
/// and destination options, and a routing header with no segments left.
/// Returns the upper-layer protocol and its offset. A fragment header, a
/// routing header still in progress or too long a chain passes.
#[inline(always)]
fn skip_extensions(ctx: &Frame, first: u8) -> Result<(u8, usize), Verdict> {
    let mut next = first;
    // Bytes of the extension headers walked so far.
    let mut walked = 0;
    for _ in 0..IPV6_MAX_EXTENSIONS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_DEST_OPTIONS | IPV6_ROUTING => {}
            IPV6_FRAGMENT => return Err(Verdict::PassFragment),
            _ => return Ok((next, upper_layer_offset(walked))),
        }
        // Next header, length in 8-byte units beyond the first 8, and for a
        // routing header its type and segments left.
        let header: *const [u8; 4] = ptr_at(ctx, EthHdr::LEN + Ipv6Hdr::LEN + walked)?;
        // SAFETY: checked by `ptr_at`.
        let [following, len, _, segments_left] = unsafe { *header };
        if next == IPV6_ROUTING && segments_left != 0 {
            return Err(Verdict::PassOtherProto);
        }
        next = following;
        walked += (usize::from(len) + 1) * 8;
    }
    match next {
        IPV6_HOP_BY_HOP | IPV6_DEST_OPTIONS | IPV6_ROUTING | IPV6_FRAGMENT => {
            Err(Verdict::PassOtherProto)
        }
        _ => Ok((next, upper_layer_offset(walked))),
    }
}

/// The offset of the upper-layer header behind `walked` bytes of extension
/// headers (at most 4 x 2,048, which the mask keeps), in a form the
/// verifier knows only by its bounds, the same whatever the walk, and small
/// enough that a packet pointer this far in can still be checked against
/// the end. Known exactly (a constant without extension headers, a
/// different range behind each count of them), each way out of the walk
/// was a state of its own, which the verifier took through all that
/// follows: four times the instructions, in the entry point and in the
/// ICMPv6 path.
#[inline(always)]
fn upper_layer_offset(walked: usize) -> usize {
    EthHdr::LEN + Ipv6Hdr::LEN + ((walked + opaque_zero() as usize) & 0x3fff)
}

/// The ports of a TCP or UDP header that lies in the packet up to its
/// checksum.
pub struct Transport {
    /// Source and destination port as they lie in the packet, one word (see
    /// [`read_word`]): a scalar, which a subprogram may take as an argument.
    pub ports: u32,
}

impl Transport {
    #[inline(always)]
    pub fn parse(ctx: &Frame, ip: &Ip) -> Result<Self, Verdict> {
        let l4_min_len = match ip.proto {
            PROTO_TCP => TCP_MIN_LEN,
            PROTO_UDP => UDP_LEN,
            _ => return Err(Verdict::PassOtherProto),
        };
        if ip.l4_len() < l4_min_len {
            return Err(Verdict::PassMalformed);
        }
        let ports: *const [u16; 2] = ptr_at(ctx, ip.l4_offset)?;
        // The checksum must be inside the packet too before anyone rewrites it.
        ptr_at::<u16>(ctx, ip.l4_offset + l4_check_offset(ip.proto))?;
        Ok(Self {
            // SAFETY: checked by `ptr_at`, at an even offset.
            ports: unsafe { read_word(ports) },
        })
    }

    /// The word [`Transport::ports`] would be for these ports (source,
    /// destination; network order), as [`read_word`] composes it.
    #[inline(always)]
    pub fn join([src_port, dst_port]: [u16; 2]) -> u32 {
        u32::from(src_port) | (u32::from(dst_port) << 16)
    }
}

/// A TCP or UDP packet the program may own; `repr(C)` as [`Ip`], key first.
#[repr(C)]
pub struct Packet {
    pub key: FlowKey,
    /// Offset of the L4 header.
    pub l4_offset: usize,
    /// Offset of the L4 checksum.
    pub l4_check_offset: usize,
    pub family: Family,
    /// A TCP SYN without ACK: the first packet of a connection, which no
    /// flow entry may claim yet.
    pub opens: bool,
}

impl Packet {
    /// Builds the packet of `ip`, whose transport header [`Transport::parse`]
    /// accepted with `ports` (its word), into `out`, which is initialised when this
    /// returns `Ok` (written in place: see `keys`). The ports come as they
    /// were parsed, not parsed again.
    #[inline(always)]
    pub fn parse<const HEADER: bool>(
        ctx: &Frame,
        ip: &Ip,
        ports: u32,
        out: &mut MaybeUninit<Packet>,
    ) -> Result<(), Verdict> {
        let l4_offset = ip.l4_offset;
        let check_offset = l4_offset + l4_check_offset(ip.proto);
        let opens = HEADER && ip.proto == PROTO_TCP && {
            let flags: *const u8 = ptr_at(ctx, l4_offset + TCP_FLAGS_OFFSET)?;
            // SAFETY: checked by `ptr_at`.
            unsafe { *flags & (TCP_SYN | TCP_ACK) == TCP_SYN }
        };
        let packet = out.as_mut_ptr();
        // SAFETY: every field is written through a pointer into `out`, the
        // key by `keys::flow_key`, which initialises all of it.
        unsafe {
            flow_key(
                &mut *(&raw mut (*packet).key).cast::<MaybeUninit<FlowKey>>(),
                [&ip.src, &ip.dst],
                ports,
                ip.proto,
            );
            (&raw mut (*packet).l4_offset).write(l4_offset);
            (&raw mut (*packet).l4_check_offset).write(check_offset);
            (&raw mut (*packet).family).write(ip.family);
            (&raw mut (*packet).opens).write(opens);
        }
        Ok(())
    }
}
