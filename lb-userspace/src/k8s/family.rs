//! IP families, as Kubernetes names them in `spec.ipFamilies`.

use std::{fmt, net::IpAddr};

/// An IP family. IPv4 sorts first, as `IpAddr` does, so VIPs listed in
/// address order come IPv4 first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// The family of a `spec.ipFamilies` entry (`IPv4`, `IPv6`).
    pub fn from_kubernetes(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|family| family.to_string() == name)
    }

    pub fn other(self) -> Self {
        match self {
            Self::V4 => Self::V6,
            Self::V6 => Self::V4,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}
