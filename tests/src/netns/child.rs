//! Processes started inside a namespace, stopped when their guard is dropped.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// How long a process gets to exit after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// Makes log file names unique across the parallel tests of one process.
static NEXT_LOG: AtomicU32 = AtomicU32::new(0);

/// A process running inside a namespace with stdout and stderr in a log file.
///
/// Dropping it sends SIGTERM, waits up to 5 s, then sends SIGKILL. When the drop
/// happens during a panic (a failing test), the log is printed to stderr first.
#[derive(Debug)]
pub struct ChildGuard {
    /// Behind a mutex so that `&self` methods can check whether it exited.
    child: Mutex<Child>,
    log: PathBuf,
    description: String,
}

impl ChildGuard {
    pub(super) fn spawn(
        ns: &str,
        program: &OsStr,
        args: &[impl AsRef<OsStr>],
        env: &[(OsString, OsString)],
    ) -> Result<ChildGuard> {
        let program_name = Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy()
            .into_owned();
        let log = std::env::temp_dir().join(format!(
            "lb-tests-{ns}-{program_name}-{}.log",
            NEXT_LOG.fetch_add(1, Ordering::Relaxed)
        ));
        let description = format!("{program_name} in {ns}");
        let stdout = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let stderr = stdout
            .try_clone()
            .context("duplicating the log descriptor")?;
        // `nsenter` execs the program itself, so the pid we get is the
        // program's and signals reach it directly. Unlike `ip netns exec` it
        // enters only the network namespace: the child keeps the host's mounts,
        // so maps it pins under /sys/fs/bpf are visible to everyone.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {description}"))?;
        Ok(ChildGuard {
            child: Mutex::new(child),
            log,
            description,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// Everything the process wrote so far (stdout and stderr interleaved).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: plain syscall; the pid is our own child, not yet reaped (the
        // guard owns it), so it cannot have been reused.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("signal {signal} to {}", self.description));
        }
        Ok(())
    }

    /// How the process ended, if it has.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// Polls the log until it contains `needle`; fails early if the process exits.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child().try_wait()? {
                bail!(
                    "{} exited ({status}) before logging {needle:?}; log:\n{}",
                    self.description,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}; log:\n{}",
                    self.description,
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        // A poisoned lock only means a panic elsewhere; the `Child` is intact.
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// SIGTERM, a grace period, then SIGKILL; always reaps the process.
    fn stop(&self) {
        if matches!(self.child().try_wait(), Ok(None)) {
            let _ = self.signal(libc::SIGTERM);
            let deadline = Instant::now() + TERM_GRACE;
            while Instant::now() < deadline {
                if !matches!(self.child().try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(POLL);
            }
        }
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.description, self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::NetNs;

    #[test]
    fn logs_are_captured_and_waited_for() -> Result<()> {
        let ns = NetNs::new("t-child")?;
        let child = ns.spawn("sh", &["-c", "echo ready; echo oops >&2; sleep 60"])?;
        child.wait_for_log("ready", Duration::from_secs(5))?;
        child.wait_for_log("oops", Duration::from_secs(5))?;
        assert!(child.pid() > 0);
        Ok(())
    }

    #[test]
    fn early_exit_is_reported() -> Result<()> {
        let ns = NetNs::new("t-exit")?;
        let child = ns.spawn("sh", &["-c", "echo bye; exit 3"])?;
        let err = child
            .wait_for_log("never", Duration::from_secs(5))
            .unwrap_err();
        assert!(format!("{err:#}").contains("bye"), "{err:#}");
        Ok(())
    }

    #[test]
    fn drop_escalates_to_sigkill() -> Result<()> {
        let ns = NetNs::new("t-kill")?;
        let child = ns.spawn(
            "sh",
            &[
                "-c",
                "trap '' TERM; echo armed; while :; do sleep 0.1; done",
            ],
        )?;
        child.wait_for_log("armed", Duration::from_secs(5))?;
        let pid = child.pid();
        let started = Instant::now();
        drop(child);
        assert!(started.elapsed() >= TERM_GRACE);
        // Killed and reaped, so the pid is gone.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        Ok(())
    }

    #[test]
    fn signal_reaches_the_program() -> Result<()> {
        let ns = NetNs::new("t-sig")?;
        let child = ns.spawn(
            "sh",
            &[
                "-c",
                "trap 'echo got-usr1' USR1; echo armed; while :; do sleep 0.1; done",
            ],
        )?;
        child.wait_for_log("armed", Duration::from_secs(5))?;
        child.signal(libc::SIGUSR1)?;
        child.wait_for_log("got-usr1", Duration::from_secs(5))?;
        Ok(())
    }
}
