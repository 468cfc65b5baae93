//! The UDP flood: a generator in the client namespace that writes prebuilt
//! Ethernet frames with many different 5-tuples straight onto the client's
//! interface, and a sink on every node that counts and drops them.
//!
//! The generator uses an AF_PACKET socket with `sendmmsg` and qdisc bypass:
//! no UDP socket, no routing, no neighbour lookup on the client, so most of the
//! CPU it leaves goes to the load balancer. The sink is an nftables rule on the
//! node's ingress hook, before IP processing: the nodes count what arrives
//! without a server that could become the bottleneck. Generator, load balancer
//! and sinks share the machine's CPUs (softirq work runs on the sending CPU).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use lb_tests::{netns::NetNs, packets};

use crate::packet_socket;

/// Frames per `sendmmsg` call.
const BATCH: usize = 64;
/// nftables table of the sink (inside each node namespace).
const SINK_TABLE: &str = "lbbench";

/// Frames from `tuples` different client ports to `dst`, addressed from
/// `src_mac` to `dst_mac`, with valid checksums.
pub fn frames(
    src: Ipv4Addr,
    dst: SocketAddrV4,
    tuples: u16,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<Vec<u8>> {
    (0..tuples)
        .map(|i| {
            let mut frame = packets::udp(SocketAddrV4::new(src, 1024 + i), dst, b"lb-bench flood");
            frame[0..6].copy_from_slice(&dst_mac);
            frame[6..12].copy_from_slice(&src_mac);
            frame
        })
        .collect()
}

/// Sends `frames` round-robin out of `iface` in `ns` from `threads` threads
/// (each pinned to its own CPU, each with its share of the frames) for
/// `duration`; returns the number of frames sent.
pub fn send(
    ns: &NetNs,
    iface: &str,
    frames: Vec<Vec<u8>>,
    threads: usize,
    duration: Duration,
) -> Result<u64> {
    let ifindex = i32::try_from(ns.ifindex(iface)?).context("ifindex")?;
    let per_thread = frames.len().div_ceil(threads.max(1));
    let deadline = Instant::now() + duration;
    let mut handles = Vec::new();
    for (cpu, share) in frames.chunks(per_thread).enumerate() {
        let share = share.to_vec();
        handles.push(ns.spawn_thread(move || send_thread(ifindex, cpu, &share, deadline))?);
    }
    let mut sent = 0;
    for handle in handles {
        sent += handle
            .join()
            .unwrap_or_else(|_| bail!("a generator thread panicked"))?;
    }
    Ok(sent)
}

fn send_thread(ifindex: i32, cpu: usize, frames: &[Vec<u8>], deadline: Instant) -> Result<u64> {
    pin_to_cpu(cpu % crate::stats::online_cpus());
    let socket = sending_socket(ifindex)?;
    let mut iovecs: Vec<libc::iovec> = frames
        .iter()
        .map(|frame| libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        })
        .collect();
    // SAFETY: all-zero is a valid mmsghdr (null name and control, no iovecs).
    let mut headers: Vec<libc::mmsghdr> = (0..iovecs.len())
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    for (header, iovec) in headers.iter_mut().zip(iovecs.iter_mut()) {
        header.msg_hdr.msg_iov = iovec;
        header.msg_hdr.msg_iovlen = 1;
    }
    let mut sent: u64 = 0;
    let mut next = 0;
    // Bounded by the deadline; the clock is read once per batch.
    while Instant::now() < deadline {
        let count = BATCH.min(headers.len() - next);
        // SAFETY: `headers[next..next + count]` are valid mmsghdrs whose iovecs
        // point into `frames`, which outlive the call.
        let rc = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers[next..].as_mut_ptr(),
                count as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            // A full queue on the way is loss, not failure: the nodes' count
            // shows it.
            if matches!(err.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) {
                continue;
            }
            return Err(err).context("sendmmsg on the packet socket");
        }
        sent += rc as u64;
        next = (next + rc as usize) % headers.len();
    }
    Ok(sent)
}

/// An AF_PACKET socket bound to `ifindex` that only sends (protocol 0
/// keeps the kernel from copying every received frame to it), past the
/// qdisc.
fn sending_socket(ifindex: i32) -> Result<OwnedFd> {
    let socket = packet_socket::bound(ifindex as u32, 0)?;
    let one: libc::c_int = 1;
    packet_socket::set_option(&socket, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one)?;
    Ok(socket)
}

/// Best effort: an unpinned generator thread still works, only noisier.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it; the call
    // only affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Installs the counting sink for UDP to `port` on `iface` of a node.
pub fn install_sink(ns: &NetNs, iface: &str, port: u16) -> Result<()> {
    let script = format!(
        "add table netdev {SINK_TABLE}; \
         add counter netdev {SINK_TABLE} delivered; \
         add chain netdev {SINK_TABLE} sink {{ type filter hook ingress device \"{iface}\" priority 0; policy accept; }}; \
         add rule netdev {SINK_TABLE} sink udp dport {port} counter name \"delivered\" drop"
    );
    ns.run(&["nft", &script])
        .with_context(|| format!("installing the UDP sink in {}", ns.name()))?;
    Ok(())
}

/// Packets the sink of `ns` has counted so far.
pub fn delivered(ns: &NetNs) -> Result<u64> {
    let json = ns.run(&[
        "nft",
        "-j",
        "list",
        "counter",
        "netdev",
        SINK_TABLE,
        "delivered",
    ])?;
    let value: serde_json::Value = serde_json::from_str(&json).context("parsing nft -j output")?;
    let packets = value["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|item| item["counter"]["packets"].as_u64());
    packets.with_context(|| format!("no counter in nft output {json}"))
}
