//! When an agent's gratuitous ARPs reach its segment: a packet socket at the
//! far end of the agent's interface notes when each VIP is first announced.

use std::{
    collections::HashSet,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_tests::netns::NetNs;

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
    let protocol = libc::c_int::from(ETH_P_ARP.to_be());
    // SAFETY: plain syscall; the descriptor is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: POLL.as_micros() as libc::suseconds_t,
    };
    set_option(&socket, libc::SO_RCVBUFFORCE, &RECEIVE_BUFFER)?;
    set_option(&socket, libc::SO_RCVTIMEO, &timeout)?;
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as libc::c_ushort;
    address.sll_protocol = ETH_P_ARP.to_be();
    address.sll_ifindex = ifindex as libc::c_int;
    // SAFETY: `address` is a valid sockaddr_ll of the given length.
    let bound = unsafe {
        libc::bind(
            fd,
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(std::io::Error::last_os_error()).context("binding the packet socket");
    }
    Ok(socket)
}

/// Sets socket option `name` (at `SOL_SOCKET`) to `value`.
fn set_option<T>(socket: &OwnedFd, name: libc::c_int, value: &T) -> Result<()> {
    // SAFETY: `value` is valid for its size.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("socket option {name}"));
    }
    Ok(())
}
