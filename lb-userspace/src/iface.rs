//! Facts about a network interface of the caller's network namespace, asked
//! of the kernel directly: `/sys/class/net` shows the namespace that mounted
//! `/sys`, which need not be the agent's.

use std::{ffi::CString, io};

/// The interface's index, for maps keyed by ifindex.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c_name = c_name(name)?;
    // SAFETY: `c_name` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// The interface's MAC address (`SIOCGIFHWADDR`).
pub fn mac(name: &str) -> io::Result<[u8; 6]> {
    let c_name = c_name(name)?;
    // SAFETY: an all-zero `ifreq` is valid; the name is copied in below.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = c_name.as_bytes_with_nul();
    if bytes.len() > request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is too long"),
        ));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket call; the descriptor is closed below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `request` is a valid `ifreq` the kernel fills in.
    let rc = unsafe { libc::ioctl(socket, libc::SIOCGIFHWADDR, &mut request) };
    let error = io::Error::last_os_error();
    // SAFETY: `socket` is ours.
    unsafe { libc::close(socket) };
    if rc < 0 {
        return Err(error);
    }
    // SAFETY: `SIOCGIFHWADDR` filled the `ifru_hwaddr` member.
    let data = unsafe { request.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(std::array::from_fn(|i| data[i] as u8))
}

/// The interface's IPv4 addresses, in the kernel's order (`getifaddrs`).
pub fn ipv4_addresses(name: &str) -> io::Result<Vec<std::net::Ipv4Addr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` receives a list freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: a node of the list `getifaddrs` returned.
        let ifa = unsafe { &*entry };
        // SAFETY: `ifa_name` is a NUL-terminated string.
        let ifa_name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if ifa_name.to_bytes() == name.as_bytes()
            && !ifa.ifa_addr.is_null()
            // SAFETY: checked non-null; every sockaddr starts with its family.
            && i32::from(unsafe { (*ifa.ifa_addr).sa_family }) == libc::AF_INET
        {
            // SAFETY: an AF_INET address is a `sockaddr_in`.
            let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
            addresses.push(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        }
        entry = ifa.ifa_next;
    }
    // SAFETY: the list `getifaddrs` returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(addresses)
}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} contains a NUL byte"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_index_and_zero_mac() {
        assert!(ifindex("lo").unwrap() > 0);
        assert_eq!(mac("lo").unwrap(), [0; 6]);
        assert!(ifindex("no-such-if0").is_err());
        assert!(mac("no-such-if0").is_err());
        assert_eq!(
            ipv4_addresses("lo").unwrap(),
            [std::net::Ipv4Addr::LOCALHOST]
        );
        assert!(ipv4_addresses("no-such-if0").unwrap().is_empty());
    }
}
