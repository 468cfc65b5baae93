//! The little of rtnetlink the agent speaks: the kernel's neighbour table
//! (list, add or replace, delete), over a `NETLINK_ROUTE` socket of the
//! caller's network namespace.

use std::{
    io,
    mem::size_of,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const NLMSG_HEADER: usize = 16;
const NDMSG: usize = 12;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NDA_DST: u16 = 1;
const NDA_PROTOCOL: u16 = 12;
const NDA_FLAGS_EXT: u16 = 15;
/// The kernel keeps the entry resolved, probing it without traffic
/// (Linux 5.16).
const NTF_EXT_MANAGED: u32 = 1;
/// States an administrator sets by hand, which the kernel never changes.
const NUD_STATIC: u16 = 0x40 | 0x80; // NUD_NOARP | NUD_PERMANENT
/// Learnt by another control plane (EVPN), which the kernel keeps as is.
const NTF_EXT_LEARNED: u8 = 0x10;
/// How long the kernel may take to answer (it answers at once).
const ANSWER_WITHIN: libc::timeval = libc::timeval {
    tv_sec: 2,
    tv_usec: 0,
};

/// An entry of the kernel's neighbour table (ARP for IPv4, NDP for IPv6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbor {
    pub ifindex: u32,
    pub ip: IpAddr,
    /// Set by hand (`permanent` or `noarp`): the kernel neither resolves
    /// nor expires it.
    pub fixed: bool,
    /// Who made it (`NDA_PROTOCOL`, as `ip neigh ... protocol`); 0 unset.
    pub protocol: u8,
    pub managed: bool,
    /// Another control plane's (`extern_learn`).
    pub external: bool,
}

/// A `NETLINK_ROUTE` socket.
pub struct Netlink {
    socket: OwnedFd,
    sequence: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain system calls; the descriptor is owned at once.
        let socket = unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let timeout = ANSWER_WITHIN;
        // SAFETY: a socket this function owns, and an option of its size.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Every neighbour entry of both families.
    pub fn neighbors(&mut self) -> io::Result<Vec<Neighbor>> {
        let replies = self.request(RTM_GETNEIGH, NLM_F_DUMP, &[0; NDMSG])?;
        Ok(replies.iter().filter_map(|m| parse_neighbor(m)).collect())
    }

    /// Makes `ip` on `ifindex` a managed entry of `protocol`: a new one
    /// (`EEXIST` if there is one), or with `replace` in place of the one
    /// there (a resolved one keeps its address while it is probed).
    pub fn manage_neighbor(
        &mut self,
        ifindex: u32,
        ip: IpAddr,
        protocol: u8,
        replace: bool,
    ) -> io::Result<()> {
        let mut message = ndmsg(ifindex, ip);
        push_attr(&mut message, NDA_DST, &address_bytes(ip));
        push_attr(&mut message, NDA_PROTOCOL, &[protocol]);
        push_attr(&mut message, NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes());
        let exclusive = if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        let flags = NLM_F_ACK | NLM_F_CREATE | exclusive;
        self.request(RTM_NEWNEIGH, flags, &message).map(drop)
    }

    pub fn delete_neighbor(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<()> {
        let mut message = ndmsg(ifindex, ip);
        push_attr(&mut message, NDA_DST, &address_bytes(ip));
        self.request(RTM_DELNEIGH, NLM_F_ACK, &message).map(drop)
    }

    /// Sends one request and returns the payloads of the messages that
    /// answer it, up to its acknowledgement or the end of its dump.
    fn request(&mut self, kind: u16, flags: u16, payload: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut message = Vec::with_capacity(NLMSG_HEADER + payload.len());
        let length = u32::try_from(NLMSG_HEADER + payload.len()).expect("a small message");
        message.extend_from_slice(&length.to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        message.extend_from_slice(&self.sequence.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(payload);
        // SAFETY: sends the bytes of `message` to the kernel (the socket's
        // default destination is the kernel).
        let sent = unsafe {
            libc::send(
                self.socket.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut replies = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: receives into `buffer`, within its length.
            let received = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            let received = usize::try_from(received).map_err(|_| io::Error::last_os_error())?;
            let mut rest = &buffer[..received];
            while rest.len() >= NLMSG_HEADER {
                let length = read_u32(rest, 0) as usize;
                if length < NLMSG_HEADER || length > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a truncated netlink message",
                    ));
                }
                let kind = read_u16(rest, 4);
                let sequence = read_u32(rest, 8);
                let body = &rest[NLMSG_HEADER..length];
                rest = &rest[align(length).min(rest.len())..];
                if sequence != self.sequence {
                    continue;
                }
                match kind {
                    // An error code (0: acknowledged, or the dump is whole),
                    // then (for an error) the request.
                    NLMSG_DONE | NLMSG_ERROR => {
                        let code = body.get(..4).map(|b| read_u32(b, 0) as i32);
                        return match code {
                            Some(0) => Ok(replies),
                            None if kind == NLMSG_DONE => Ok(replies),
                            Some(code) => Err(io::Error::from_raw_os_error(-code)),
                            None => Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "a netlink error without its code",
                            )),
                        };
                    }
                    _ => replies.push(body.to_vec()),
                }
            }
        }
    }
}

/// An `ndmsg` for `ip` on `ifindex`, state `NUD_NONE`.
fn ndmsg(ifindex: u32, ip: IpAddr) -> Vec<u8> {
    let family = match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    let mut message = vec![family as u8, 0, 0, 0];
    message.extend_from_slice(&ifindex.to_ne_bytes());
    message.extend_from_slice(&[0; 4]); // state, flags, type
    message
}

fn push_attr(message: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let length = u16::try_from(4 + data.len()).expect("a small attribute");
    message.extend_from_slice(&length.to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(data);
    message.resize(align(message.len()), 0);
}

fn address_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A neighbour entry from an `RTM_NEWNEIGH` message's payload; `None` for
/// one with no address (a bridge's forwarding entry).
fn parse_neighbor(payload: &[u8]) -> Option<Neighbor> {
    let header = payload.get(..NDMSG)?;
    let ifindex = read_u32(header, 4);
    let state = read_u16(header, 8);
    let flags = header[10];
    let (mut ip, mut protocol, mut managed) = (None, 0, false);
    let mut attrs = &payload[NDMSG..];
    while attrs.len() >= 4 {
        let length = usize::from(read_u16(attrs, 0));
        let data = attrs.get(4..length)?;
        match read_u16(attrs, 2) {
            NDA_DST => {
                ip = match data.len() {
                    4 => Some(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
                    16 => Some(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
                    _ => None,
                };
            }
            NDA_PROTOCOL => protocol = *data.first()?,
            NDA_FLAGS_EXT => managed = read_u32(data.get(..4)?, 0) & NTF_EXT_MANAGED != 0,
            _ => {}
        }
        attrs = attrs.get(align(length.max(4))..).unwrap_or_default();
    }
    Some(Neighbor {
        ifindex,
        ip: ip?,
        fixed: state & NUD_STATIC != 0,
        protocol,
        managed,
        external: flags & NTF_EXT_LEARNED != 0,
    })
}

/// Netlink's 4-byte alignment.
fn align(length: usize) -> usize {
    length.next_multiple_of(4)
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]])
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_neighbor_is_read_from_its_message() {
        let mut message = ndmsg(7, "10.1.0.11".parse().unwrap());
        message[8] = 0x02; // NUD_REACHABLE
        push_attr(&mut message, NDA_DST, &[10, 1, 0, 11]);
        push_attr(&mut message, NDA_PROTOCOL, &[108]);
        push_attr(&mut message, NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes());
        let neighbor = parse_neighbor(&message).expect("a neighbour");
        assert_eq!(
            neighbor,
            Neighbor {
                ifindex: 7,
                ip: "10.1.0.11".parse().unwrap(),
                fixed: false,
                protocol: 108,
                managed: true,
                external: false,
            }
        );
        message[8] = 0x80; // NUD_PERMANENT
        assert!(parse_neighbor(&message).unwrap().fixed);
        // Cut inside an attribute, or one too short for its type: no
        // entry, no panic.
        assert_eq!(parse_neighbor(&message[..NDMSG + 6]), None);
        let mut short = ndmsg(7, "10.1.0.11".parse().unwrap());
        push_attr(&mut short, NDA_DST, &[10, 1, 0, 11]);
        push_attr(&mut short, NDA_FLAGS_EXT, &[1, 0]);
        assert_eq!(parse_neighbor(&short), None);
    }
}
