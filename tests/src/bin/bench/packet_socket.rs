//! `AF_PACKET` sockets bound to one interface: the flood's generator sends
//! through one, the announcement listener receives through another.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, Result};

/// An `AF_PACKET` socket bound to `ifindex` for frames of EtherType
/// `protocol` (host order); 0 receives nothing, for a socket that only sends.
pub fn bound(ifindex: u32, protocol: u16) -> Result<OwnedFd> {
    let protocol = protocol.to_be();
    // SAFETY: plain syscall; the descriptor is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as libc::c_ushort;
    address.sll_protocol = protocol;
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

/// Sets option `name` of `level` on `socket` to `value`.
pub fn set_option<T>(
    socket: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> Result<()> {
    // SAFETY: `value` is valid for its size.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("socket option {name} at level {level}"));
    }
    Ok(())
}
