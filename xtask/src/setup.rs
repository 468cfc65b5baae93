//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks. Prints nothing when
//! everything is there already.

use std::{fs, io, os::unix::fs::symlink, path::PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, cmd};

/// Debian packages the tests and the demo cannot do without.
pub const REQUIRED_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "iputils-ping",
    "curl",
    // sysctl, and nsenter/setpriv for the test beds.
    "procps",
    "util-linux",
    // `--announce bgp` runs BIRD; the BGP tests' router runs one too.
    "bird2",
    // The nodes of the multi-host tests DNAT like kube-proxy, with iptables.
    "iptables",
    // The agent's allocator, jemalloc, is C built with make.
    "make",
];

/// Debian packages the benchmarks (and some comparisons) use. Failing to install one of them
/// is a warning, and one that the archive does not have is skipped.
pub const BENCH_PACKAGES: &[&str] = &[
    "netcat-openbsd",
    "nftables",
    "haproxy",
    "wrk",
    "iperf3",
    "bpftool",
    "hping3",
];

/// Debian packages fuzzing needs: libfuzzer-sys compiles libFuzzer, which is C++.
const FUZZ_PACKAGES: &[&str] = &["g++"];

/// Components of the nightly toolchain: `rust-src` for `-Z build-std=core`, `clippy` for
/// linting the eBPF crate.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];

/// Components of the toolchain cargo uses in the workspace (the default one, stable, unless an
/// override says otherwise): `cargo xtask test` runs `cargo fmt` and `cargo clippy` on it.
/// rustup's `minimal` profile has neither.
const DEFAULT_COMPONENTS: &[&str] = &["rustfmt", "clippy"];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// cargo-deb, for `cargo xtask package`: 3.8.0 builds with the stable toolchain here.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Where setup links nightly's libLLVM so that bpf-linker can be built against it.
const LLVM_PREFIX: &str = ".local/lb-llvm";

const BPFFS: &str = "/sys/fs/bpf";

pub fn run() -> Result<()> {
    let root = util::is_root()?;
    apt_packages(root).context("installing Debian packages")?;
    components(None, DEFAULT_COMPONENTS)
        .context("installing components of the workspace's (default) toolchain")?;
    components(Some("nightly"), NIGHTLY_COMPONENTS)
        .context("installing nightly toolchain components")?;
    bpf_linker().context("installing bpf-linker")?;
    cargo_deb().context("installing cargo-deb")?;
    bpffs(root).context("mounting bpffs")?;
    Ok(())
}

fn apt_packages(root: bool) -> Result<()> {
    let missing_required = missing_packages(REQUIRED_PACKAGES)?;
    let missing_bench = missing_packages(BENCH_PACKAGES)?;
    if missing_required.is_empty() && missing_bench.is_empty() {
        return Ok(());
    }

    // A bench package that the current package lists do not have is skipped without another
    // `apt-get update`, so that setup stays quiet on archives that lack it.
    let (mut bench_todo, mut unavailable) = (Vec::new(), Vec::new());
    let lists = apt_lists_present();
    for package in missing_bench {
        if lists && !has_candidate(package)? {
            unavailable.push(package);
        } else {
            bench_todo.push(package);
        }
    }

    if !missing_required.is_empty() || !bench_todo.is_empty() {
        if !root {
            if !missing_required.is_empty() {
                bail!(
                    "required Debian packages are missing: {}; installing them needs root: run \
                     `cargo xtask setup` as root, or `apt-get install {}`",
                    missing_required.join(" "),
                    missing_required.join(" ")
                );
            }
            eprintln!(
                "setup: warning: not root, so not installing bench packages: {}",
                bench_todo.join(" ")
            );
        } else {
            install_packages(&missing_required, &mut bench_todo, &mut unavailable)?;
        }
    }
    if !unavailable.is_empty() {
        eprintln!(
            "setup: warning: not in the Debian archive, skipped: {}",
            unavailable.join(" ")
        );
    }
    Ok(())
}

/// Installs what `cargo xtask test --fuzz` needs beyond `run`: a C++ compiler for libFuzzer
/// and cargo-fuzz. Silent when both are there.
pub fn fuzzing() -> Result<()> {
    let missing = missing_packages(FUZZ_PACKAGES)?;
    if !missing.is_empty() {
        if !util::is_root()? {
            bail!(
                "fuzzing needs {}; installing it needs root: `apt-get install {}`",
                missing.join(" "),
                missing.join(" ")
            );
        }
        println!("setup: apt-get update");
        util::run_quiet(cmd("apt-get").args(["update", "-qq"]))?;
        println!("setup: installing {}", missing.join(" "));
        apt_install(&missing)?;
    }
    // Any cargo-fuzz on PATH will do, however it was installed.
    let present = cmd("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !present {
        println!("setup: cargo install cargo-fuzz --locked (takes a minute)");
        util::run(cmd("cargo").args(["install", "--quiet", "--locked", "cargo-fuzz"]))?;
    }
    Ok(())
}

fn install_packages(
    required: &[&'static str],
    bench: &mut Vec<&'static str>,
    unavailable: &mut Vec<&'static str>,
) -> Result<()> {
    println!("setup: apt-get update");
    let update = util::run_quiet(cmd("apt-get").args(["update", "-qq"]));
    if let Err(err) = update {
        if !required.is_empty() {
            return Err(err);
        }
        eprintln!("setup: warning: {err:#}; not installing bench packages");
        return Ok(());
    }

    let unknown: Vec<&str> = required
        .iter()
        .copied()
        .filter(|package| !has_candidate(package).unwrap_or(false))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "required Debian packages are not in the archive: {}",
            unknown.join(" ")
        );
    }
    let mut keep = Vec::new();
    for package in bench.drain(..) {
        if has_candidate(package)? {
            keep.push(package);
        } else {
            unavailable.push(package);
        }
    }
    *bench = keep;

    if !required.is_empty() {
        println!("setup: installing {}", required.join(" "));
        apt_install(required)?;
    }
    if !bench.is_empty() {
        println!("setup: installing {}", bench.join(" "));
        if let Err(err) = apt_install(bench) {
            // Find out which ones fail, so that the others are there.
            eprintln!("setup: warning: {err:#}; installing one by one");
            for package in bench.iter() {
                if let Err(err) = apt_install(&[package]) {
                    eprintln!("setup: warning: bench package {package} not installed: {err:#}");
                }
            }
        }
    }
    Ok(())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    util::run_quiet(
        cmd("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages),
    )
}

/// The packages of `packages` that dpkg does not have installed.
fn missing_packages(packages: &[&'static str]) -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for &package in packages {
        let output = cmd("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .output()
            .context("could not run dpkg-query (setup supports Debian only)")?;
        // "install ok installed"; "deinstall ok config-files" and friends are not installed.
        let status = String::from_utf8_lossy(&output.stdout);
        let installed =
            output.status.success() && status.split_whitespace().nth(2) == Some("installed");
        if !installed {
            missing.push(package);
        }
    }
    Ok(missing)
}

/// Whether apt has downloaded package lists at all (a fresh container may have none).
fn apt_lists_present() -> bool {
    fs::read_dir("/var/lib/apt/lists").is_ok_and(|entries| {
        entries
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().contains("_Packages"))
    })
}

/// Whether the package lists offer a version of `package`.
fn has_candidate(package: &str) -> Result<bool> {
    let policy = util::stdout(cmd("apt-cache").args(["policy", package]))?;
    Ok(policy.lines().any(|line| {
        line.trim()
            .strip_prefix("Candidate:")
            .is_some_and(|candidate| candidate.trim() != "(none)")
    }))
}

/// Adds the components of `wanted` that `toolchain` lacks; `None` is the toolchain cargo uses in
/// the workspace root (rustup's default unless an override or `rust-toolchain.toml` says
/// otherwise), as `cargo fmt` and `cargo clippy` there do.
fn components(toolchain: Option<&str>, wanted: &[&str]) -> Result<()> {
    let with_toolchain = |command: &mut std::process::Command| {
        if let Some(toolchain) = toolchain {
            command.args(["--toolchain", toolchain]);
        }
    };
    let mut list = cmd("rustup");
    list.args(["component", "list", "--installed"]);
    with_toolchain(&mut list);
    let installed = util::stdout(&mut list).with_context(|| match toolchain {
        Some(toolchain) => {
            format!("is the {toolchain} toolchain installed? (`rustup toolchain list`)")
        }
        None => "is there a default toolchain? (`rustup show`)".to_owned(),
    })?;
    // Lines are like "rust-src" or "clippy-x86_64-unknown-linux-gnu".
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|component| {
            !installed.lines().any(|line| {
                let line = line.trim();
                line == *component
                    || line
                        .strip_prefix(component)
                        .is_some_and(|target| target.starts_with('-'))
            })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "setup: rustup component add {} ({})",
        missing.join(" "),
        toolchain.unwrap_or("the workspace's toolchain")
    );
    let mut add = cmd("rustup");
    add.args(["component", "add"]).args(&missing);
    with_toolchain(&mut add);
    util::run(&mut add)
}

/// Whether `cargo install --list` has `crate_name` at `version`.
fn installed(crate_name: &str, version: &str) -> Result<bool> {
    let installed = util::stdout(cmd("cargo").args(["install", "--list"]))?;
    let wanted = format!("{crate_name} v{version}");
    Ok(installed
        .lines()
        .any(|line| line.split(':').next() == Some(wanted.as_str())))
}

fn cargo_deb() -> Result<()> {
    if installed("cargo-deb", CARGO_DEB_VERSION)? {
        return Ok(());
    }
    println!("setup: cargo install cargo-deb {CARGO_DEB_VERSION} --locked (takes two minutes)");
    util::run(cmd("cargo").args([
        "install",
        "--quiet",
        "--locked",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
    ]))
}

/// Whether bpf-linker runs as the eBPF build runs it, and is the version setup installs:
/// aya-build runs `rustup run nightly cargo build` for lb-ebpf, and nightly's rustc then runs
/// `bpf-linker` from `PATH` in that environment, where rustup has put nightly's lib directory on
/// `LD_LIBRARY_PATH`. That is where the libLLVM bpf-linker was linked against comes from; after
/// `rustup update nightly` it has another name, and the binary no longer starts. `Err` says why.
fn bpf_linker_runs() -> Result<(), String> {
    let mut command = cmd("rustup");
    command.args(["run", "nightly", "bpf-linker", "--version"]);
    let output = command
        .output()
        .map_err(|err| format!("could not start `{}`: {err}", util::display(&command)))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    if output.status.success() && stdout.trim() == wanted {
        return Ok(());
    }
    Err(format!(
        "`{}` {}: {}",
        util::display(&command),
        if output.status.success() {
            format!("did not print {wanted:?}")
        } else {
            format!("failed ({})", output.status)
        },
        [
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ]
        .join(" ")
        .trim()
    ))
}

fn bpf_linker() -> Result<()> {
    let listed = installed("bpf-linker", BPF_LINKER_VERSION)?;
    if listed {
        match bpf_linker_runs() {
            Ok(()) => return Ok(()),
            Err(why) => println!("setup: bpf-linker does not run: {why}; building it again"),
        }
    }

    // bpf-linker links LLVM dynamically; Debian 12 has no LLVM 22, but nightly ships one as
    // `lib/libLLVM.so.<version>` in its sysroot. Link it as `<prefix>/lib/libLLVM.so`.
    let sysroot = util::stdout(cmd("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let mut candidates: Vec<String> = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("libLLVM.so."))
        .collect();
    candidates.sort();
    let Some(libllvm) = candidates.pop() else {
        bail!("no libLLVM.so.* in {}", lib_dir.display());
    };
    let major: String = libllvm["libLLVM.so.".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if major.is_empty() {
        bail!("cannot tell the LLVM version of {libllvm}");
    }

    let prefix = util::home()?.join(LLVM_PREFIX);
    let link = prefix.join("lib").join("libLLVM.so");
    fs::create_dir_all(prefix.join("lib"))
        .with_context(|| format!("creating {}", prefix.join("lib").display()))?;
    match fs::remove_file(&link) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("removing {}", link.display()));
        }
        _ => {}
    }
    symlink(lib_dir.join(&libllvm), &link)
        .with_context(|| format!("linking {}", link.display()))?;

    println!(
        "setup: cargo install bpf-linker {BPF_LINKER_VERSION} against {} (takes a minute)",
        lib_dir.join(&libllvm).display()
    );
    let install = |locked: bool| {
        let mut command = cmd("cargo");
        command
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "--quiet",
                // Replaces a bpf-linker of this version that no longer runs: cargo would
                // otherwise answer that it is installed already.
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"));
        if locked {
            command.arg("--locked");
        }
        util::run(&mut command)
    };
    if let Err(err) = install(true) {
        eprintln!("setup: warning: {err:#}; retrying without --locked");
        install(false)?;
    }
    // Not installed again on every run when reinstalling does not help.
    bpf_linker_runs()
        .map_err(|why| anyhow::anyhow!("the bpf-linker just installed does not run: {why}"))
}

fn bpffs(root: bool) -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    });
    if mounted {
        return Ok(());
    }
    if !root {
        bail!(
            "bpffs is not mounted at {BPFFS}, and mounting it needs root: run `cargo xtask setup` as root, or `mount -t bpf bpf {BPFFS}`"
        );
    }
    println!("setup: mount -t bpf bpf {BPFFS}");
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    util::run(cmd("mount").args(["-t", "bpf", "bpf", BPFFS]))
}
