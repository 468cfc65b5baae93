//! The namespace `BPF_PROG_TEST_RUN` runs in: `lb_tests::xdp_bed` (the same
//! setup as the packet fixtures in tests/tests/xdp_fixtures.rs), plus a route
//! back to the clients of new-flow measurements.

use anyhow::{Context, Result};
use lb_tests::netns::NetNs;
pub use lb_tests::xdp_bed::{CLIENT, NODES, XdpBed as Bed, node_ip};

/// Interfaces the programs are attached to for the attached pass: the floor,
/// parse-only, lb with NAT and lb with DSR, one each (an interface takes one
/// XDP program).
pub const ATTACH_IFACES: [&str; 4] = ["att0", "att1", "att2", "att3"];

pub fn new() -> Result<(NetNs, Bed)> {
    let (ns, bed) = Bed::new("lbbench")?;
    for iface in ATTACH_IFACES {
        ns.ip(&format!("link add {iface} type veth peer name {iface}p"))
            .with_context(|| format!("creating {iface}"))?;
    }
    // The clients of new-flow measurements come from many addresses; the
    // data path does not care, but replies must route back through cl0.
    ns.ip("route add 10.128.0.0/9 via 10.0.0.2 dev cl0")
        .context("route to the clients")?;
    Ok((ns, bed))
}
