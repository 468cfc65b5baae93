//! `cargo xtask test`: the checks CI runs, in order, stopping at the first failure.

use anyhow::{Context as _, Result};

use crate::{
    fuzz,
    package::{self, Profile},
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
    // lb-ebpf only builds for the BPF target; the next step lints it there.
    Step {
        name: "clippy (workspace)",
        cargo_args: &[
            "clippy",
            "--workspace",
            "--exclude",
            "lb-ebpf",
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
    // The integration tests run the real `lb` binary.
    Step {
        name: "binaries",
        cargo_args: &["build", "--workspace", "--exclude", "lb-ebpf", "--bins"],
    },
    Step {
        name: "tests",
        cargo_args: &["test", "--workspace", "--exclude", "lb-ebpf"],
    },
];

/// Runs the steps, then, with `fuzz_seconds`, every fuzz target for that long.
pub fn run(fuzz_seconds: Option<u32>) -> Result<()> {
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
    // The package of the binary the steps built: quick, and it checks the
    // packaging itself, which the release package shares.
    println!("==> [package] cargo deb of target/debug/lb, then its checks");
    package::check(&package::build(Profile::Dev)?).context("step `package` failed")?;
    println!("==> all {} steps and the package check passed", STEPS.len());
    if let Some(seconds) = fuzz_seconds {
        fuzz::run(seconds).context("fuzzing failed")?;
    }
    Ok(())
}
