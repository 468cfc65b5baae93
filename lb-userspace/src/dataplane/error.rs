//! What can go wrong loading, attaching and programming the data path.

use std::{net::IpAddr, path::PathBuf};

use aya::programs::ProgramError;
use lb_common::{MAX_BACKENDS, MAX_SERVICES};

use super::MIN_FLOWS;
use crate::{maglev, maps::MapsError, pins::PinsError};

#[derive(thiserror::Error, Debug)]
pub enum DataplaneError {
    #[error("loading the XDP program: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP program: {0}")]
    Program(#[source] ProgramError),
    #[error("the object has no program {0}")]
    MissingProgram(&'static str),
    #[error("{0}: the kernel reports no count of the instructions its verifier processed")]
    NoVerifiedCount(&'static str),
    #[error("the tick length for the data path's clock (clock_getres): {0}")]
    ClockResolution(#[source] std::io::Error),
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("attaching XDP to {iface}: {source}")]
    Attach {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("maglev: {0}")]
    Maglev(#[from] maglev::MaglevError),
    #[error("ring size {0} must be a prime")]
    RingSize(u32),
    #[error("max services {0} must be between 1 and {MAX_SERVICES}")]
    MaxServices(u32),
    #[error("max flows {0} must be at least {MIN_FLOWS}")]
    MaxFlows(u32),
    #[error(
        "ring size {ring_size} x max services {max_services} x 2 slots exceeds the u32 index space"
    )]
    TooLarge { ring_size: u32, max_services: u32 },
    #[error("no room for another service (max services {0})")]
    ServicesFull(u32),
    #[error("no room for another backend ({MAX_BACKENDS} in use)")]
    BackendsFull,
    #[error(
        "{frontend}: backend {backend} is of the other address family (lb does not translate \
         between IPv4 and IPv6)"
    )]
    MixedFamilies { frontend: String, backend: IpAddr },
    #[error(transparent)]
    Pins(#[from] PinsError),
    #[error("pinning the link of {iface} at {}: {source}", path.display())]
    PinLink {
        iface: String,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("the XDP link of {iface}: {source}")]
    Link {
        iface: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("reusing the pinned link {}: {source}", path.display())]
    ReuseLink {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the pinned state has {pinned} Maglev entries, this agent needs {wanted} \
         (--ring-size {ring_size} x --max-services {max_services} x 2): restart with the \
         settings the state was created with, or run `lb down` first (flows are lost)"
    )]
    ConfigMismatch {
        pinned: u32,
        wanted: u32,
        ring_size: u32,
        max_services: u32,
    },
    #[error(
        "more than {0} interfaces: a VIP's mask of the interfaces answering ARP and NDP for it \
         has room for {0}"
    )]
    TooManyInterfaces(u8),
    #[error("more than {0} interfaces to redirect packets to")]
    TooManyEgressPorts(u32),
    #[error("counting CPUs: {0}")]
    Cpus(#[source] std::io::Error),
}
