//! `cargo xtask test`: the checks CI runs, in order, stopping at the first failure.

use anyhow::{Context as _, Result};

use crate::{
    setup,
    util::{self, cmd},
};

/// One check: a name for messages and the cargo arguments that run it.
struct Step {
    name: &'static str,
    cargo_args: &'static [&'static str],
}

const STEPS: &[Step] = &[
    Step {
        name: "rustfmt",
        cargo_args: &["fmt", "--all", "--", "--check"],
    },
    Step {
        name: "clippy (workspace)",
        cargo_args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    },
    Step {
        name: "clippy (eBPF crate)",
        cargo_args: &[
            "+nightly",
            "clippy",
            "-p",
            "lb-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            "target/ebpf-clippy",
            "--",
            "-D",
            "warnings",
        ],
    },
    Step {
        name: "tests",
        cargo_args: &["test", "--workspace"],
    },
];

pub fn run() -> Result<()> {
    setup::run().context("setup failed")?;
    util::require_root("test")?;
    for (index, step) in STEPS.iter().enumerate() {
        let mut command = cmd("cargo");
        command.args(step.cargo_args);
        println!(
            "==> [{}/{}] {}: {}",
            index + 1,
            STEPS.len(),
            step.name,
            util::display(&command)
        );
        util::run(&mut command).with_context(|| format!("step `{}` failed", step.name))?;
    }
    println!("==> all {} steps passed", STEPS.len());
    Ok(())
}
