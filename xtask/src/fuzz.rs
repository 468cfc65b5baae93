//! `cargo xtask test --fuzz`: every cargo-fuzz target under `fuzz/`, each for a bounded time.

use anyhow::{Context as _, Result, bail};

use crate::{
    setup,
    util::{self, cmd},
};

/// Where the fuzz targets live, relative to the workspace root.
const FUZZ_DIR: &str = "fuzz";

/// Longest one input may take before libFuzzer reports it as a hang.
const INPUT_TIMEOUT_SECONDS: u32 = 10;

/// Seed inputs per target, besides its own corpus under `fuzz/corpus/`: real manifests and
/// real command lines (arguments separated by NUL) start the fuzzer far deeper than empty
/// input does.
const SEEDS: &[(&str, &str)] = &[("manifests", "examples"), ("cli", "fuzz/seeds/cli")];

pub fn run(seconds: u32) -> Result<()> {
    setup::fuzzing().context("installing what fuzzing needs")?;
    let listed =
        util::stdout(cmd("cargo").args(["+nightly", "fuzz", "list", "--fuzz-dir", FUZZ_DIR]))?;
    let targets: Vec<&str> = listed.split_whitespace().collect();
    if targets.is_empty() {
        bail!("`cargo fuzz list` found no targets in {FUZZ_DIR}/");
    }
    for (index, target) in targets.iter().enumerate() {
        let corpus = format!("{FUZZ_DIR}/corpus/{target}");
        std::fs::create_dir_all(util::workspace_root().join(&corpus))
            .with_context(|| format!("creating {corpus}"))?;
        let mut command = cmd("cargo");
        command
            .args(["+nightly", "fuzz", "run", "--fuzz-dir", FUZZ_DIR, target])
            // The first corpus directory collects new inputs; the others only seed.
            .arg(&corpus)
            .args(
                SEEDS
                    .iter()
                    .filter(|(seeded, _)| seeded == target)
                    .map(|(_, dir)| *dir),
            )
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // One input running this long is a hang (libFuzzer's default allows 20 minutes).
            .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"));
        println!(
            "==> [fuzz {}/{}] {target} for {seconds} s: {}",
            index + 1,
            targets.len(),
            util::display(&command)
        );
        util::run(&mut command).with_context(|| {
            format!("fuzz target `{target}` failed: the input that failed is under {FUZZ_DIR}/artifacts/{target}/")
        })?;
    }
    println!(
        "==> all {} fuzz targets ran {seconds} s without a failure",
        targets.len()
    );
    Ok(())
}
