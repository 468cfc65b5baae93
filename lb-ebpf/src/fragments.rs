//! IPv4 TCP and UDP datagrams in fragments. Only a datagram's first fragment
//! has its transport header; the others are known by the datagram's
//! identity (RFC 791: addresses, protocol, identification). So the ports of
//! a first fragment lb serves are remembered under that identity
//! (`FRAGMENTS4`), and each later fragment takes them from there, to be
//! served as a packet of the same 5-tuple (which goes where the first
//! went), translated as it was but for its addresses only (the datagram's
//! checksum is in the first). A later fragment that arrives before its
//! first, or at another lb host, passes to the kernel (`pass_fragment`), as
//! fragments of IPv6 datagrams do. Later fragments are served in a side path
//! of their own (`lb_fragment4`): the entry point, which most packets take,
//! then has no code for them.

use core::mem::MaybeUninit;

use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    balance,
    maps::{self, FragmentKey},
    parse::{Fragment, Frame, Ip, ptr_at},
    transport,
    verdict::Verdict,
};

/// A later fragment of an IPv4 TCP or UDP datagram (the side path
/// `lb_fragment4`), served with the ports of its datagram's first.
#[inline(always)]
pub fn serve_later(ctx: &Frame, ip: &Ip) -> Result<u32, Verdict> {
    if ip.fragment != Fragment::Later {
        return Err(Verdict::PassOtherProto);
    }
    let claim = balance::claim(ip)?;
    let mut key = MaybeUninit::uninit();
    let ports = maps::fragment_ports(datagram(ctx, ip, &mut key)?).ok_or(Verdict::PassFragment)?;
    transport::serve::<false>(ctx, ip, ports, claim)
}

/// Remembers the `ports` of a packet lb serves, if it is a datagram's first
/// fragment, for the later ones.
#[inline(always)]
pub fn remember(ctx: &Frame, ip: &Ip, ports: u32) -> Result<(), Verdict> {
    if ip.fragment == Fragment::First {
        let mut key = MaybeUninit::uninit();
        maps::remember_fragment_ports(datagram(ctx, ip, &mut key)?, ports);
    }
    Ok(())
}

/// The identity of the datagram `ip` is a fragment of, written into `out`
/// a word at a time (see `keys`).
#[inline(always)]
fn datagram<'a>(
    ctx: &Frame,
    ip: &Ip,
    out: &'a mut MaybeUninit<FragmentKey>,
) -> Result<&'a FragmentKey, Verdict> {
    let header: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
    // SAFETY: checked by `ptr_at`; the identification lies at an even offset.
    let id = unsafe { (&raw const (*header).id).cast::<u16>().read() };
    let key = out.as_mut_ptr().cast::<u32>();
    // SAFETY: the three words of `out`, each written before it is read.
    unsafe {
        key.write(ip.src[3]);
        key.add(1).write(ip.dst[3]);
        key.add(2)
            .write(u32::from(id) | (u32::from(ip.proto) << 16));
        Ok(out.assume_init_ref())
    }
}
