//! `cargo xtask bench`: builds the release binaries and runs `lb-bench`.

use anyhow::{Context as _, Result};

use crate::{setup, util};

/// Returns `lb-bench`'s exit code.
pub fn run(args: &[String]) -> Result<u8> {
    setup::run().context("setup failed")?;
    util::require_root("bench")?;
    util::run_release_bin("lb-bench", args)
}
