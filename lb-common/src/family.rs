//! The IPv4 forms of the keys. `SERVICES` and `FLOWS` are each a pair of
//! maps, one per address family (as `NODE_PORTS` is, whose values take the
//! same forms): IPv4 keys in their compact form (8 and 16 bytes) in the `*4` map, IPv6 keys in the family-neutral form
//! ([`ServiceKey`], [`FlowKey`]: 20 and 40 bytes) in the `*6` map. The kernel
//! hashes and compares a whole key on every lookup, and most traffic is IPv4.
//!
//! Everything above the maps (the balancing, `lb trace`, the agent) works on
//! the neutral form; only the map accessors pick the family, by the one rule
//! here: a key is IPv4 when its addresses are IPv4-mapped.

use crate::{FlowKey, ServiceKey, ipv4_mapped, is_ipv4_mapped};

/// A [`ServiceKey`] of an IPv4 address: key of `SERVICES4`, and value of
/// `NODE_PORTS4` (whose entries are by NodePort, see `node_port_slot`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey4 {
    /// Network order.
    pub vip: u32,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// A [`FlowKey`] of an IPv4 packet: key of `FLOWS4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    /// Network order.
    pub src_ip: u32,
    pub dst_ip: u32,
    /// Network order.
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// How a key or value of a per-family map pair is stored in the IPv4 map.
/// Values without addresses are stored as they are.
pub trait ByFamily: Sized {
    /// The form in the IPv4 map.
    type V4: Copy;

    /// The IPv4 form, or `None` when `self` belongs in the IPv6 map.
    fn to_v4(&self) -> Option<Self::V4>;

    /// The neutral form of an IPv4 map's key or value.
    fn from_v4(v4: &Self::V4) -> Self;
}

impl ByFamily for ServiceKey {
    type V4 = ServiceKey4;

    #[inline(always)]
    fn to_v4(&self) -> Option<ServiceKey4> {
        is_ipv4_mapped(&self.vip).then_some(ServiceKey4 {
            vip: self.vip[3],
            port: self.port,
            proto: self.proto,
            _pad: 0,
        })
    }

    #[inline(always)]
    fn from_v4(v4: &ServiceKey4) -> Self {
        Self::new(ipv4_mapped(v4.vip), v4.port, v4.proto)
    }
}

impl ByFamily for FlowKey {
    type V4 = FlowKey4;

    /// Both addresses of a packet have its family (the parser drops IPv6
    /// packets with mapped addresses), so the source decides.
    #[inline(always)]
    fn to_v4(&self) -> Option<FlowKey4> {
        is_ipv4_mapped(&self.src_ip).then_some(FlowKey4 {
            src_ip: self.src_ip[3],
            dst_ip: self.dst_ip[3],
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
            _pad: [0; 3],
        })
    }

    #[inline(always)]
    fn from_v4(v4: &FlowKey4) -> Self {
        Self::new(
            ipv4_mapped(v4.src_ip),
            ipv4_mapped(v4.dst_ip),
            v4.src_port,
            v4.dst_port,
            v4.proto,
        )
    }
}

/// Values that hold no address, the same in both maps of a pair.
macro_rules! same_in_both_families {
    ($($value:ty),*) => {$(
        impl ByFamily for $value {
            type V4 = Self;

            #[inline(always)]
            fn to_v4(&self) -> Option<Self> {
                Some(*self)
            }

            #[inline(always)]
            fn from_v4(v4: &Self) -> Self {
                *v4
            }
        }
    )*};
}

same_in_both_families!(crate::ServiceInfo, crate::Flow);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, `Copy`, and padded explicitly.
    unsafe impl aya::Pod for super::ServiceKey4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey4 {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PROTO_TCP, addr_of};
    use core::{mem::size_of, net::IpAddr};

    fn addr(text: &str) -> crate::Addr {
        addr_of(text.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn compact_keys_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey4>(), 8);
        assert_eq!(size_of::<FlowKey4>(), 16);
    }

    #[test]
    fn ipv4_keys_round_trip_through_their_compact_form() {
        let flow = FlowKey::new(
            addr("10.0.0.2"),
            addr("198.51.100.10"),
            40000u16.to_be(),
            80u16.to_be(),
            PROTO_TCP,
        );
        let compact = flow.to_v4().unwrap();
        assert_eq!(compact.src_ip, u32::from_ne_bytes([10, 0, 0, 2]));
        assert_eq!(compact.dst_ip, u32::from_ne_bytes([198, 51, 100, 10]));
        assert_eq!(FlowKey::from_v4(&compact), flow);
        let service = ServiceKey::of_destination(&flow);
        assert_eq!(ServiceKey::from_v4(&service.to_v4().unwrap()), service);
    }

    #[test]
    fn ipv6_keys_have_no_compact_form() {
        let flow = FlowKey::new(
            addr("2001:db8::2"),
            addr("2001:db8:100::10"),
            40000u16.to_be(),
            80u16.to_be(),
            PROTO_TCP,
        );
        assert_eq!(flow.to_v4(), None);
        assert_eq!(ServiceKey::of_destination(&flow).to_v4(), None);
    }
}
