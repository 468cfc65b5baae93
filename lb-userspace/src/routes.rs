//! How the kernel routes to a node, read from `/proc/net/route` and
//! `/proc/net/ipv6_route` (the main table, as the caller's network namespace
//! sees it): direct server return needs every node on a segment lb is
//! attached to, not behind a gateway.

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// `RTF_UP` and `RTF_GATEWAY` of the route flags.
const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;

/// Where the kernel sends packets for an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// On a directly attached segment, that of this interface.
    OnLink(String),
    /// Through this gateway.
    Gateway(IpAddr),
    /// No route at all.
    Unreachable,
}

struct Route {
    destination: u128,
    prefix_len: u32,
    gateway: Option<IpAddr>,
    metric: u32,
    v6: bool,
    iface: String,
}

/// The routes of both families.
pub struct Routes(Vec<Route>);

impl Routes {
    pub fn read() -> io::Result<Self> {
        Ok(Self::parse(
            &fs::read_to_string("/proc/net/route")?,
            // A kernel without IPv6 has no such file: no IPv6 routes.
            &fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default(),
        ))
    }

    fn parse(v4: &str, v6: &str) -> Self {
        let hex = |text: &str| u32::from_str_radix(text, 16).ok();
        let mut routes = Vec::new();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...: the
        // addresses are in network order, printed as host-order words.
        for line in v4.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(dst), Some(gw), Some(flags), Some(metric), Some(mask)) = (
                fields.get(1).and_then(|f| hex(f)),
                fields.get(2).and_then(|f| hex(f)),
                fields.get(3).and_then(|f| hex(f)),
                fields.get(6).and_then(|f| f.parse().ok()),
                fields.get(7).and_then(|f| hex(f)),
            ) else {
                continue;
            };
            // The kernel prints the network-order word as a host integer.
            let addr = |word: u32| Ipv4Addr::from(word.to_ne_bytes());
            if flags & RTF_UP == 0 {
                continue;
            }
            routes.push(Route {
                destination: u128::from(u32::from(addr(dst))),
                prefix_len: mask.count_ones(),
                gateway: (flags & RTF_GATEWAY != 0).then(|| addr(gw).into()),
                metric,
                v6: false,
                iface: fields[0].to_owned(),
            });
        }
        // dst dst_len src src_len next_hop metric refcnt use flags iface
        for line in v6.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(dst), Some(len), Some(next_hop), Some(metric), Some(flags), Some(iface)) = (
                fields
                    .first()
                    .and_then(|f| u128::from_str_radix(f, 16).ok()),
                fields.get(1).and_then(|f| hex(f)),
                fields.get(4).and_then(|f| u128::from_str_radix(f, 16).ok()),
                fields.get(5).and_then(|f| hex(f)),
                fields.get(8).and_then(|f| hex(f)),
                fields.get(9),
            ) else {
                continue;
            };
            if flags & RTF_UP == 0 {
                continue;
            }
            routes.push(Route {
                destination: dst,
                prefix_len: len,
                gateway: (flags & RTF_GATEWAY != 0).then(|| Ipv6Addr::from(next_hop).into()),
                metric,
                v6: true,
                iface: (*iface).to_owned(),
            });
        }
        Self(routes)
    }

    /// How the longest matching route (the lowest metric among equals)
    /// reaches `ip`.
    pub fn reach(&self, ip: IpAddr) -> Reach {
        let (address, bits, v6) = match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32, false),
            IpAddr::V6(v6) => (u128::from(v6), 128, true),
        };
        let matches = |route: &&Route| {
            route.v6 == v6
                && route.prefix_len <= bits
                && (route.prefix_len == 0
                    || (address ^ route.destination) >> (bits - route.prefix_len) == 0)
        };
        self.0
            .iter()
            .filter(matches)
            .max_by(|a, b| {
                a.prefix_len
                    .cmp(&b.prefix_len)
                    .then(b.metric.cmp(&a.metric))
            })
            .map_or(Reach::Unreachable, |route| {
                route
                    .gateway
                    .map_or_else(|| Reach::OnLink(route.iface.clone()), Reach::Gateway)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t0101010A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t0000010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        eth0\t0000020A\t0B00010A\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        eth1\t0000030A\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
    const V6: &str = "20010db8000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000100000000000000000001 00000400 00000002 00000000 00000003     eth0\n";

    #[test]
    fn the_longest_match_decides() {
        let routes = Routes::parse(V4, V6);
        let v4 = |text: &str| IpAddr::V4(text.parse().unwrap());
        let v6 = |text: &str| IpAddr::V6(text.parse().unwrap());
        let on_eth0 = Reach::OnLink("eth0".to_owned());
        assert_eq!(routes.reach(v4("10.1.0.11")), on_eth0);
        assert_eq!(
            routes.reach(v4("10.2.0.5")),
            Reach::Gateway(v4("10.1.0.11"))
        );
        assert_eq!(
            routes.reach(v4("192.0.2.1")),
            Reach::Gateway(v4("10.1.1.1"))
        );
        // A route that is not up does not count: the default route takes it.
        assert_eq!(routes.reach(v4("10.3.0.1")), Reach::Gateway(v4("10.1.1.1")));
        assert_eq!(routes.reach(v6("2001:db8:1::11")), on_eth0);
        assert_eq!(
            routes.reach(v6("2001:db8:9::1")),
            Reach::Gateway(v6("2001:db8:1::1"))
        );
        assert_eq!(
            Routes::parse(V4, "").reach(v6("2001:db8:1::11")),
            Reach::Unreachable
        );
    }
}
