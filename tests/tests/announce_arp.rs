//! `--announce arp` end to end: the client has only an on-link route to the
//! VIP range, so it must ARP for a VIP, and the XDP program answers with the
//! lb interface's MAC; a VIP that appears later is announced with a
//! gratuitous ARP the client learns without asking.

use std::net::{IpAddr, Ipv4Addr};

use lb_tests::{on_link::OnLink, topology::HOST_IFACE};

const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const LATER_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 11));
const NOT_A_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 12));

#[test]
fn a_client_on_the_segment_arps_for_the_vip_and_hears_of_new_ones() {
    let bed = OnLink::start("announce-arp", &[VIP]).expect("bed");
    bed.check_resolved(VIP, NOT_A_VIP, "arp_reply")
        .expect("the VIP resolved by ARP and served, another address not");

    // A Service appears: its VIP is announced before anyone asks. (Only now
    // does the client take gratuitous ARPs for addresses it has no entry
    // for: the one at the agent's start would have spared it the ARP above.)
    bed.segment
        .topology
        .client
        .sysctl(&format!("net.ipv4.conf.{HOST_IFACE}.arp_accept"), "1")
        .expect("arp_accept");
    assert_eq!(bed.segment.neighbour_mac(LATER_VIP), None);
    bed.serve(&[VIP, LATER_VIP]).expect("add a Service");
    assert_eq!(
        bed.segment
            .wait_for_neighbour(LATER_VIP)
            .expect("a gratuitous ARP"),
        bed.segment.lb_mac
    );
}
