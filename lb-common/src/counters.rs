//! Indexes of the global per-CPU counters (`COUNTERS`).
//!
//! Every packet the program sees ends in exactly one outcome counter
//! ([`OUTCOMES`]), so those add up to `RX`, which readers derive from them
//! ([`derive_rx`]) rather than the program counting every packet twice.

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident = $index:literal, $label:literal;)*) => {
        $($(#[doc = $doc])* pub const $name: u32 = $index;)*
        /// Number of global counters.
        pub const COUNT: u32 = [$($index),*].len() as u32;
        /// Metric-style names, indexed like the counters.
        pub const NAMES: [&str; COUNT as usize] = [$($label),*];
    };
}

counters! {
    /// Packets the program saw: the sum of the outcomes, filled in by
    /// [`derive_rx`] (the program leaves this slot alone).
    RX = 0, "rx";
    /// Flows created (Maglev lookup and flow insert).
    NEW_FLOWS = 1, "new_flows";
    /// Packets DNAT-ed to a backend and sent with XDP_TX.
    FORWARD_TX = 2, "forward_tx";
    /// Packets DNAT-ed to a backend and redirected to another interface.
    FORWARD_REDIRECT = 3, "forward_redirect";
    /// Replies reverse-NAT-ed and sent with XDP_TX.
    REPLY_TX = 4, "reply_tx";
    /// Replies reverse-NAT-ed and redirected to another interface.
    REPLY_REDIRECT = 5, "reply_redirect";
    /// Rewritten packets handed to the kernel because the FIB had no neighbour yet.
    FIB_MISS = 6, "fib_miss_pass";
    /// Handed to the kernel: no route (or not forwardable: a blackhole, too
    /// big for the egress and not answered) untouched; egress not in the
    /// devmap translated, with the Ethernet header and TTL it came with.
    FIB_OTHER = 7, "fib_other_pass";
    /// Passed: neither IPv4 nor IPv6 (ARP, VLAN-tagged...).
    PASS_NOT_IP = 8, "pass_not_ip";
    /// Passed: to a VIP or from a node, an IPv6 fragment, an IPv4 fragment of
    /// another protocol than TCP and UDP, or a later IPv4 fragment of a
    /// datagram whose first lb did not serve.
    PASS_FRAGMENT = 9, "pass_fragment";
    /// Passed: neither TCP nor UDP, to a VIP or from a node (to neither,
    /// the key filters pass it first, as `pass_not_service`); ICMP or
    /// ICMPv6 that is not lb's to answer or translate (an echo to no VIP or
    /// to a group MAC, an error about no flow of ours, a Neighbor
    /// Solicitation for no VIP); an IPv6 packet with a routing header still
    /// to be followed, or a header chain too long to follow.
    PASS_OTHER_PROTO = 10, "pass_other_proto";
    /// Passed: truncated or malformed headers.
    PASS_MALFORMED = 11, "pass_malformed";
    /// Passed: not addressed to a service and not a reply of a tracked flow.
    PASS_NOT_SERVICE = 12, "pass_not_service";
    /// Dropped: a service with no backends.
    DROP_NO_BACKEND = 13, "drop_no_backend";
    /// Dropped: the Maglev ring or backend table was inconsistent.
    DROP_INTERNAL = 14, "drop_internal";
    /// Flow entries found whose backend was gone, so the flow re-hashed.
    FLOW_REHASHED = 15, "flow_rehashed";
    /// ICMP echo requests to a VIP answered (XDP_TX).
    ICMP_ECHO_REPLY = 16, "icmp_echo_reply";
    /// ICMP errors about a tracked flow translated like the flow.
    ICMP_TRANSLATED = 17, "icmp_translated";
    /// Passed: would be forwarded but its TTL (hop limit) runs out here; the
    /// kernel sends the Time Exceeded.
    PASS_TTL_EXPIRED = 18, "pass_ttl_expired";
    /// New flows forwarded by the stateless Maglev choice without a flow
    /// entry, because this CPU was over its new-flow limit.
    NEW_FLOWS_UNTRACKED = 19, "new_flows_untracked";
    /// Replies reverse-NAT-ed with no flow entry on this host (another lb
    /// host saw the flow begin, or it was not recorded), after checking that
    /// Maglev sends their flow to the node they come from.
    REPLIES_UNTRACKED = 20, "replies_untracked";
    /// ARP requests for a VIP answered (XDP_TX).
    ARP_REPLY = 21, "arp_reply";
    /// IPv6 Neighbor Solicitations for a VIP answered (XDP_TX).
    NDP_REPLY = 22, "ndp_reply";
    /// Dropped: direct server return to a node the FIB puts behind a gateway
    /// (DSR needs the node on a segment lb is attached to).
    DROP_NOT_ADJACENT = 23, "drop_not_adjacent";
    /// Dropped: direct server return to a node whose MAC the kernel has not
    /// resolved (the agent makes the nodes' neighbour entries managed, which
    /// the kernel keeps resolved); the kernel could only route the packet by
    /// its VIP.
    DROP_NO_NEIGHBOR = 24, "drop_no_neighbor";
    /// Passed: a unicast frame for another host's MAC, which a NIC in
    /// promiscuous mode (a bridge port, a packet capture) hands up too.
    PASS_OTHER_HOST = 25, "pass_other_host";
    /// Packets too big for the link to their next hop, with IPv4's Don't
    /// Fragment set or IPv6, answered with an ICMP "fragmentation needed"
    /// or ICMPv6 "packet too big" from the address they were sent to
    /// (XDP_TX), so the sender's path MTU discovery works through lb.
    TOO_BIG_ANSWERED = 26, "too_big_answered";
    /// Rewritten packets handed to the kernel to fragment: too big for the
    /// link to their next hop, IPv4 without Don't Fragment. The kernel
    /// fragments and forwards them, with the Ethernet header and TTL they
    /// came with.
    PASS_TO_FRAGMENT = 27, "pass_to_fragment";
}

/// Slots of the counters' map: more than [`COUNT`], so that a counter added
/// later fits the map an earlier agent pinned.
pub const SLOTS: u32 = 64;
const _: () = assert!(COUNT <= SLOTS);

/// The outcome counters: every packet ends in exactly one of them.
pub const OUTCOMES: [u32; 22] = [
    FORWARD_TX,
    FORWARD_REDIRECT,
    REPLY_TX,
    REPLY_REDIRECT,
    FIB_MISS,
    FIB_OTHER,
    PASS_NOT_IP,
    PASS_FRAGMENT,
    PASS_OTHER_PROTO,
    PASS_MALFORMED,
    PASS_NOT_SERVICE,
    DROP_NO_BACKEND,
    DROP_INTERNAL,
    ICMP_ECHO_REPLY,
    PASS_TTL_EXPIRED,
    ARP_REPLY,
    NDP_REPLY,
    DROP_NOT_ADJACENT,
    DROP_NO_NEIGHBOR,
    PASS_OTHER_HOST,
    TOO_BIG_ANSWERED,
    PASS_TO_FRAGMENT,
];

/// Fills in `RX` of the global counters `values` (indexed like them) as the
/// sum of their outcomes.
pub fn derive_rx(values: &mut [u64]) {
    let rx = OUTCOMES
        .iter()
        .map(|&outcome| values.get(outcome as usize).copied().unwrap_or(0))
        .fold(0u64, u64::wrapping_add);
    if let Some(slot) = values.get_mut(RX as usize) {
        *slot = rx;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rx_is_the_sum_of_the_outcomes() {
        let mut values = [0u64; super::COUNT as usize];
        values[super::RX as usize] = 99;
        values[super::FORWARD_REDIRECT as usize] = 5;
        values[super::PASS_NOT_SERVICE as usize] = 2;
        values[super::NEW_FLOWS as usize] = 7;
        super::derive_rx(&mut values);
        assert_eq!(values[super::RX as usize], 7, "outcomes only");
    }

    #[test]
    fn indexes_are_dense() {
        assert_eq!(super::COUNT, 28);
        assert_eq!(super::NAMES[super::FLOW_REHASHED as usize], "flow_rehashed");
    }
}
