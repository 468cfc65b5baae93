//! One ICMP echo round trip over a raw socket, so the test beds need no `ping`
//! binary. Must run on a thread inside the sender's namespace.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{FromRawFd, OwnedFd},
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use etherparse::{IcmpEchoHeader, Icmpv4Header, Icmpv4Slice, Icmpv4Type, IpNumber, Ipv4Slice};

/// Tells apart the replies to concurrent pings: a raw socket sees every ICMP
/// packet that arrives in the namespace.
static NEXT_SEQ: AtomicU16 = AtomicU16::new(0);

const PAYLOAD: &[u8] = b"lb-tests ping";

pub(super) fn ping(dst: Ipv4Addr, timeout: Duration) -> Result<()> {
    let echo = IcmpEchoHeader {
        id: std::process::id() as u16,
        seq: NEXT_SEQ.fetch_add(1, Ordering::Relaxed),
    };
    let socket = raw_icmp_socket()?;
    let request = Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(echo), PAYLOAD);
    let mut message = request.to_bytes().to_vec();
    message.extend_from_slice(PAYLOAD);
    socket
        .send_to(&message, SocketAddrV4::new(dst, 0))
        .context("sending the echo request")?;

    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            bail!("no echo reply within {timeout:?}");
        }
        socket.set_read_timeout(Some(remaining))?;
        let len = match socket.recv(&mut buf) {
            Ok(len) => len,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                continue;
            }
            Err(err) => return Err(err).context("receiving"),
        };
        // Raw IPv4 sockets deliver the IP header too.
        let Ok(ip) = Ipv4Slice::from_slice(&buf[..len]) else {
            continue;
        };
        if ip.header().source_addr() != dst || ip.payload_ip_number() != IpNumber::ICMP {
            continue;
        }
        let Ok(icmp) = Icmpv4Slice::from_slice(ip.payload().payload) else {
            continue;
        };
        if icmp.icmp_type() == Icmpv4Type::EchoReply(echo) && icmp.payload() == PAYLOAD {
            return Ok(());
        }
    }
}

/// A raw ICMP socket, wrapped in `UdpSocket` for its datagram calls (sendto,
/// recv, timeouts), which work the same on raw sockets.
fn raw_icmp_socket() -> Result<UdpSocket> {
    // SAFETY: plain syscall; the descriptor is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a raw ICMP socket");
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
