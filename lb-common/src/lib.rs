//! Types and constants shared by the XDP data path (`lb-ebpf`) and userspace.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding so the kernel and
//! userspace agree byte for byte. Addresses and ports are kept in network byte
//! order, exactly as they appear in packets, so the data path never converts.
#![no_std]

pub mod checksum;
pub mod clock;
pub mod counters;
pub mod family;
pub mod hash;
pub mod maps;

pub use clock::{DataPathClock, TickClock};
pub use family::*;
pub use maps::*;
