//! Arbitrary command lines through lb's argument parser, then through the
//! parsing `lb agent` does on its flag values (VIP pools): bad input must end
//! in an error, never a panic.
#![no_main]

use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _};

use clap::Parser as _;
use lb::{
    cli::{Cli, Command},
    k8s::pools::{Pool, Pools},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // NUL separates the arguments, which cannot contain one; anything else,
    // invalid UTF-8 included, can reach lb from a shell.
    let args = data.split(|&byte| byte == 0).map(OsStr::from_bytes);
    let Ok(cli) = Cli::try_parse_from(std::iter::once(OsStr::new("lb")).chain(args)) else {
        return;
    };
    if let Command::Agent(agent) = cli.command {
        // As `lb agent` builds its pools (lb-userspace/src/main.rs).
        let mut pools = Vec::new();
        pools.extend(
            agent
                .vip_pool
                .and_then(|cidr| Pool::from_cidr("default", &cidr).ok()),
        );
        pools.extend(agent.pools.iter().filter_map(|text| Pool::parse(text).ok()));
        let _ = Pools::new(pools);
    }
});
