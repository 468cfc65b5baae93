//! Layer 2 announcements (`--announce arp`, MetalLB's L2Advertisements): the
//! data path answers ARP and Neighbor Solicitations for VIPs on their
//! interfaces; the agent tells the segment at once when a VIP appears there
//! (agent start, a new Service, a takeover), with a gratuitous ARP or an
//! unsolicited Neighbor Advertisement on each of them, so neighbours that cached
//! another MAC for the address move over without waiting for their entry to
//! expire.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use lb_common::checksum;
use tracing::{debug, warn};

use super::plan::L2Announcement;

/// Announcements per new VIP, this far apart: one can be lost, and a switch
/// that just learnt a port may drop the first.
const REPEATS: u32 = 3;
const INTERVAL: Duration = Duration::from_secs(1);

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ICMPV6: u8 = 58;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// Override: replace what neighbours cached (RFC 4861 4.4); not solicited.
const NA_OVERRIDE: u8 = 0x20;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A gratuitous ARP for `vip` at `mac`: a broadcast request for its own
/// address, which every host on the segment uses to update its cache.
pub fn gratuitous_arp(mac: [u8; 6], vip: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&vip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&vip.octets());
    frame
}

/// An unsolicited Neighbor Advertisement of `vip` at `mac` to all nodes.
pub fn unsolicited_advertisement(mac: [u8; 6], vip: Ipv6Addr) -> Vec<u8> {
    let mut message = vec![NEIGHBOR_ADVERTISEMENT, 0, 0, 0, NA_OVERRIDE, 0, 0, 0];
    message.extend_from_slice(&vip.octets());
    // Target Link-Layer Address option, one 8-byte unit.
    message.extend_from_slice(&[2, 1]);
    message.extend_from_slice(&mac);
    let len = message.len() as u16;
    let pseudo_header = checksum::sum_be(&vip.octets(), 0);
    let pseudo_header = checksum::sum_be(&ALL_NODES.octets(), pseudo_header);
    let pseudo_header = checksum::sum_be(&u32::from(len).to_be_bytes(), pseudo_header);
    let pseudo_header = checksum::sum_be(&[0, 0, 0, ICMPV6], pseudo_header);
    let check = !checksum::fold(checksum::sum_be(&message, pseudo_header));
    message[2..4].copy_from_slice(&check.to_be_bytes());
    let mut frame = Vec::with_capacity(14 + 40 + message.len());
    frame.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    // Version 6, no traffic class or flow label; hop limit 255, as every
    // Neighbor Discovery message (receivers drop others).
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[ICMPV6, 255]);
    frame.extend_from_slice(&vip.octets());
    frame.extend_from_slice(&ALL_NODES.octets());
    frame.extend_from_slice(&message);
    frame
}

/// The announcement of `vip` at `mac`.
pub fn announcement(mac: [u8; 6], vip: IpAddr) -> Vec<u8> {
    match vip {
        IpAddr::V4(v4) => gratuitous_arp(mac, v4),
        IpAddr::V6(v6) => unsolicited_advertisement(mac, v6),
    }
}

/// An `AF_PACKET` socket that sends frames as they are, out of any
/// interface. One serves a whole burst of announcements: closing a packet
/// socket waits for an RCU grace period (`synchronize_net`), about 10 ms
/// here, which a socket per frame paid for every VIP (an agent's start with
/// 10,000 VIPs took two minutes to announce them once).
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket call; the descriptor is owned from here on.
        let socket =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if socket < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just opened, owned by nothing else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(socket) }))
    }

    /// Sends `frame` as it is out of interface `ifindex`.
    fn send(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        // SAFETY: an all-zero `sockaddr_ll` is valid; the fields that matter follow.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = ifindex as i32;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `address` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const address).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Keeps track of the VIPs announced on each interface and announces them
/// where they appear.
#[derive(Default)]
pub struct Announcer {
    /// (name, ifindex, MAC) of every interface lb is attached to.
    interfaces: Vec<(String, u32, [u8; 6])>,
    /// (VIP, ifindex) pairs announced, shared with the threads repeating
    /// announcements: a pair that is no longer answered is not announced
    /// again (a repeat after it stopped would point clients at lb for a VIP
    /// it no longer answers there).
    announced: Arc<Mutex<BTreeSet<(IpAddr, u32)>>>,
}

impl Announcer {
    pub fn new(interfaces: &[String]) -> io::Result<Self> {
        let interfaces = interfaces
            .iter()
            .map(|name| {
                Ok((
                    name.clone(),
                    crate::iface::ifindex(name)?,
                    crate::iface::mac(name)?,
                ))
            })
            .collect::<io::Result<_>>()?;
        Ok(Self {
            interfaces,
            announced: Arc::default(),
        })
    }

    /// The ifindexes of the interfaces `l2` names (all of them when it names
    /// none), and the names that are not interfaces lb is attached to.
    pub fn ifindexes<'a>(&self, l2: &'a L2Announcement) -> (BTreeSet<u32>, Vec<&'a str>) {
        let attached = |name: &str| self.interfaces.iter().find(|(n, _, _)| n == name);
        if l2.interfaces.is_empty() {
            return (self.interfaces.iter().map(|(_, i, _)| *i).collect(), vec![]);
        }
        let (known, unknown): (Vec<&str>, Vec<&str>) = l2
            .interfaces
            .iter()
            .map(String::as_str)
            .partition(|name| attached(name).is_some());
        let ifindexes = known.iter().filter_map(|n| attached(n)).map(|(_, i, _)| *i);
        (ifindexes.collect(), unknown)
    }

    /// The interfaces (by name) each VIP is answered on.
    pub fn announced_on(&self) -> BTreeMap<IpAddr, Vec<String>> {
        let mut announced_on: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for (vip, ifindex) in lock(&self.announced).iter() {
            if let Some((name, _, _)) = self.interfaces.iter().find(|(_, i, _)| i == ifindex) {
                announced_on.entry(*vip).or_default().push(name.clone());
            }
        }
        announced_on
    }

    /// Announces each VIP of `vips` on each of its interfaces (by ifindex)
    /// it was not announced on before, in the background; forgets the ones
    /// that are gone, so they are announced again if they come back.
    pub fn update(&mut self, vips: &BTreeMap<IpAddr, BTreeSet<u32>>) {
        let wanted: BTreeSet<(IpAddr, u32)> = vips
            .iter()
            .flat_map(|(vip, ifindexes)| ifindexes.iter().map(|ifindex| (*vip, *ifindex)))
            .collect();
        let mut announced = lock(&self.announced);
        let new: Vec<(IpAddr, String, u32, [u8; 6])> = wanted
            .difference(&announced)
            .filter_map(|(vip, ifindex)| {
                let (name, _, mac) = self.interfaces.iter().find(|(_, i, _)| i == ifindex)?;
                Some((*vip, name.clone(), *ifindex, *mac))
            })
            .collect();
        *announced = wanted;
        drop(announced);
        if new.is_empty() {
            return;
        }
        // A thread of its own: thousands of VIPs (an agent's start) take a
        // while to send, and the agent's loop must not wait for them.
        let announced = Arc::clone(&self.announced);
        std::thread::spawn(move || {
            let socket = match PacketSocket::open() {
                Ok(socket) => socket,
                Err(e) => {
                    warn!(error = %e, vips = new.len(), "opening a packet socket; not announcing");
                    return;
                }
            };
            for round in 0..REPEATS {
                if round > 0 {
                    std::thread::sleep(INTERVAL);
                }
                for (vip, name, ifindex, mac) in &new {
                    if !lock(&announced).contains(&(*vip, *ifindex)) {
                        continue;
                    }
                    match socket.send(*ifindex, &announcement(*mac, *vip)) {
                        Ok(()) => debug!(%vip, iface = %name, "announced"),
                        Err(e) => warn!(%vip, iface = %name, error = %e, "announcing"),
                    }
                }
            }
        });
    }
}

/// The pairs announced; a thread that panicked holding them left them whole.
fn lock(announced: &Mutex<BTreeSet<(IpAddr, u32)>>) -> MutexGuard<'_, BTreeSet<(IpAddr, u32)>> {
    announced
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

    #[test]
    fn gratuitous_arp_bytes() {
        let frame = gratuitous_arp(MAC, Ipv4Addr::new(198, 51, 100, 10));
        let expected: Vec<u8> = [
            &[0xff; 6][..],
            &MAC,
            &[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1],
            &MAC,
            &[198, 51, 100, 10],
            &[0; 6],
            &[198, 51, 100, 10],
        ]
        .concat();
        assert_eq!(frame, expected);
    }

    #[test]
    fn unsolicited_advertisement_has_a_valid_checksum_and_the_override_flag() {
        let vip: Ipv6Addr = "2001:db8:ff::10".parse().unwrap();
        let frame = unsolicited_advertisement(MAC, vip);
        assert_eq!(frame.len(), 14 + 40 + 32);
        assert_eq!(&frame[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(frame[21], 255, "hop limit");
        let message = &frame[54..];
        assert_eq!(message[0], NEIGHBOR_ADVERTISEMENT);
        assert_eq!(message[4], NA_OVERRIDE);
        assert_eq!(&message[8..24], &vip.octets());
        assert_eq!(&message[24..], &[&[2, 1][..], &MAC].concat()[..]);
        // The pseudo-header and the message, checksum included, sum to zero.
        let mut pseudo = frame[22..54].to_vec();
        pseudo.extend_from_slice(&32u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, ICMPV6]);
        let sum = checksum::sum_be(message, checksum::sum_be(&pseudo, 0));
        assert_eq!(checksum::fold(sum), 0xffff);
    }
}
