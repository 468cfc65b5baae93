//! Developer tasks for lb, run as `cargo xtask <COMMAND>` from anywhere in the workspace.

mod bench;
mod demo;
mod fuzz;
mod package;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Developer tasks for lb.
///
/// Every task but `setup` runs `setup` first. Run them as root: `test`, `demo` and `bench`
/// create network namespaces and load XDP programs.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks to build, test, demo and benchmark lb
    ///
    /// Installs the missing Debian packages (required: iproute2 ethtool iputils-ping curl
    /// procps util-linux bird2 iptables; for benchmarks, where a failure is only a warning:
    /// netcat-openbsd nftables haproxy wrk iperf3 bpftool hping3), the components rustfmt and
    /// clippy of the workspace's (default) toolchain, the nightly components rust-src and clippy,
    /// bpf-linker 0.13.0 built against nightly's libLLVM (again when `rustup run nightly
    /// bpf-linker --version` fails, as after `rustup update nightly`), and cargo-deb 3.8.0;
    /// mounts bpffs at /sys/fs/bpf.
    /// Idempotent, and silent when nothing is missing. Installing packages and mounting bpffs
    /// need root.
    Setup,
    /// Run the checks CI runs: rustfmt, clippy, clippy on the eBPF crate, tests
    ///
    /// Runs setup, then in order, stopping at the first failure:
    /// `cargo fmt --all -- --check`,
    /// `cargo clippy --workspace --all-targets -- -D warnings`,
    /// `cargo +nightly clippy -p lb-ebpf --target bpfel-unknown-none -Z build-std=core` (with
    /// `-D warnings`), and `cargo test --workspace`; then builds the Debian package from the
    /// debug binary and checks it (contents, control fields, conffiles, the prerm run against
    /// stubs of `lb` and `deb-systemd-invoke` (on `remove`: the unit stopped, then `lb down` with
    /// the config file's bpffs; on `upgrade`: neither), `lb --version` of the unpacked binary,
    /// `systemd-analyze verify` of the unit where systemd is present). Needs root.
    ///
    /// With `--fuzz`, then runs every cargo-fuzz target under fuzz/ for a bounded time
    /// (`cargo +nightly fuzz run TARGET -- -max_total_time=SECONDS`), installing g++ (for
    /// libFuzzer) and cargo-fuzz first if they are missing.
    Test {
        /// Also run the fuzz targets, each for --fuzz-seconds
        #[arg(long)]
        fuzz: bool,
        /// How long each fuzz target runs
        #[arg(long, value_name = "SECONDS", default_value_t = 30, requires = "fuzz")]
        fuzz_seconds: u32,
    },
    /// Build the Debian package of lb (cargo-deb) and print its path
    ///
    /// Runs setup, `cargo build --release -p lb-userspace`, writes the man pages and the bash,
    /// zsh and fish completions the built `lb` prints, then `cargo deb --no-build`: /usr/bin/lb,
    /// the systemd unit lb.service (deploy/debian), the commented default /etc/lb/lb.yaml (a
    /// conffile), the man pages and completions; checks it as `cargo xtask test` does. The .deb
    /// lands in target/release/package/deb/.
    Package,
    /// Build the release binaries and run the demo (lb-demo)
    ///
    /// Runs setup, `cargo build --release -p lb-userspace -p lb-tests --bins`, then
    /// `target/release/lb-demo ARGS...`, and exits with its exit code. Needs root.
    Demo {
        /// Arguments for lb-demo (`cargo xtask demo -- --help` shows its help)
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Build the release binaries and run the benchmarks (lb-bench)
    ///
    /// Runs setup, `cargo build --release -p lb-userspace -p lb-tests --bins`, then
    /// `target/release/lb-bench ARGS...`, and exits with its exit code. Needs root.
    Bench {
        /// Arguments for lb-bench (`cargo xtask bench -- --help` shows its help)
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run().map(|()| 0),
        Command::Test { fuzz, fuzz_seconds } => test::run(fuzz.then_some(fuzz_seconds)).map(|()| 0),
        Command::Package => package::run().map(|()| 0),
        Command::Demo { args } => demo::run(&args),
        Command::Bench { args } => bench::run(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
