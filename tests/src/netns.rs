//! Network namespaces as guards: everything a test builds lives inside namespaces
//! it owns, so tests never touch the host's interfaces and can run in parallel.
//!
//! Commands go through `ip netns exec` (which also mounts the namespace's own
//! `/sys`); code that must run in-process enters the namespace on a fresh thread,
//! because `setns` changes only the calling thread and sockets keep the namespace
//! they were created in.

mod child;
mod ethtool;
mod ping;

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use aya::programs::{Xdp, XdpMode};
use lb::dataplane::REFERENCE_OBJECT;

pub use child::ChildGuard;
pub use ethtool::Offload;

/// Longest interface name the kernel accepts (`IFNAMSIZ` minus the NUL).
const MAX_IFNAME_LEN: usize = 15;

/// Makes namespace names unique across the parallel tests of one process.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A loaded pass-through XDP program; dropping it detaches it.
pub struct XdpPass(#[allow(dead_code, reason = "held for its Drop")] aya::Ebpf);

impl std::fmt::Debug for XdpPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XdpPass")
    }
}

/// A named network namespace (`ip netns add`), deleted when dropped.
///
/// Processes still running inside keep the namespace alive after the delete,
/// which is why [`ChildGuard`]s must be dropped first (declare them after the
/// namespace).
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// Environment variables added for every process [`spawn`](Self::spawn)ed here.
    env: Mutex<Vec<(OsString, OsString)>>,
}

impl NetNs {
    /// Creates `<prefix>-<pid>-<n>` with its loopback up.
    pub fn new(prefix: &str) -> Result<NetNs> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{id}", std::process::id());
        command("ip", ["netns", "add", name.as_str()])?;
        // From here on the guard deletes the namespace, also if a step fails.
        let ns = NetNs {
            name,
            env: Mutex::default(),
        };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `args` inside the namespace and returns its standard output.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        command(
            "ip",
            ["netns", "exec", self.name.as_str()]
                .into_iter()
                .chain(args.iter().copied()),
        )
    }

    /// Runs `ip -n NAME <args>`; `args` is split on whitespace.
    pub fn ip(&self, args: &str) -> Result<String> {
        command(
            "ip",
            ["-n", self.name.as_str()]
                .into_iter()
                .chain(args.split_whitespace()),
        )
    }

    /// Runs `f` inside the namespace and returns its result. A panic in `f` is
    /// passed on to the caller, so assertions inside work as usual.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        match self.spawn_thread(f)?.join() {
            Ok(value) => Ok(value),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Starts `f` on a new thread inside the namespace, for long-running work
    /// such as servers. Returns once the thread has entered the namespace.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<T>> {
        let path = format!("/run/netns/{}", self.name);
        // `File::open` opens read-only with O_CLOEXEC.
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        let (entered_tx, entered_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                // SAFETY: plain syscall on a descriptor we own; it only changes
                // this thread's network namespace.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                let entered = if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                };
                let failed = entered.is_err();
                // The receiver waits for this message, so the send cannot fail.
                let _ = entered_tx.send(entered);
                if failed {
                    // The caller gets the error; end the thread without
                    // running `f` and without the panic hook's message.
                    std::panic::resume_unwind(Box::new(()));
                }
                f()
            })
            .context("spawning a thread")?;
        entered_rx
            .recv()
            .context("namespace thread vanished")?
            .with_context(|| format!("setns into {}", self.name))?;
        Ok(thread)
    }

    /// Starts `program` inside the namespace with its output going to a log file.
    pub fn spawn(
        &self,
        program: impl AsRef<OsStr>,
        args: &[impl AsRef<OsStr>],
    ) -> Result<ChildGuard> {
        let env = self.env.lock().expect("env lock").clone();
        ChildGuard::spawn(&self.name, program.as_ref(), args, &env)
    }

    /// Sets `key` to `value` in the environment of every process spawned
    /// here from now on (say, `KUBERNETES_SERVICE_HOST` for an agent that
    /// thinks it runs in a Pod).
    pub fn set_env(&self, key: impl Into<OsString>, value: impl Into<OsString>) {
        self.env
            .lock()
            .expect("env lock")
            .push((key.into(), value.into()));
    }

    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        let text = self.sys_class_net(dev, "ifindex")?;
        text.parse()
            .with_context(|| format!("ifindex of {dev}: {text:?}"))
    }

    pub fn mac(&self, dev: &str) -> Result<[u8; 6]> {
        let text = self.sys_class_net(dev, "address")?;
        let bytes: Vec<u8> = text
            .split(':')
            .map(|byte| u8::from_str_radix(byte, 16))
            .collect::<Result<_, _>>()
            .with_context(|| format!("MAC of {dev}: {text:?}"))?;
        bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("MAC of {dev} is not 6 bytes: {text:?}"))
    }

    /// Reads `/sys/class/net/DEV/ATTR`; through `ip netns exec` because only
    /// there `/sys` shows this namespace's devices.
    fn sys_class_net(&self, dev: &str, attr: &str) -> Result<String> {
        let path = format!("/sys/class/net/{dev}/{attr}");
        Ok(self.run(&["cat", &path])?.trim().to_owned())
    }

    /// Switches an offload on `dev`, like `ethtool -K DEV gro|tx on|off`.
    ///
    /// Frames that XDP sends into a veth (XDP_TX or XDP_REDIRECT) reach the peer
    /// only when the peer has NAPI enabled, which it has with GRO on or an XDP
    /// program attached; otherwise the kernel drops them silently.
    pub fn set_offload(&self, dev: &str, offload: Offload, on: bool) -> Result<()> {
        let dev_owned = dev.to_owned();
        self.enter(move || ethtool::set(&dev_owned, offload, on))?
            .with_context(|| format!("setting {offload:?} {on} on {dev} in {}", self.name))
    }

    /// Attaches a pass-through XDP program to `dev`; detached when dropped.
    pub fn attach_xdp_pass(&self, dev: &'static str) -> Result<XdpPass> {
        self.enter(move || -> Result<XdpPass> {
            let mut ebpf = aya::Ebpf::load(REFERENCE_OBJECT).context("loading ref_pass")?;
            let program: &mut Xdp = ebpf
                .program_mut("ref_pass")
                .context("no ref_pass program")?
                .try_into()?;
            program.load()?;
            program
                .attach(dev, XdpMode::Default)
                .with_context(|| format!("attaching ref_pass to {dev}"))?;
            Ok(XdpPass(ebpf))
        })?
        .with_context(|| format!("in {}", self.name))
    }

    /// The MAC this namespace's neighbour table (ARP or NDP) has for `ip` on
    /// `dev`, if it has one (an entry still being resolved, or failed, has none).
    pub fn neighbour_mac(&self, dev: &str, ip: IpAddr) -> Result<Option<String>> {
        let out = self.ip(&format!("neigh show {ip} dev {dev}"))?;
        let mut words = out.split_whitespace();
        Ok(words
            .find(|w| *w == "lladdr")
            .and_then(|_| words.next())
            .map(str::to_owned))
    }

    /// Sets a sysctl of this namespace (`sysctl -qw key=value`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Sends one ICMP echo request to `dst` and waits for the reply.
    pub fn ping(&self, dst: Ipv4Addr, timeout: Duration) -> Result<()> {
        self.enter(move || ping::ping(dst, timeout))?
            .with_context(|| format!("ping {dst} from {}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = command("ip", ["netns", "del", self.name.as_str()]);
    }
}

/// Creates a veth pair with `a_name` in `a` and `b_name` in `b`, both up.
///
/// The ends are created directly inside their namespaces, so the pair never
/// appears in (or clashes with names of) the root namespace.
pub fn veth(a: &NetNs, a_name: &str, b: &NetNs, b_name: &str) -> Result<()> {
    for name in [a_name, b_name] {
        ensure!(
            !name.is_empty() && name.len() <= MAX_IFNAME_LEN,
            "interface name {name:?} must have 1 to {MAX_IFNAME_LEN} characters"
        );
    }
    command(
        "ip",
        [
            "link", "add", a_name, "netns", &a.name, "type", "veth", "peer", "name", b_name,
            "netns", &b.name,
        ],
    )?;
    a.ip(&format!("link set {a_name} up"))?;
    b.ip(&format!("link set {b_name} up"))?;
    Ok(())
}

/// Runs a command to completion; the error carries the command line and stderr.
fn command<'a>(program: &str, args: impl IntoIterator<Item = &'a str>) -> Result<String> {
    let args: Vec<&str> = args.into_iter().collect();
    let line = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {line}"))?;
    if !output.status.success() {
        bail!(
            "{line} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("output of {line}"))
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn namespace_is_created_and_deleted() -> Result<()> {
        let ns = NetNs::new("t-life")?;
        let name = ns.name().to_owned();
        assert!(command("ip", ["netns", "list"])?.contains(&name));
        drop(ns);
        assert!(!command("ip", ["netns", "list"])?.contains(&name));
        Ok(())
    }

    #[test]
    fn run_reports_failures_with_stderr() -> Result<()> {
        let ns = NetNs::new("t-run")?;
        assert_eq!(ns.run(&["echo", "hi"])?, "hi\n");
        let err = ns.run(&["ls", "/does-not-exist"]).unwrap_err();
        assert!(format!("{err:#}").contains("/does-not-exist"), "{err:#}");
        Ok(())
    }

    #[test]
    fn enter_creates_sockets_inside_the_namespace() -> Result<()> {
        let ns = NetNs::new("t-enter")?;
        veth(&ns, "va", &ns, "vb")?;
        ns.ip("addr add 192.0.2.1/24 dev va")?;
        // The address exists only in the namespace, so binding proves where we are.
        let listener = ns.enter(|| TcpListener::bind("192.0.2.1:0"))??;
        assert!(listener.local_addr()?.port() != 0);
        assert!(TcpListener::bind("192.0.2.1:0").is_err());
        Ok(())
    }

    #[test]
    fn enter_passes_panics_on() -> Result<()> {
        let ns = NetNs::new("t-panic")?;
        let caught = std::panic::catch_unwind(|| ns.enter(|| panic!("inside")));
        assert!(caught.is_err());
        Ok(())
    }

    #[test]
    fn veth_links_two_namespaces() -> Result<()> {
        let a = NetNs::new("t-veth-a")?;
        let b = NetNs::new("t-veth-b")?;
        veth(&a, "a0", &b, "b0")?;
        a.ip("addr add 192.0.2.1/24 dev a0")?;
        b.ip("addr add 192.0.2.2/24 dev b0")?;
        assert!(a.ifindex("a0")? > 1);
        let mac = a.mac("a0")?;
        assert!(mac != [0; 6] && mac[0] & 1 == 0, "a0's MAC {mac:02x?}");
        assert_ne!(a.mac("a0")?, b.mac("b0")?);
        a.ping(Ipv4Addr::new(192, 0, 2, 2), Duration::from_secs(2))?;
        assert!(
            a.ping(Ipv4Addr::new(192, 0, 2, 9), Duration::from_millis(300))
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn veth_rejects_long_names() -> Result<()> {
        let ns = NetNs::new("t-long")?;
        assert!(veth(&ns, "sixteen-chars-ab", &ns, "b").is_err());
        Ok(())
    }

    #[test]
    fn gro_and_sysctl_apply() -> Result<()> {
        let ns = NetNs::new("t-gro")?;
        veth(&ns, "ga", &ns, "gb")?;
        for offload in [Offload::Gro, Offload::TxChecksum] {
            ns.set_offload("ga", offload, true)?;
            assert!(ns.enter(move || ethtool::get("ga", offload))??);
            ns.set_offload("ga", offload, false)?;
            assert!(!ns.enter(move || ethtool::get("ga", offload))??);
        }
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        assert_eq!(
            ns.run(&["sysctl", "-n", "net.ipv4.ip_forward"])?.trim(),
            "1"
        );
        Ok(())
    }
}
