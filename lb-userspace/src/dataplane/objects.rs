//! The eBPF objects `build.rs` builds: the data path, and the programs
//! that test beds and benchmarks measure it against.

/// The XDP object built by `build.rs`.
pub static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// Reference XDP programs: `ref_xdp_tx` and `ref_parse_only`, which benchmarks
/// measure lb against in the same run, and `ref_pass` for test beds' veth peers.
pub static REFERENCE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/references"));

/// Attribution programs for the benchmark: one FIB lookup, one clock read,
/// one LRU insert, one hash lookup each (see `lb-ebpf/src/attribution.rs`).
pub static ATTRIBUTION_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/attribution"));
