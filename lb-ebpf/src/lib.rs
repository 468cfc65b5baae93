#![no_std]
// The program itself lives in `main.rs`; this library target only lets
// `cargo` resolve the crate on the host.
