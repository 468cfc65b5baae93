//! NAT mode over two lb hosts: the router sends the VIP to host A only, the
//! nodes send everything through host B, so every reply reaches a host that
//! never saw its flow begin. B must translate it back to the VIP, or the
//! client would get segments from the node's address and reset them.

use std::{net::SocketAddrV4, time::Duration};

use lb_tests::{
    agent::Agent,
    manifests::ManifestFile,
    scale_out::{PORT, ScaleOut, VIP, wait_programmed},
    servers::{self, LineClient},
};

const TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn a_reply_through_the_host_that_did_not_see_the_flow_begin_is_translated() {
    let bed = ScaleOut::new(2, 3).expect("topology");
    let _servers = bed.serve().expect("servers");
    let manifests = ManifestFile::new("nat-two-hosts", &bed.manifest()).expect("manifests");
    // Routes are static here: nothing announces.
    let agents: Vec<Agent> = (0..2)
        .map(|i| {
            bed.start_agent(i, manifests.path(), &["--announce", "none"])
                .expect("agent")
        })
        .collect();
    for agent in &agents {
        wait_programmed(agent).expect("agent programs the service");
    }
    let (a, b) = (&bed.hosts[0], &bed.hosts[1]);
    bed.router
        .ip(&format!("route add {VIP}/32 via {}", a.ip))
        .expect("route to the VIP via A");
    for node in &bed.nodes {
        node.ns
            .ip(&format!("route replace default via {}", b.ip))
            .expect("nodes' replies via B");
    }

    let vip = SocketAddrV4::new(VIP, PORT);
    let answers = bed
        .client
        .enter(move || {
            let mut client = LineClient::connect(vip, TIMEOUT).expect("connect through A");
            let answers: Vec<String> = (0..5)
                .map(|i| client.ask(&format!("line {i}")).expect("answer through B"))
                .collect();
            (client.greeting().to_owned(), answers)
        })
        .expect("client namespace");
    let (node, answers) = answers;
    assert!(node.starts_with("node-"), "greeted by {node:?}");
    assert_eq!(answers.last(), Some(&format!("{node} line 4")));
    let tally = servers::connect_many(&bed.client, vip, 30, TIMEOUT);
    assert!(
        tally.keys().all(|node| node.starts_with("node-")),
        "answered by {tally:?}"
    );

    let [on_a, on_b] = [&agents[0], &agents[1]];
    let untracked = on_b.counter("replies_untracked").expect("B's stats");
    assert!(
        untracked >= 30,
        "B translated only {untracked} replies without a flow entry"
    );
    assert_eq!(
        on_b.counter("new_flows").expect("B's stats"),
        0,
        "B saw requests"
    );
    assert!(on_a.counter("new_flows").expect("A's stats") >= 31);
    assert_eq!(
        on_a.counter("reply_tx").expect("A's stats")
            + on_a.counter("replies_untracked").expect("A's stats"),
        0,
        "A saw replies"
    );
}
