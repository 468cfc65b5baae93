//! Running commands, and facts about the workspace and the machine.

use std::{
    env,
    ffi::OsString,
    fs,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (the directory above `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The directory cargo puts build output in: `$CARGO_TARGET_DIR` or `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// `$HOME`, which setup needs for `~/.cargo/bin` and the LLVM prefix.
pub fn home() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .context("$HOME is not set")
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin` (if set) and `$HOME/.cargo/bin`.
fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(cargo_home) = env::var_os("CARGO_HOME").filter(|dir| !dir.is_empty()) {
        dirs.push(PathBuf::from(cargo_home).join("bin"));
    }
    if let Ok(home) = home() {
        let dir = home.join(".cargo").join("bin");
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// `$PATH` with the cargo bin directories in front (those missing from it).
fn child_path() -> OsString {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect())
        .unwrap_or_default();
    for dir in cargo_bin_dirs().into_iter().rev() {
        if !dirs.contains(&dir) {
            dirs.insert(0, dir);
        }
    }
    env::join_paths(dirs).unwrap_or_else(|_| env::var_os("PATH").unwrap_or_default())
}

/// A command that runs in the workspace root with `~/.cargo/bin` on its `PATH` and otherwise
/// the environment of xtask, less the toolchain that rustup's proxy pinned for xtask itself
/// (so that `cargo +nightly xtask ...` does not run every child on nightly, and a
/// `rust-toolchain.toml` would still count).
pub fn cmd(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command
        .current_dir(workspace_root())
        .env("PATH", child_path())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTUP_TOOLCHAIN_SOURCE");
    command
}

/// The command line as a shell would take it, with the variables set for it (but `PATH`).
pub fn display(command: &Command) -> String {
    let envs = command.get_envs().filter_map(|(key, value)| {
        let value = value?;
        (key != "PATH").then(|| {
            format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            )
        })
    });
    let words = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| quote(&word.to_string_lossy()));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=+:,@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `command` with the terminal as its stdin/stdout/stderr and returns its exit status.
pub fn status(command: &mut Command) -> Result<ExitStatus> {
    command
        .status()
        .with_context(|| format!("could not start `{}`", display(command)))
}

/// Runs `command` with the terminal as its stdin/stdout/stderr; fails unless it succeeds.
pub fn run(command: &mut Command) -> Result<()> {
    let status = status(command)?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(command));
    }
    Ok(())
}

/// Runs `command` with its output captured, and prints that output only if it fails.
pub fn run_quiet(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("could not start `{}`", display(command)))?;
    if !output.status.success() {
        eprint!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        bail!("`{}` failed ({})", display(command), output.status);
    }
    Ok(())
}

/// Runs `command` and returns its stdout; fails (with its stderr) unless it succeeds.
pub fn stdout(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("could not start `{}`", display(command)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout)
        .with_context(|| format!("`{}` printed invalid UTF-8", display(command)))
}

/// A process's exit status as a shell reports it: the exit code, or 128 + the signal number.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// Whether this process runs with effective user id 0.
pub fn is_root() -> Result<bool> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("no effective uid in /proc/self/status")?;
    Ok(euid == "0")
}

/// Fails with a clear message unless this process runs as root.
pub fn require_root(task: &str) -> Result<()> {
    if !is_root()? {
        bail!(
            "`cargo xtask {task}` must run as root (it creates network namespaces and loads XDP \
             programs); run it as root, e.g. `sudo -E env PATH=\"$PATH\" cargo xtask {task}`"
        );
    }
    Ok(())
}

/// Builds the release binaries of lb-userspace and lb-tests, then runs `target/release/<bin>`
/// with `args` and returns its exit code.
pub fn run_release_bin(bin: &str, args: &[String]) -> Result<u8> {
    run(cmd("cargo").args([
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "-p",
        "lb-tests",
        "--bins",
    ]))
    .context("building the release binaries")?;
    let path = target_dir().join("release").join(bin);
    if !path.is_file() {
        bail!(
            "the build succeeded but made no {}: is the `{bin}` binary declared in \
             tests/Cargo.toml (package lb-tests)?",
            path.display()
        );
    }
    let mut command = cmd(&path);
    command.args(args);
    let status = status(&mut command)?;
    if !status.success() {
        eprintln!("xtask: `{}` exited with {status}", display(&command));
    }
    Ok(exit_code(status))
}
