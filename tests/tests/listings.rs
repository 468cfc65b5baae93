//! What `lb services` and `lb backends` (and the metrics built from the same
//! listings) count as a backend's active flows and traffic, read from the real
//! maps after the real program recorded the flows through BPF_PROG_TEST_RUN.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use lb::{
    catalog::Catalog,
    dataplane::{Dataplane, DataplaneConfig},
    inspect::{self, Snapshot},
    model::{Frontend, Protocol, ServiceSpec},
};
use lb_tests::{
    packets,
    specs::{node, service},
    xdp_bed::{self, CLIENT, XDP_REDIRECT, XdpBed},
};

fn spec(vip_last: u8) -> ServiceSpec {
    let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, vip_last));
    service(vip, 80, Protocol::Tcp, vec![node(1, 31000)])
}

/// A small data path of its own, every new flow recorded.
fn unpinned() -> DataplaneConfig {
    DataplaneConfig {
        ring_size: 251,
        max_services: 4,
        pin_dir: None,
        new_flow_limit: 0,
        ..Default::default()
    }
}

/// Opens a flow of `spec`'s service from the client's port `port`.
fn open_flow(dataplane: &Dataplane, bed: &XdpBed, spec: &ServiceSpec, port: u16) {
    let client = SocketAddr::new(CLIENT.into(), port);
    let vip = SocketAddr::new(spec.frontend.vip, spec.frontend.port);
    let program = dataplane.program().expect("program");
    let (action, _) =
        xdp_bed::run(program, &packets::tcp_syn(client, vip), bed.client_if).expect("test run");
    assert_eq!(action, XDP_REDIRECT);
}

/// The backend slot and active flows `lb backends` lists for `frontend`'s
/// one backend, and the active flows `lb services` lists for it.
fn listed(dataplane: &Dataplane, frontend: &Frontend) -> (u32, u64, u64) {
    let maps = dataplane.maps();
    let snapshot = Snapshot::take(maps, Catalog::of(dataplane)).expect("snapshot");
    let backends = inspect::backends(maps, &snapshot, None).expect("backends");
    let [backend] = backends
        .iter()
        .filter(|row| row.frontend == *frontend)
        .collect::<Vec<_>>()[..]
    else {
        panic!("{frontend} should list one backend: {backends:?}");
    };
    let services = inspect::services(maps, &snapshot).expect("services");
    let service = services
        .iter()
        .find(|row| row.frontend == *frontend)
        .expect("the service is listed");
    (backend.id, backend.active_flows, service.active_flows)
}

#[test]
fn a_slots_active_flows_are_its_current_owners_only() {
    let (ns, bed) = XdpBed::new("lblist").expect("netns");
    ns.enter(move || slot_changes_hands(&bed)).expect("enter");
}

fn slot_changes_hands(bed: &XdpBed) {
    let mut dataplane = bed.load(unpinned()).expect("load");

    let first = spec(30);
    dataplane.set_service(&first).expect("first service");
    open_flow(&dataplane, bed, &first, 40000);
    let (slot, backend_flows, service_flows) = listed(&dataplane, &first.frontend);
    assert_eq!(
        (backend_flows, service_flows),
        (1, 1),
        "the flow just opened"
    );

    // The slot, freed, goes to the next backend programmed: the same node
    // and NodePort, for another service.
    dataplane
        .remove_service(&first.frontend)
        .expect("remove the first");
    let second = spec(31);
    dataplane.set_service(&second).expect("second service");
    let (second_slot, backend_flows, service_flows) = listed(&dataplane, &second.frontend);
    assert_eq!(second_slot, slot, "the freed slot is reused");
    let packets = dataplane
        .service_traffic(&second.frontend)
        .expect("traffic")
        .expect("programmed")
        .packets;
    assert_eq!(
        packets, 0,
        "the first service's SYN is not counted for the slot's new owner"
    );
    assert_eq!(
        (backend_flows, service_flows),
        (0, 0),
        "the first service's flow is no flow of the slot's new owner"
    );

    open_flow(&dataplane, bed, &second, 40001);
    let (_, backend_flows, service_flows) = listed(&dataplane, &second.frontend);
    assert_eq!(
        (backend_flows, service_flows),
        (1, 1),
        "its own flow counts"
    );
}

/// A backend a service drains (weight 0: no ring points at it) is listed
/// under the service's own slot, as the agent's catalog records it: not
/// under another slot of the same node and port, as the TCP and UDP ports
/// of one DNS Service have (here the UDP one's, with all the traffic), nor
/// counted in that other service's total.
#[test]
fn a_drained_backend_is_listed_under_its_own_slot() {
    let (ns, bed) = XdpBed::new("lbdrain").expect("netns");
    ns.enter(move || drained_slots(&bed)).expect("enter");
}

fn drained_slots(bed: &XdpBed) {
    let mut dataplane = bed.load(unpinned()).expect("load");
    let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 53));
    let dns = |protocol, weight| {
        let mut drained = node(1, 30053);
        drained.weight = weight;
        service(vip, 53, protocol, vec![drained, node(2, 30053)])
    };
    dataplane.set_service(&dns(Protocol::Tcp, 1)).expect("tcp");
    dataplane.set_service(&dns(Protocol::Udp, 1)).expect("udp");
    let program = dataplane.program().expect("program");
    for port in 40000..40064 {
        let client = SocketAddr::new(CLIENT.into(), port);
        let datagram = packets::udp(client, SocketAddr::new(vip, 53), b"query");
        let (action, _) = xdp_bed::run(program, &datagram, bed.client_if).expect("test run");
        assert_eq!(action, XDP_REDIRECT);
    }
    let tcp = dns(Protocol::Tcp, 0);
    dataplane.set_service(&tcp).expect("tcp drains node 1");
    dataplane
        .set_service(&dns(Protocol::Udp, 0))
        .expect("udp drains node 1");
    let own = dataplane.service(&tcp.frontend).expect("tcp").backends[0].id;

    let maps = dataplane.maps();
    let snapshot = Snapshot::take(maps, Catalog::of(&dataplane)).expect("snapshot");
    let label = tcp.frontend.to_string();
    let rows = inspect::backends(maps, &snapshot, Some(&label)).expect("backends");
    let drained = rows
        .iter()
        .find(|row| row.address == node(1, 30053).ip)
        .unwrap_or_else(|| panic!("node 1 is listed: {rows:?}"));
    assert_eq!((drained.id, drained.health), (own, "draining"));
    assert_eq!(drained.packets, 0, "{drained:?}");
    let services = inspect::services(maps, &snapshot).expect("services");
    let listed = services
        .iter()
        .find(|row| row.frontend == tcp.frontend)
        .expect("tcp is listed");
    let counted = dataplane
        .service_traffic(&tcp.frontend)
        .expect("traffic")
        .expect("programmed");
    assert_eq!(listed.packets, counted.packets);
}
