//! The real `lb` binary run as an agent inside a namespace, and the CLI used to
//! ask it what it programmed.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::netns::{ChildGuard, NetNs};

static NEXT_PIN_DIR: AtomicU32 = AtomicU32::new(0);

/// The `lb` binary: `$LB_BIN`, else next to the running test executable
/// (`target/<profile>/lb`, built by `cargo xtask test` / `demo`).
pub fn lb_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("LB_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("lb");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the lb binary is not built next to {}: run `cargo build -p lb-userspace --bins` (cargo xtask test does) or set LB_BIN",
        exe.display()
    )
}

/// A running agent; stopping it (SIGTERM on drop) detaches the program.
pub struct Agent {
    /// `Some` until drop, which stops the process before cleaning its pins.
    child: Option<ChildGuard>,
    bpffs: PathBuf,
}

impl Agent {
    /// Starts `lb agent` in `ns` on `interfaces`, reading `manifests`.
    pub fn start(
        ns: &NetNs,
        interfaces: &[&str],
        manifests: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let bpffs = PathBuf::from(format!(
            "/sys/fs/bpf/lb-test-{}-{}",
            std::process::id(),
            NEXT_PIN_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let mut args: Vec<String> = vec!["agent".into()];
        for iface in interfaces {
            args.extend(["--iface".into(), (*iface).into()]);
        }
        args.extend([
            "--manifests".into(),
            manifests.display().to_string(),
            "--bpffs".into(),
            bpffs.display().to_string(),
        ]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let child = ns.spawn(lb_binary()?, &args)?;
        Ok(Self {
            child: Some(child),
            bpffs,
        })
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    pub fn log(&self) -> String {
        self.child.as_ref().map(ChildGuard::log).unwrap_or_default()
    }

    /// Sends `signal` to the agent (SIGHUP re-reads the manifests).
    pub fn signal(&self, signal: i32) -> Result<()> {
        match &self.child {
            Some(child) => child.signal(signal),
            None => Ok(()),
        }
    }

    /// Runs `lb <command> --json` against this agent's pins.
    pub fn query(&self, command: &str) -> Result<Value> {
        let output = Command::new(lb_binary()?)
            .args([command, "--json", "--bpffs"])
            .arg(&self.bpffs)
            .output()
            .with_context(|| format!("running lb {command}"))?;
        if !output.status.success() {
            bail!(
                "lb {command} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        serde_json::from_slice(&output.stdout)
            .with_context(|| format!("parsing lb {command} --json"))
    }

    /// Waits until `ready` holds for `lb backends --json`, e.g. until every
    /// service has its backends.
    pub fn wait_for_backends(
        &self,
        timeout: Duration,
        ready: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Value::Array(rows)) = self.query("backends")
                && ready(&rows)
            {
                return Ok(rows);
            }
            if Instant::now() > deadline {
                bail!(
                    "agent not ready after {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Stopping the agent (SIGTERM, then SIGKILL) lets it unpin; pins a
        // killed agent left behind are removed here so bpffs is left as it was.
        drop(self.child.take());
        if let Ok(entries) = std::fs::read_dir(&self.bpffs) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.bpffs);
    }
}

/// Rows of `lb backends --json` for one service (`vip:port/proto`).
pub fn backends_of<'a>(rows: &'a [Value], service: &str) -> Vec<&'a Value> {
    rows.iter()
        .filter(|row| row["service"].as_str() == Some(service))
        .collect()
}
