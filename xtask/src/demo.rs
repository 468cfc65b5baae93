//! `cargo xtask demo`: builds the release binaries and runs `lb-demo`.

use anyhow::{Context as _, Result};

use crate::{setup, util};

/// Returns `lb-demo`'s exit code.
pub fn run(args: &[String]) -> Result<u8> {
    setup::run().context("setup failed")?;
    util::require_root("demo")?;
    util::run_release_bin("lb-demo", args)
}
