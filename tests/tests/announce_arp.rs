//! `--announce arp` end to end: the client has only an on-link route to the
//! VIP range, so it must ARP for a VIP, and the XDP program answers with the
//! lb interface's MAC; a VIP that appears later is announced with a
//! gratuitous ARP the client learns without asking, and one that goes is no
//! longer announced.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

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
    assert_eq!(
        bed.segment.neighbour_mac(LATER_VIP).expect("neighbours"),
        None
    );
    bed.serve(&[VIP, LATER_VIP]).expect("add a Service");
    assert_eq!(
        bed.segment
            .wait_for_neighbour(LATER_VIP)
            .expect("a gratuitous ARP"),
        bed.segment.lb_mac
    );
    let first_announced = Instant::now();

    // The Service goes before its VIP's announcements are all sent (three,
    // a second apart): those still due must not go out, or the client would
    // learn lb's MAC for an address lb no longer answers.
    bed.serve(&[VIP]).expect("remove the Service");
    let deadline = Instant::now() + Duration::from_secs(20);
    while served(&bed).contains(&LATER_VIP) {
        assert!(Instant::now() < deadline, "{LATER_VIP} still served");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Else the last announcement was due before the removal, and the check
    // below would prove nothing.
    assert!(
        first_announced.elapsed() < Duration::from_millis(1800),
        "the removal took {:?} after the first announcement",
        first_announced.elapsed()
    );
    bed.segment.forget_neighbours().expect("flush");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        bed.segment.neighbour_mac(LATER_VIP).expect("neighbours"),
        None,
        "announced after it stopped being answered"
    );
}

/// The VIPs `lb services` lists.
fn served(bed: &OnLink) -> Vec<IpAddr> {
    let rows = bed.agent.query("services").expect("lb services");
    let rows = rows.as_array().expect("rows");
    rows.iter()
        .filter_map(|row| row["vip"].as_str()?.parse().ok())
        .collect()
}
