//! The namespace `BPF_PROG_TEST_RUN` runs the XDP program in, and the call
//! itself. Shared by the packet fixtures, the packet fuzzer and the in-kernel
//! benchmark.
//!
//! The program's FIB lookups use the namespace of the calling thread, so the
//! calls run inside it (`NetNs::enter`). Two interfaces: `cl0` (10.0.0.1/24)
//! faces clients, `nd0` (10.1.0.1/24) faces nodes, each with an IPv6 prefix
//! too (2001:db8::/64 and 2001:db8:1::/64); forwarding is on, and the
//! neighbours are permanent, so the MAC rewriting is deterministic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use aya::{
    maps::{Map, MapData, MapInfo},
    programs::{TestRun as _, TestRunOptions, TestRunResult, Xdp},
};

use lb::dataplane::{Dataplane, DataplaneConfig, DataplaneError};

use crate::netns::NetNs;

/// XDP actions, as `BPF_PROG_TEST_RUN` reports them.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The interface facing clients.
pub const CLIENT_DEV: &str = "cl0";
/// The interface facing nodes.
pub const NODE_DEV: &str = "nd0";

/// A client with a resolved neighbour behind `cl0`.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The same client's IPv6 address.
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// Nodes 1 to `NODES` have resolved neighbours behind `nd0`; others do not.
pub const NODES: u8 = 3;

/// Node `i` (1-based) at 10.1.0.(10 + i), behind `nd0`.
pub fn node_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 10 + i)
}

/// Node `i`'s IPv6 address, 2001:db8:1::(10 + i).
pub fn node_ip6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + u16::from(i))
}

pub fn node_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, 0x10 + i]
}

/// `02:00:...` notation, as `ip` takes it.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    let bytes: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    bytes.join(":")
}

/// The interfaces of the namespace.
#[derive(Clone, Copy, Debug)]
pub struct XdpBed {
    pub client_if: u32,
    pub node_if: u32,
    pub client_if_mac: [u8; 6],
    pub node_if_mac: [u8; 6],
}

impl XdpBed {
    /// A namespace named after `prefix` with both interfaces, forwarding on,
    /// and permanent neighbours for `CLIENT` and nodes 1 to `NODES`.
    pub fn new(prefix: &str) -> Result<(NetNs, XdpBed)> {
        let ns = NetNs::new(prefix)?;
        for cmd in [
            "link add cl0 type veth peer name cl1",
            "link add nd0 type veth peer name nd1",
            "addr add 10.0.0.1/24 dev cl0",
            "addr add 10.1.0.1/24 dev nd0",
            "-6 addr add 2001:db8::1/64 dev cl0 nodad",
            "-6 addr add 2001:db8:1::1/64 dev nd0 nodad",
            "link set cl0 up",
            "link set cl1 up",
            "link set nd0 up",
            "link set nd1 up",
        ] {
            ns.ip(cmd).with_context(|| format!("ip {cmd}"))?;
        }
        ns.sysctl("net.ipv4.ip_forward", "1")
            .context("forwarding")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")
            .context("IPv6 forwarding")?;
        add_neighbour(&ns, CLIENT, CLIENT_MAC, CLIENT_DEV)?;
        add_neighbour(&ns, CLIENT6, CLIENT_MAC, CLIENT_DEV)?;
        for i in 1..=NODES {
            add_neighbour(&ns, node_ip(i), node_mac(i), NODE_DEV)?;
            add_neighbour(&ns, node_ip6(i), node_mac(i), NODE_DEV)?;
        }
        let bed = XdpBed {
            client_if: ns.ifindex(CLIENT_DEV)?,
            node_if: ns.ifindex(NODE_DEV)?,
            client_if_mac: ns.mac(CLIENT_DEV)?,
            node_if_mac: ns.mac(NODE_DEV)?,
        };
        Ok((ns, bed))
    }
}

impl XdpBed {
    /// Loads the data path with `config`, free to redirect to both
    /// interfaces (it is not attached: tests run it with `test_run`).
    pub fn load(&self, config: DataplaneConfig) -> Result<Dataplane, DataplaneError> {
        let mut dataplane = Dataplane::load(config)?;
        dataplane.add_egress_port(self.client_if)?;
        dataplane.add_egress_port(self.node_if)?;
        Ok(dataplane)
    }
}

/// Opens one of `dataplane`'s maps by name, bypassing the API: what the
/// kernel holds, not what the API makes of it. Found by the program's own
/// map ids: other tests load programs with maps of the same names.
pub fn raw_map(dataplane: &Dataplane, name: &str) -> Map {
    let ids = dataplane
        .program()
        .expect("program")
        .info()
        .expect("program info")
        .map_ids()
        .expect("map ids")
        .expect("the kernel lists the maps");
    let id = ids
        .into_iter()
        .find(|&id| MapInfo::from_id(id).expect("map info").name_as_str() == Some(name))
        .unwrap_or_else(|| panic!("the program has no map {name}"));
    Map::from_map_data(MapData::from_id(id).expect("map")).expect("map type")
}

/// Adds a permanent neighbour `ip` at `mac` on `dev` of `ns`.
pub fn add_neighbour(ns: &NetNs, ip: impl Into<IpAddr>, mac: [u8; 6], dev: &str) -> Result<()> {
    let ip = ip.into();
    let cmd = format!(
        "neigh add {ip} lladdr {} dev {dev} nud permanent",
        fmt_mac(mac)
    );
    ns.ip(&cmd).with_context(|| format!("ip {cmd}"))?;
    Ok(())
}

/// One `BPF_PROG_TEST_RUN` of `program` on `input` arriving on
/// `ingress_ifindex`, `repeat` times; the output packet goes to `out`.
pub fn test_run(
    program: &Xdp,
    input: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
    out: &mut [u8],
) -> Result<TestRunResult> {
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let mut ctx = [0u8; 24];
    let len = u32::try_from(input.len()).context("packet too long")?;
    ctx[4..8].copy_from_slice(&len.to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    program
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
        .with_context(|| format!("BPF_PROG_TEST_RUN of {} bytes", input.len()))
}

/// Runs one packet through `program`; returns (action, output bytes).
pub fn run(program: &Xdp, input: &[u8], ingress_ifindex: u32) -> Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; input.len() + 256];
    let result = test_run(program, input, ingress_ifindex, 1, &mut out)?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// Restricts the calling thread to `cpu`: per-CPU state of the program (flow
/// lists, the new-flow budget) then stays the same across runs.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it for
    // cpu < CPU_SETSIZE, and sched_setaffinity(0) only affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}
