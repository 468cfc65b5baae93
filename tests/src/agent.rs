//! The real `lb` binary run as an agent inside a namespace, and the CLI used to
//! ask it what it programmed.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::netns::{ChildGuard, NetNs};

static NEXT_PIN_DIR: AtomicU32 = AtomicU32::new(0);

/// The flags of an agent with direct server return that announces nothing
/// and checks no health: for beds that route the VIPs statically.
pub const QUIET_DSR: [&str; 6] = [
    "--forwarding",
    "dsr",
    "--announce",
    "none",
    "--health-interval",
    "0",
];

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

/// A running agent. Dropping it stops the process (SIGTERM) and then removes
/// the state it pinned (`lb down`), which detaches the program.
pub struct Agent {
    /// `None` while stopped (see `kill`), and during drop.
    child: Option<ChildGuard>,
    bpffs: PathBuf,
    args: Vec<String>,
    /// Where the extra arguments start in `args`.
    extra_at: usize,
}

impl Agent {
    /// Starts `lb agent` in `ns` on `interfaces`, reading `manifests`.
    pub fn start(
        ns: &NetNs,
        interfaces: &[&str],
        manifests: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let manifests = manifests.display().to_string();
        Self::start_from(ns, interfaces, &["--manifests", &manifests], extra)
    }

    /// Starts `lb agent` in `ns` on `interfaces`, reading the objects from
    /// `source` (`--manifests PATH`, `--kubeconfig PATH`).
    pub fn start_from(
        ns: &NetNs,
        interfaces: &[&str],
        source: &[&str],
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
        args.extend(source.iter().map(|s| (*s).to_owned()));
        args.extend(["--bpffs".into(), bpffs.display().to_string()]);
        let extra_at = args.len();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let child = ns.spawn(lb_binary()?, &args)?;
        Ok(Self {
            child: Some(child),
            bpffs,
            args,
            extra_at,
        })
    }

    /// Kills the agent with SIGKILL: no chance to clean up, as in a crash.
    /// An agent that exited already is only forgotten.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(child) = self.child.take()
            && child.exit_status().is_none()
        {
            child.signal(libc::SIGKILL)?;
        }
        Ok(())
    }

    /// Starts the agent again, same arguments, after `kill`.
    pub fn restart(&mut self, ns: &NetNs) -> Result<()> {
        self.kill()?;
        self.child = Some(ns.spawn(lb_binary()?, &self.args)?);
        Ok(())
    }

    /// Starts the agent again after `kill`, with `extra` in place of the
    /// extra arguments it had (same interfaces, source and pins).
    pub fn restart_with(&mut self, ns: &NetNs, extra: &[&str]) -> Result<()> {
        self.args.truncate(self.extra_at);
        self.args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.restart(ns)
    }

    /// SIGKILLs the agent and the BIRD it runs with `--announce bgp`, as
    /// when the host crashes (no withdrawal, no BGP notification).
    pub fn kill_with_bird(&mut self) -> Result<()> {
        self.kill()?;
        match self.bird_pid() {
            Some(pid) => kill(pid, libc::SIGKILL).context("killing the agent's BIRD"),
            None => bail!(
                "no BIRD runs for this agent (no live pid in {})",
                self.bird_dir().join("bird.pid").display()
            ),
        }
    }

    /// Waits up to `timeout` for the agent to exit; its exit status.
    pub fn wait_for_exit(&self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_ref().and_then(ChildGuard::exit_status) {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "the agent still runs after {timeout:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where the agent keeps its BIRD's files (`bird.conf`, `bird.ctl`,
    /// `bird.pid`).
    pub fn bird_dir(&self) -> PathBuf {
        lb::rundir::dir(&self.bpffs)
    }

    /// The control socket of the agent's BIRD, for `birdc -s`.
    pub fn bird_socket(&self) -> PathBuf {
        self.bird_dir().join("bird.ctl")
    }

    /// The pid of the agent's BIRD if its pid file names a live BIRD
    /// (a stale file may name a pid since reused by something else).
    pub fn bird_pid(&self) -> Option<libc::pid_t> {
        let text = std::fs::read_to_string(self.bird_dir().join("bird.pid")).ok()?;
        let pid: libc::pid_t = text.trim().parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "bird").then_some(pid)
    }

    /// Runs `lb <args...> --bpffs <this agent's>` (no `--json`: for commands
    /// that act rather than list, like `drain`, and for the tables an
    /// operator reads) and returns its output, or its standard error as the
    /// error.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        let stdout = self.run(args)?;
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }

    /// Runs `lb <args...> --bpffs <this agent's>`; returns its standard
    /// output, or its standard error as the error.
    fn run(&self, args: &[&str]) -> Result<Vec<u8>> {
        let output = Command::new(lb_binary()?)
            .args(args)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .output()
            .with_context(|| format!("running lb {args:?}"))?;
        if !output.status.success() {
            bail!(
                "lb {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output.stdout)
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
        self.query_with(&[command])
    }

    /// Runs `lb <args...> --json --bpffs <this agent's>`.
    pub fn query_with(&self, args: &[&str]) -> Result<Value> {
        let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
        serde_json::from_slice(&self.run(&args)?).with_context(|| format!("parsing lb {args:?}"))
    }

    /// The global counter `name` of `lb stats --json`; an error if the
    /// listing has no such counter, so a renamed one fails loudly.
    pub fn counter(&self, name: &str) -> Result<u64> {
        let stats = self.query("stats")?;
        stats["totals"][name]
            .as_u64()
            .with_context(|| format!("no counter {name:?} in {stats}"))
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
            if let Some(status) = self.child.as_ref().and_then(ChildGuard::exit_status) {
                bail!("agent exited ({status}); its log:\n{}", self.log());
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
        // The agent leaves its state pinned on exit (that is the point);
        // `lb down` removes it so bpffs is left as it was.
        drop(self.child.take());
        if let Ok(lb) = lb_binary() {
            let _ = Command::new(lb)
                .args(["down", "--bpffs"])
                .arg(&self.bpffs)
                .output();
        }
        // `lb down` stops BIRD; should it have failed, a BIRD left behind
        // would keep the test's namespace alive.
        if let Some(pid) = self.bird_pid() {
            let _ = kill(pid, libc::SIGKILL);
        }
    }
}

/// Rows of `lb backends --json` for one service (`vip:port/proto`).
pub fn backends_of<'a>(rows: &'a [Value], service: &str) -> Vec<&'a Value> {
    rows.iter()
        .filter(|row| row["service"].as_str() == Some(service))
        .collect()
}

fn kill(pid: libc::pid_t, signal: i32) -> Result<()> {
    // SAFETY: plain syscall; the caller checked that the pid is a BIRD.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("kill {pid}"));
    }
    Ok(())
}
