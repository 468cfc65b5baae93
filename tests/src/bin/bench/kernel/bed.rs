//! The namespace `BPF_PROG_TEST_RUN` runs in: two interfaces, routes and
//! permanent neighbours, so the program's FIB lookups succeed deterministically
//! (the same setup as the packet fixtures in tests/tests/xdp_fixtures.rs).

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use lb_tests::netns::NetNs;

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const CLIENT_MAC: &str = "02:00:00:00:00:02";

/// Node `i` (1-based) at 10.1.0.(10 + i), all behind `nd0`.
pub fn node_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 10 + i)
}

pub const NODES: u8 = 3;

/// Interface indexes of the namespace: `cl0` faces clients, `nd0` nodes.
#[derive(Clone, Copy, Debug)]
pub struct Bed {
    pub client_if: u32,
    pub node_if: u32,
}

impl Bed {
    pub fn new() -> Result<(NetNs, Bed)> {
        let ns = NetNs::new("lbbench")?;
        for cmd in [
            "link add cl0 type veth peer name cl1",
            "link add nd0 type veth peer name nd1",
            "addr add 10.0.0.1/24 dev cl0",
            "addr add 10.1.0.1/24 dev nd0",
            "link set cl0 up",
            "link set cl1 up",
            "link set nd0 up",
            "link set nd1 up",
        ] {
            ns.ip(cmd).with_context(|| format!("ip {cmd}"))?;
        }
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        ns.ip(&format!(
            "neigh add {CLIENT} lladdr {CLIENT_MAC} dev cl0 nud permanent"
        ))?;
        for i in 1..=NODES {
            ns.ip(&format!(
                "neigh add {} lladdr 02:00:00:00:01:{:02x} dev nd0 nud permanent",
                node_ip(i),
                0x10 + i
            ))?;
        }
        // The clients of new-flow measurements come from many addresses; the
        // data path does not care, but replies must route back through cl0.
        ns.ip("route add 10.128.0.0/9 via 10.0.0.2 dev cl0")?;
        let bed = Bed {
            client_if: ns.ifindex("cl0")?,
            node_if: ns.ifindex("nd0")?,
        };
        Ok((ns, bed))
    }
}
