//! The 5-tuple hash that picks a Maglev slot. The kernel and `lb trace` both call
//! this, so a prediction made in userspace is the choice the data path makes.
//! Also the slots of the data path's direct-mapped caches (a client's next
//! hop, a flow's entry), which tests predict.

use crate::{Addr, FlowKey};

const SEED: u32 = 0x9747_b28c;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finalize(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3-style hash of a flow's 5-tuple, fields as stored (network order).
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = SEED;
    for word in key.src_ip {
        h = mix(h, word);
    }
    for word in key.dst_ip {
        h = mix(h, word);
    }
    h = mix(h, (u32::from(key.src_port) << 16) | u32::from(key.dst_port));
    h = mix(h, u32::from(key.proto));
    finalize(h ^ 37)
}

/// Slots per CPU of the data path's cache of clients' next hops
/// (`CLIENT_HOPS`), a power of two.
pub const CLIENT_HOP_SLOTS: u32 = 1 << CLIENT_HOP_SLOT_BITS;
const CLIENT_HOP_SLOT_BITS: u32 = 12;

/// The slot of the client at `addr` (network order) in the cache of clients'
/// next hops: Fibonacci hashing of its words folded together and read in
/// host order, so that the clients of one subnet, which differ in their
/// last bytes, take distinct slots.
#[inline(always)]
pub fn client_hop_slot(addr: &Addr) -> u32 {
    fibonacci_slot(fold(addr), CLIENT_HOP_SLOT_BITS)
}

/// An address's words folded into one, read in host order: its last bytes,
/// which differ most between clients, land in the low bits.
#[inline(always)]
fn fold(addr: &Addr) -> u32 {
    u32::from_be(addr[0] ^ addr[1] ^ addr[2] ^ addr[3])
}

/// The slot of `word` in a table of 2^`bits` slots by Fibonacci hashing,
/// which spreads words that differ in their low bits over every slot.
#[inline(always)]
fn fibonacci_slot(word: u32, bits: u32) -> u32 {
    word.wrapping_mul(0x9e37_79b9) >> (32 - bits)
}

/// Slots per CPU of the data path's cache of flow entries (`FLOW_CACHE4`,
/// `FLOW_CACHE6`), a power of two.
pub const FLOW_CACHE_SLOTS: u32 = 1 << FLOW_CACHE_SLOT_BITS;
const FLOW_CACHE_SLOT_BITS: u32 = 13;

/// The slot of the flow `key` in the cache of flow entries: each address
/// folded to a word ([`fold`]), with the ports, read in host order so that
/// what varies most (a client's port and the last bytes of its address)
/// sits in the low bits, which Fibonacci hashing spreads over every slot.
#[inline(always)]
pub fn flow_cache_slot(key: &FlowKey) -> u32 {
    let ports =
        (u32::from(u16::from_be(key.dst_port)) << 16) | u32::from(u16::from_be(key.src_port));
    let folded =
        fold(&key.src_ip) ^ fold(&key.dst_ip).rotate_left(8) ^ ports ^ u32::from(key.proto);
    fibonacci_slot(folded, FLOW_CACHE_SLOT_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src_port: u16) -> FlowKey {
        FlowKey::new(
            crate::ipv4_mapped(u32::from_ne_bytes([10, 0, 0, 2])),
            crate::ipv4_mapped(u32::from_ne_bytes([198, 51, 100, 10])),
            src_port.to_be(),
            80u16.to_be(),
            crate::PROTO_TCP,
        )
    }

    #[test]
    fn hash_is_deterministic_and_spreads_ports() {
        assert_eq!(flow_hash(&key(40000)), flow_hash(&key(40000)));
        // Consecutive client ports must land in all 16 buckets of a small table.
        let mut buckets = [0u32; 16];
        for port in 40000..41600 {
            buckets[(flow_hash(&key(port)) % 16) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (70..=130).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn the_connections_of_one_client_take_distinct_flow_cache_slots() {
        let mut taken = [false; FLOW_CACHE_SLOTS as usize];
        for port in 40000..41024u16 {
            let slot = flow_cache_slot(&key(port)) as usize;
            assert!(!taken[slot], "port {port} shares slot {slot}");
            taken[slot] = true;
        }
    }

    #[test]
    fn the_clients_of_one_subnet_take_distinct_hop_slots() {
        let mut taken = [false; CLIENT_HOP_SLOTS as usize];
        for host in 0..=255u8 {
            let addr = crate::ipv4_mapped(u32::from_ne_bytes([10, 0, 7, host]));
            let slot = client_hop_slot(&addr) as usize;
            assert!(!taken[slot], "10.0.7.{host} shares slot {slot}");
            taken[slot] = true;
        }
    }
}
