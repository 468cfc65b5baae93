//! ICMPv6: what differs from ICMPv4 (see `icmp`). The ICMPv6 checksum covers
//! a pseudo-header, so every address rewrite, outer or quoted, updates it, and
//! the quoted IPv6 header has no checksum of its own.

use lb_common::{Addr, checksum};
use network_types::ip::Ipv6Hdr;

use crate::{
    icmp::{self, ErrorRewriter, IcmpHdr, Quote, QuoteRewrite, Quoted},
    maps::{answer_echo, is_vip},
    nat::{self, End},
    parse::{self, Family, Frame, Ip, ptr_at},
    verdict::Verdict,
};

const DEST_UNREACHABLE: u8 = 1;
const PACKET_TOO_BIG: u8 = 2;
const TIME_EXCEEDED: u8 = 3;
const PARAMETER_PROBLEM: u8 = 4;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;

/// An ICMPv6 error with the start of the packet it quotes, reached through one
/// bounds-checked pointer (see `icmp::IcmpError`).
#[repr(C)]
struct Icmp6Error {
    icmp: IcmpHdr,
    quoted: Ipv6Hdr,
    quoted_ports: [u16; 2],
}

/// Handles an ICMPv6 packet (in the side path `lb_icmp6`, as a subprogram
/// of its own: `serve_icmp6`).
#[inline(always)]
pub fn handle(ctx: &Frame, ip: &Ip) -> Result<u32, Verdict> {
    let header: *mut IcmpHdr = ptr_at(ctx, ip.l4_offset)?;
    // SAFETY: bounds-checked by `ptr_at`.
    match unsafe { (*header).type_code[0] } {
        ECHO_REQUEST if is_vip(&ip.dst) && answer_echo() => {
            icmp::echo_reply(ctx, Family::V6, header, ECHO_REPLY)
        }
        DEST_UNREACHABLE | PACKET_TOO_BIG | TIME_EXCEEDED | PARAMETER_PROBLEM => {
            // The ports must lie in the packet, not in padding after it.
            if ip.l4_len() < core::mem::size_of::<Icmp6Error>() {
                return Err(Verdict::PassOtherProto);
            }
            let error: *mut Icmp6Error = ptr_at(ctx, ip.l4_offset)?;
            // SAFETY: bounds-checked by `ptr_at`. Quotes with extension
            // headers before TCP or UDP have another next header, and pass.
            let quote = unsafe {
                let quoted = &(*error).quoted;
                Quote {
                    proto: quoted.next_hdr,
                    src: parse::words(&quoted.src_addr),
                    dst: parse::words(&quoted.dst_addr),
                    ports: (*error).quoted_ports,
                    l4_check_offset: icmp::quoted_l4_check_offset(
                        ip,
                        Ipv6Hdr::LEN,
                        quoted.next_hdr,
                    ),
                }
            };
            icmp::translate_error(ctx, ip, &quote, &Ipv6Error(error))
        }
        _ => Err(Verdict::PassOtherProto),
    }
}

struct Ipv6Error(*mut Icmp6Error);

impl ErrorRewriter for Ipv6Error {
    #[inline(always)]
    fn rewrite_quoted(
        &self,
        ctx: &Frame,
        quote: &Quote,
        rewrite: &QuoteRewrite,
    ) -> Result<(), Verdict> {
        let error = self.0;
        // SAFETY: `error` was bounds-checked when it was made.
        unsafe {
            let quoted = &mut (*error).quoted;
            let (address, port) = match rewrite.which {
                Quoted::Source => (&mut quoted.src_addr, &mut (*error).quoted_ports[0]),
                Quoted::Destination => (&mut quoted.dst_addr, &mut (*error).quoted_ports[1]),
            };
            *address = bytes(&rewrite.new_ip);
            *port = rewrite.new_port;
            let icmp = checksum::replace_address_and_port(
                (*error).icmp.check,
                &rewrite.old_ip,
                &rewrite.new_ip,
                rewrite.old_port,
                rewrite.new_port,
            );
            (*error).icmp.check = icmp::update_quoted_l4(ctx, quote, rewrite, icmp);
        }
        Ok(())
    }

    #[inline(always)]
    fn rewrite_outer(&self, ctx: &Frame, end: End, new: &Addr) -> Result<(), Verdict> {
        let delta = nat::rewrite_address(ctx, Family::V6, end, new)?;
        let error = self.0;
        // SAFETY: `error` was bounds-checked when it was made.
        unsafe { (*error).icmp.check = delta.apply((*error).icmp.check) };
        Ok(())
    }
}

/// An [`Addr`] as the bytes of an IPv6 header field.
#[inline(always)]
fn bytes(addr: &Addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, word) in addr.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    out
}
