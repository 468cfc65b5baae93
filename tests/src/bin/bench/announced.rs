//! When an agent's gratuitous ARPs reach its segment: a packet socket at the
//! far end of the agent's interface notes when each VIP is first announced.

use std::{
    collections::HashSet,
    os::fd::{AsRawFd as _, OwnedFd},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_tests::netns::NetNs;

use crate::packet_socket;

const ETH_P_ARP: u16 = 0x0806;
/// Room for a whole start's burst (10,000 frames of about a kilobyte each
/// in the kernel's accounting) should this thread fall behind.
const RECEIVE_BUFFER: libc::c_int = 32 << 20;
/// How long a receive waits before the deadline is looked at again.
const POLL: Duration = Duration::from_millis(100);

/// A listener for the gratuitous ARPs of a number of VIPs.
pub struct Announcements {
    thread: JoinHandle<Result<Instant>>,
}

impl Announcements {
    /// Listens on `dev` in `ns` until `vips` distinct VIPs have been
    /// announced, for at most `timeout`.
    pub fn watch(ns: &NetNs, dev: &str, vips: usize, timeout: Duration) -> Result<Self> {
        let ifindex = ns.ifindex(dev)?;
        // Opened inside the namespace, where the socket then stays.
        let socket = ns.enter(move || arp_socket(ifindex))??;
        let deadline = Instant::now() + timeout;
        let thread = std::thread::spawn(move || {
            let mut heard = HashSet::new();
            let mut frame = [0u8; 64];
            while heard.len() < vips {
                if Instant::now() > deadline {
                    bail!("{} of {vips} VIPs announced", heard.len());
                }
                // SAFETY: `frame` is writable for its length.
                let received = unsafe {
                    libc::recv(
                        socket.as_raw_fd(),
                        frame.as_mut_ptr().cast(),
                        frame.len(),
                        0,
                    )
                };
                if received < 0 {
                    let error = std::io::Error::last_os_error();
                    if error.kind() == std::io::ErrorKind::WouldBlock {
                        continue;
                    }
                    return Err(error).context("receiving on the packet socket");
                }
                if let Some(vip) = gratuitous_arp(&frame[..received as usize]) {
                    heard.insert(vip);
                }
            }
            Ok(Instant::now())
        });
        Ok(Self { thread })
    }

    /// When the last of the VIPs was first announced.
    pub fn all_heard(self) -> Result<Instant> {
        self.thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// The address a gratuitous ARP announces (a request whose sender and
/// target are the same address); `None` for any other frame.
fn gratuitous_arp(frame: &[u8]) -> Option<[u8; 4]> {
    let frame = frame.get(..42)?;
    let is_request = frame[12..14] == ETH_P_ARP.to_be_bytes() && frame[20..22] == [0, 1];
    let (sender, target) = (&frame[28..32], &frame[38..42]);
    (is_request && sender == target).then(|| sender.try_into().expect("four bytes"))
}

/// An `AF_PACKET` socket that receives the ARP frames arriving on `ifindex`,
/// its receives timing out after [`POLL`].
fn arp_socket(ifindex: u32) -> Result<OwnedFd> {
    let socket = packet_socket::bound(ifindex, ETH_P_ARP)?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: POLL.as_micros() as libc::suseconds_t,
    };
    packet_socket::set_option(
        &socket,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        &RECEIVE_BUFFER,
    )?;
    packet_socket::set_option(&socket, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
    Ok(socket)
}
