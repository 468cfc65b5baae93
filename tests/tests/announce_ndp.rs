//! `--announce arp` for IPv6 end to end: the client has only an on-link route
//! to the IPv6 VIP range, so it must send a Neighbor Solicitation for a VIP,
//! and the XDP program answers with the lb interface's MAC; a VIP that
//! appears later is announced with an unsolicited Neighbor Advertisement.

use std::net::IpAddr;

use lb_tests::{
    on_link::OnLink,
    topology::{HOST_IFACE, vip6},
};

const VIP: IpAddr = IpAddr::V6(vip6(10));
const LATER_VIP: IpAddr = IpAddr::V6(vip6(11));
const NOT_A_VIP: IpAddr = IpAddr::V6(vip6(12));

#[test]
fn a_client_on_the_segment_solicits_the_vip_and_hears_of_new_ones() {
    let bed = OnLink::start("announce-ndp", &[VIP]).expect("bed");
    bed.check_resolved(VIP, NOT_A_VIP, "ndp_reply")
        .expect("the VIP resolved by NDP and served, another address not");

    // A Service appears: its VIP is advertised before anyone asks. Linux
    // creates an entry from an unsolicited advertisement only on a router
    // told to (RFC 9131), and routers are who needs it: make the client one.
    for (key, value) in [("forwarding", "1"), ("accept_untracked_na", "1")] {
        bed.segment
            .topology
            .client
            .sysctl(&format!("net.ipv6.conf.{HOST_IFACE}.{key}"), value)
            .expect(key);
    }
    assert_eq!(
        bed.segment.neighbour_mac(LATER_VIP).expect("neighbours"),
        None
    );
    bed.serve(&[VIP, LATER_VIP]).expect("add a Service");
    assert_eq!(
        bed.segment
            .wait_for_neighbour(LATER_VIP)
            .expect("an unsolicited Neighbor Advertisement"),
        bed.segment.lb_mac
    );
}
