//! The namespace `BPF_PROG_TEST_RUN` runs in: `lb_tests::xdp_bed` (the same
//! setup as the packet fixtures in tests/tests/xdp_fixtures.rs), plus a route
//! back to the clients of new-flow measurements.

use anyhow::{Context, Result};
use lb_tests::netns::NetNs;
pub use lb_tests::xdp_bed::{CLIENT, NODES, XdpBed as Bed, node_ip};

pub fn new() -> Result<(NetNs, Bed)> {
    let (ns, bed) = Bed::new("lbbench")?;
    // The clients of new-flow measurements come from many addresses; the
    // data path does not care, but replies must route back through cl0.
    ns.ip("route add 10.128.0.0/9 via 10.0.0.2 dev cl0")
        .context("route to the clients")?;
    Ok((ns, bed))
}
