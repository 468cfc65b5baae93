//! Offload switching through the ethtool ioctl, so the test beds need no
//! `ethtool` binary. Must run on a thread inside the device's namespace.

use std::{
    ffi::c_char,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

// From <linux/ethtool.h>.
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// Offloads the test beds switch.
#[derive(Clone, Copy, Debug)]
pub enum Offload {
    /// Gives a veth NAPI, without which frames XDP redirects onto it vanish.
    Gro,
    /// Transmit checksum offload. A veth that offloads hands its peer packets
    /// whose L4 checksum holds only the pseudo-header sum (CHECKSUM_PARTIAL);
    /// XDP cannot see that, so an incremental update would corrupt them. A
    /// physical NIC always delivers complete checksums.
    TxChecksum,
}

impl Offload {
    /// (get, set) ioctl commands.
    fn commands(self) -> (u32, u32) {
        match self {
            Self::Gro => (ETHTOOL_GGRO, ETHTOOL_SGRO),
            Self::TxChecksum => (ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM),
        }
    }
}

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Switches `offload` on `dev` and checks that the device took it.
pub(super) fn set(dev: &str, offload: Offload, on: bool) -> io::Result<()> {
    let (_, set) = offload.commands();
    ethtool_value(dev, set, u32::from(on))?;
    if get(dev, offload)? != on {
        return Err(io::Error::other(format!(
            "{dev} refused to change {offload:?}"
        )));
    }
    Ok(())
}

/// Whether `offload` is on for `dev`.
pub(super) fn get(dev: &str, offload: Offload) -> io::Result<bool> {
    let (get, _) = offload.commands();
    Ok(ethtool_value(dev, get, 0)? != 0)
}

/// Issues one `SIOCETHTOOL` request carrying an `ethtool_value`.
fn ethtool_value(dev: &str, cmd: u32, data: u32) -> io::Result<u32> {
    // SAFETY: all-zero is a valid `ifreq` (a name buffer and a union of plain data).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if dev.len() >= request.ifr_name.len() {
        return Err(io::Error::other(format!("interface name too long: {dev}")));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(dev.bytes()) {
        *dst = src as c_char;
    }
    let mut value = EthtoolValue { cmd, data };
    request.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: plain syscall; the descriptor is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `request` names the device and points at `value`, both alive for
    // the duration of the call, as SIOCETHTOOL expects.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}
