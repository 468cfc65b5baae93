//! Bad configuration, with the real `lb` binary: unreadable and invalid
//! manifests, missing privileges, and bad edits under a running agent. Each
//! problem gets one clear error line naming it (exit status 1, `lb: ...`), or,
//! for an agent that is already serving, a logged reason while the last good
//! state keeps serving. (cli_errors.rs covers bad flags and interfaces.)

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_tests::{
    agent::{Agent, lb_binary},
    manifests::{self, ServicePort},
    netns::{NetNs, veth},
};

const VIP_WEB: &str = "198.51.100.21";
const VIP_API: &str = "198.51.100.22";
/// Longer than a few of the agent's 500 ms manifest polls.
const TIMEOUT: Duration = Duration::from_secs(15);
/// The overflow uid and gid: an ordinary user without capabilities.
const NOBODY: &str = "65534";

fn service(name: &str, vip: &str, port: u16) -> String {
    manifests::load_balancer_service_yaml(name, "cfg", vip, &[main_port(port)])
}

/// The one port of the tests' Services, on NodePort 31000.
fn main_port(port: u16) -> ServicePort<'static> {
    ServicePort {
        name: "main",
        port,
        protocol: "TCP",
        node_port: 31000,
        target_port: None,
    }
}

fn node() -> String {
    manifests::ready_node_yaml("node-1", &["10.1.0.11"])
}

/// Service web and the node.
fn web() -> String {
    manifests::documents(&[service("web", VIP_WEB, 80), node()])
}

/// Services web and api, and the node.
fn web_and_api() -> String {
    manifests::documents(&[
        service("web", VIP_WEB, 80),
        service("api", VIP_API, 8080),
        node(),
    ])
}

/// A directory for one test's manifests, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("lb-bad-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` atomically (a rename), as careful tools do, so the agent
    /// never sees a half-written file unless a test writes one on purpose.
    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> Result<PathBuf> {
        let path = self.path(name);
        let file_name = path.file_name().context("no file name")?.to_string_lossy();
        let partial = path.with_file_name(format!(".{file_name}.partial"));
        std::fs::write(&partial, bytes)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path)
            .with_context(|| format!("renaming to {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A namespace with a veth pair, and an agent attached to one end.
struct Bed {
    agent: Agent,
    // Dropped after the agent, which runs inside it.
    ns: NetNs,
}

impl Bed {
    fn start(tag: &str, manifests: &Path) -> Result<Self> {
        Self::start_with(tag, manifests, &[])
    }

    fn start_with(tag: &str, manifests: &Path, extra: &[&str]) -> Result<Self> {
        let ns = NetNs::new(tag)?;
        veth(&ns, "lb0", &ns, "lb1")?;
        let agent = Agent::start(&ns, &["lb0"], manifests, extra)?;
        Ok(Self { agent, ns })
    }

    /// `(name, vip, port)` of every service `lb services --json` lists, sorted.
    fn services(&self) -> Result<Vec<(String, String, u64)>> {
        let rows = self.agent.query("services")?;
        let rows = rows
            .as_array()
            .context("lb services --json is not a list")?;
        let mut services = rows
            .iter()
            .map(|row| {
                let text = |name: &str| {
                    row[name]
                        .as_str()
                        .map(str::to_owned)
                        .with_context(|| format!("no {name} in {row}"))
                };
                let port = row["port"]
                    .as_u64()
                    .with_context(|| format!("no port in {row}"))?;
                Ok((text("name")?, text("vip")?, port))
            })
            .collect::<Result<Vec<_>>>()?;
        services.sort();
        Ok(services)
    }

    /// Polls `lb services --json` until it lists exactly `want` (sorted).
    fn wait_for_services(&self, want: &[(&str, &str, u64)]) -> Result<()> {
        let want: Vec<(String, String, u64)> = want.iter().copied().map(owned).collect();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let listed = self.services();
            if listed.as_ref().is_ok_and(|listed| *listed == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "lb services: want {want:?}, got {listed:?}; agent log:\n{}",
                    self.agent.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the agent logs a new line (after the first `seen` bytes of
    /// its log) containing every one of `needles`.
    fn wait_for_log(&self, seen: usize, needles: &[&str]) -> Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let log = self.agent.log();
            let fresh = log.get(seen..).unwrap_or_default();
            if fresh
                .lines()
                .any(|line| needles.iter().all(|needle| line.contains(needle)))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent did not log {needles:?}; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const WEB: (&str, &str, u64) = ("cfg/web:main", VIP_WEB, 80);
const API: (&str, &str, u64) = ("cfg/api:main", VIP_API, 8080);

/// An agent started on a manifests path it cannot read has nothing to serve
/// yet: it says why, serves nothing, and picks the manifests up as soon as
/// they can be read (a ConfigMap volume may be mounted late).
#[test]
fn agent_started_on_unreadable_manifests_fails_with_the_reason() -> Result<()> {
    let scratch = Scratch::new("unreadable")?;
    scratch.write("file", "a file where a directory is expected")?;
    // (what is wrong, path given to the agent, reason it must name)
    let cases = [
        (
            "missing",
            scratch.path("missing.yaml"),
            "no such file or directory",
        ),
        // ENOTDIR: unreadable even for root, who passes every permission check.
        (
            "under a regular file",
            scratch.path("file/child.yaml"),
            "Not a directory",
        ),
    ];
    for (what, path, reason) in cases {
        let pins = format!("/sys/fs/bpf/lb-bad-config-unread-{}", std::process::id());
        let manifests = path.display().to_string();
        let result = lb(&[
            "agent",
            "--iface",
            "lo",
            "--manifests",
            &manifests,
            "--bpffs",
            &pins,
        ]);
        let left_behind = Path::new(&pins).exists();
        let _ = std::fs::remove_dir_all(&pins);
        assert_one_clear_line(what, result?, &[manifests.as_str(), reason])?;
        ensure!(!left_behind, "{what}: the failed agent left {pins} behind");
    }
    Ok(())
}

/// Broken files and documents are skipped, each with a logged reason naming
/// its file (or Service), and everything valid beside them is served.
#[test]
fn invalid_manifests_are_skipped_and_the_valid_ones_served() -> Result<()> {
    let scratch = Scratch::new("mixed")?;
    let web = web();
    // Valid YAML, but not a Service: its ports are not a list.
    let bad_service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad-ports\n\
                       spec:\n  type: LoadBalancer\n  ports: eighty\n";
    let with_node_port = service("no-node-port", "198.51.100.24", 80);
    let no_node_port = with_node_port.replace("    nodePort: 31000\n", "");
    ensure!(no_node_port != with_node_port, "no nodePort line to remove");
    let mixed = manifests::documents(&[bad_service, &service("api", VIP_API, 8080)]);
    enum Expect {
        Served,
        /// A document that does not parse: its skip line names the file.
        SkippedInFile(&'static str),
        /// A well-formed object lb cannot use: its skip line names the object.
        SkippedObject(&'static str),
    }
    let files: [(&str, &[u8], Expect); 6] = [
        ("10-web.yaml", web.as_bytes(), Expect::Served),
        (
            "20-syntax.yaml",
            b"kind: Service\nmetadata: [unclosed\n",
            Expect::SkippedInFile("invalid YAML"),
        ),
        (
            "30-mixed.yaml",
            mixed.as_bytes(),
            Expect::SkippedInFile("doc 1: invalid Service"),
        ),
        (
            "40-binary.yaml",
            b"kind: Service\n\xff\xfe\x00\x01",
            Expect::SkippedInFile("not valid UTF-8"),
        ),
        (
            "50-truncated.json",
            b"{\"kind\": \"Service\", \"metadata\": {",
            Expect::SkippedInFile("invalid JSON"),
        ),
        (
            "60-no-node-port.yaml",
            no_node_port.as_bytes(),
            Expect::SkippedObject("cfg/no-node-port"),
        ),
    ];
    for (name, contents, _) in &files {
        scratch.write(name, contents)?;
    }
    let bed = Bed::start("lbcfg-mixed", &scratch.0)?;
    bed.wait_for_services(&[API, WEB])?;
    for (name, _, expect) in &files {
        let path = scratch.path(name).display().to_string();
        let needles = match expect {
            Expect::Served => continue,
            Expect::SkippedInFile(reason) => ["skipping", path.as_str(), reason],
            Expect::SkippedObject(object) => ["skipping", "Service", object],
        };
        bed.wait_for_log(0, &needles)
            .with_context(|| format!("{name}: skip reason"))?;
    }
    Ok(())
}

/// A running agent keeps its services while its manifests cannot be read,
/// and applies the next good version.
#[test]
fn running_agent_keeps_its_state_while_the_manifests_are_gone() -> Result<()> {
    let scratch = Scratch::new("gone")?;
    let path = scratch.write("lb.yaml", web())?;
    let bed = Bed::start("lbcfg-gone", &path)?;
    bed.wait_for_services(&[WEB])?;
    let seen = bed.agent.log().len();
    std::fs::remove_file(&path)?;
    bed.wait_for_log(seen, &["WARN", &path.display().to_string()])?;
    // One more poll, in case anything is applied after the warning.
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        bed.services()? == [owned(WEB)],
        "lost: {:?}",
        bed.services()?
    );
    scratch.write("lb.yaml", web_and_api())?;
    bed.wait_for_services(&[API, WEB])
}

/// Garbage in place of a running agent's manifests (a bad edit, a half-written
/// file, the wrong file copied over) must not take its services down: issue 6
/// asks that the last good state keep serving. The agent then applies the next
/// good version.
#[test]
fn running_agent_keeps_its_state_when_the_manifests_turn_to_garbage() -> Result<()> {
    let scratch = Scratch::new("garbage")?;
    let good = web();
    let path = scratch.write("lb.yaml", &good)?;
    let bed = Bed::start("lbcfg-garbage", &path)?;
    bed.wait_for_services(&[WEB])?;
    // A cut that still parses (a truncated but valid document) cannot be
    // told from an edit: writers should rename into place, as the README says.
    let garbage: [(&str, &[u8]); 3] = [
        ("not YAML", b"this: is: not [yaml\n\x00\x01"),
        ("not UTF-8", b"\xff\xfe\xfd binary"),
        (
            "cut mid-document",
            b"apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: [{port: 80,",
        ),
    ];
    for (what, bytes) in garbage {
        let seen = bed.agent.log().len();
        scratch.write("lb.yaml", bytes)?;
        bed.wait_for_log(seen, &[&path.display().to_string()])
            .with_context(|| format!("{what}: the agent reads it"))?;
        std::thread::sleep(Duration::from_secs(1));
        ensure!(
            bed.services()? == [owned(WEB)],
            "{what}: lb services lists {:?}; agent log:\n{}",
            bed.services()?,
            bed.agent.log()
        );
    }
    scratch.write("lb.yaml", web_and_api())?;
    bed.wait_for_services(&[API, WEB])
}

/// The same for an agent restarted over the pinned state of one that
/// served: that state is the last good one, and garbage it finds at its
/// start (a file caught mid-write) must not take the services away.
#[test]
fn restarted_agent_keeps_the_inherited_state_when_the_manifests_are_garbage() -> Result<()> {
    let scratch = Scratch::new("garbage-restart")?;
    let path = scratch.write("lb.yaml", web_and_api())?;
    let mut bed = Bed::start("lbcfg-garbage-restart", &path)?;
    bed.wait_for_services(&[API, WEB])?;
    bed.agent.kill()?;
    // The API Service's document cut off mid-write; the web one whole.
    let cut = format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: api",
        web()
    );
    scratch.write("lb.yaml", cut)?;
    bed.agent.restart(&bed.ns)?;
    bed.wait_for_log(0, &["WARN", &path.display().to_string()])?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        bed.services()? == [owned(API), owned(WEB)],
        "lb services lists {:?}; agent log:\n{}",
        bed.services()?,
        bed.agent.log()
    );
    scratch.write("lb.yaml", web())?;
    bed.wait_for_services(&[WEB])
}

/// Manifests carry no status, where an API server keeps each Service's
/// address: an agent restarted over the pinned state of one that served
/// keeps each Service on the pool address it had. Allocated afresh in name
/// order, `api`, added after `web`, would take `web`'s address.
#[test]
fn a_restarted_agent_keeps_the_pool_addresses_of_manifest_services() -> Result<()> {
    let scratch = Scratch::new("pool-restart")?;
    let pooled = |names: &[(&str, u16)]| -> Result<String> {
        let mut documents = vec![node()];
        for &(name, port) in names {
            let mut service = manifests::load_balancer_service(name, "cfg", "", &[main_port(port)]);
            service.spec.as_mut().context("a spec")?.load_balancer_ip = None;
            documents.push(serde_yaml::to_string(&service)?);
        }
        Ok(manifests::documents(&documents))
    };
    let path = scratch.write("lb.yaml", pooled(&[("web", 80)])?)?;
    let pool = ["--vip-pool", "198.51.100.32/28"];
    let mut bed = Bed::start_with("lbcfg-pool-restart", &path, &pool)?;
    let web = ("cfg/web:main", "198.51.100.33", 80);
    bed.wait_for_services(&[web])?;
    scratch.write("lb.yaml", pooled(&[("web", 80), ("api", 8080)])?)?;
    let api = ("cfg/api:main", "198.51.100.34", 8080);
    bed.wait_for_services(&[api, web])?;
    bed.agent.restart(&bed.ns)?;
    bed.wait_for_log(0, &["synced"])?;
    ensure!(
        bed.services()? == [owned(api), owned(web)],
        "lb services lists {:?} after the restart; agent log:\n{}",
        bed.services()?,
        bed.agent.log()
    );
    Ok(())
}

fn owned((name, vip, port): (&str, &str, u64)) -> (String, String, u64) {
    (name.to_owned(), vip.to_owned(), port)
}

/// Runs `command` (lb) to completion; returns (exit code, stderr).
fn exit_and_stderr(command: &mut Command) -> Result<(i32, String)> {
    let output = command
        // lb's one-line errors must not turn into backtraces.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .with_context(|| format!("running {command:?}"))?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Runs `lb args...` as the test's (root) user.
fn lb(args: &[&str]) -> Result<(i32, String)> {
    exit_and_stderr(Command::new(lb_binary()?).args(args))
}

/// Runs `lb args...` as an ordinary user.
fn lb_as_nobody(args: &[&str]) -> Result<(i32, String)> {
    let user = [
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_owned(),
    ];
    exit_and_stderr(
        Command::new("setpriv")
            .args(user)
            .arg("--")
            .arg(lb_binary()?)
            .args(args),
    )
}

/// Checks for lb's one error line: exit status 1, exactly one `lb: ` line on
/// stderr (an agent may have logged before it), containing every needle
/// (case-insensitive), and no cause repeated in its chain, which reads as
/// noise rather than as a reason.
fn assert_one_clear_line(
    what: &str,
    (status, stderr): (i32, String),
    needles: &[&str],
) -> Result<()> {
    ensure!(
        status == 1,
        "{what}: exit status {status}, stderr {stderr:?}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("lb: ")).collect();
    let [line] = lines[..] else {
        bail!("{what}: want one `lb: ` line, stderr {stderr:?}");
    };
    for needle in needles {
        ensure!(
            line.to_lowercase().contains(&needle.to_lowercase()),
            "{what}: {needle:?} not in {line:?}"
        );
    }
    let causes: Vec<&str> = line.split(": ").collect();
    for (i, cause) in causes.iter().enumerate() {
        ensure!(
            !causes[i + 1..].contains(cause),
            "{what}: {cause:?} repeated in {line:?}"
        );
    }
    Ok(())
}

/// An agent restarted over a serving agent's pinned state with an interface
/// that does not exist (a typo), or with its metrics address taken, stops
/// before it touches that state: the interface both name keeps the program
/// attached there, and with it the earlier agent's settings (here: NAT,
/// where the restart asks for DSR).
#[test]
fn agent_restarted_with_bad_settings_leaves_the_pinned_data_path_alone() -> Result<()> {
    let scratch = Scratch::new("iface")?;
    let path = scratch.write("lb.yaml", web())?;
    let mut bed = Bed::start("lbcfg-iface", &path)?;
    bed.wait_for_services(&[WEB])?;
    let attached = xdp_program(&bed.ns, "lb0")?;
    bed.agent.kill()?;
    let mut refused = |what: &str, extra: &[&str], said: &str| -> Result<()> {
        bed.agent.restart_with(&bed.ns, extra)?;
        let status = bed.agent.wait_for_exit(TIMEOUT)?;
        ensure!(!status.success(), "{what}: the agent started");
        ensure!(
            bed.agent.log().contains(said),
            "{what}: {}",
            bed.agent.log()
        );
        ensure!(
            xdp_program(&bed.ns, "lb0")? == attached,
            "{what}: lb0's program was replaced by the failed start's"
        );
        Ok(())
    };
    refused(
        "a missing interface",
        &["--iface", "nosuch0", "--forwarding", "dsr"],
        "interface nosuch0 does not exist",
    )?;
    // An agent still running would hold it.
    let _taken = bed
        .ns
        .enter(|| std::net::TcpListener::bind("127.0.0.1:9641"))??;
    refused(
        "the metrics address taken",
        &["--forwarding", "dsr"],
        "--metrics-address 127.0.0.1:9641",
    )
}

/// An interface deleted and made again under its name while no agent ran
/// (a bond rebuilt, a driver reloaded) severed the link pinned for it: the
/// next agent attaches it afresh and serves, rather than failing every
/// start on the dead link.
#[test]
fn an_interface_made_again_is_attached_afresh() -> Result<()> {
    let scratch = Scratch::new("iface-again")?;
    let path = scratch.write("lb.yaml", web())?;
    let mut bed = Bed::start("lbcfg-again", &path)?;
    veth(&bed.ns, "d0", &bed.ns, "d1")?;
    bed.agent.kill()?;
    bed.agent.restart_with(&bed.ns, &["--iface", "d0"])?;
    wait_for_the_same_program(&bed, "lb0", "d0")?;
    bed.agent.kill()?;
    bed.ns.ip("link del d0")?;
    veth(&bed.ns, "d0", &bed.ns, "d1")?;
    bed.agent.restart_with(&bed.ns, &["--iface", "d0"])?;
    wait_for_the_same_program(&bed, "lb0", "d0")?;
    bed.wait_for_services(&[WEB])
}

/// An interface the earlier agent was attached to and the next one does not
/// list is detached: the earlier program, whose filters and settings no
/// agent updates any more, would go on taking its traffic (and answering
/// ARP for VIPs under a slot now another interface's).
#[test]
fn an_interface_no_longer_listed_is_detached() -> Result<()> {
    let scratch = Scratch::new("iface-dropped")?;
    let path = scratch.write("lb.yaml", web())?;
    let ns = NetNs::new("lbcfg-dropped")?;
    veth(&ns, "lb0", &ns, "lb1")?;
    veth(&ns, "d0", &ns, "d1")?;
    let mut bed = Bed {
        agent: Agent::start(&ns, &[], &path, &["--iface", "lb0", "--iface", "d0"])?,
        ns,
    };
    wait_for_the_same_program(&bed, "lb0", "d0")?;
    bed.agent.kill()?;
    bed.agent.restart_with(&bed.ns, &["--iface", "lb0"])?;
    bed.wait_for_services(&[WEB])?;
    let deadline = Instant::now() + TIMEOUT;
    while xdp_program(&bed.ns, "d0").is_ok() {
        if Instant::now() > deadline {
            bail!("d0 still runs a program; agent log:\n{}", bed.agent.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// An agent restarted with `--detach-on-exit` over an earlier agent's
/// state, whose start then fails (an interface XDP cannot be attached to),
/// leaves that state serving: removing it is for an agent that started.
#[test]
fn a_failed_restart_with_detach_on_exit_leaves_the_pinned_state() -> Result<()> {
    let scratch = Scratch::new("detach-failed")?;
    let path = scratch.write("lb.yaml", web())?;
    let mut bed = Bed::start("lbcfg-detach", &path)?;
    bed.wait_for_services(&[WEB])?;
    // Native XDP on a veth needs the peer's MTU to fit a page.
    veth(&bed.ns, "d0", &bed.ns, "d1")?;
    bed.ns.ip("link set d1 mtu 9000")?;
    bed.agent.kill()?;
    bed.agent
        .restart_with(&bed.ns, &["--iface", "d0", "--detach-on-exit"])?;
    let status = bed.agent.wait_for_exit(TIMEOUT)?;
    ensure!(!status.success(), "the agent started: {}", bed.agent.log());
    ensure!(
        bed.agent.log().contains("attaching XDP to d0"),
        "{}",
        bed.agent.log()
    );
    xdp_program(&bed.ns, "lb0").context("lb0 was detached")?;
    bed.wait_for_services(&[WEB])
}

/// Waits until the agent has attached its program to both `a` and `b`.
fn wait_for_the_same_program(bed: &Bed, a: &str, b: &str) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let programs = (xdp_program(&bed.ns, a), xdp_program(&bed.ns, b));
        if let (Ok(a), Ok(b)) = &programs
            && a == b
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{a} and {b}: want one program on both, have {programs:?}; agent log:\n{}",
                bed.agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The id of the XDP program attached to `dev` in `ns`.
fn xdp_program(ns: &NetNs, dev: &str) -> Result<u64> {
    let text = ns.ip(&format!("-j link show dev {dev}"))?;
    let links: serde_json::Value = serde_json::from_str(&text).context("ip -j link")?;
    links[0]["xdp"]["prog"]["id"]
        .as_u64()
        .with_context(|| format!("no XDP program on {dev}: {text}"))
}

/// VIP pools that overlap, or reuse a name (`--vip-pool` is the pool
/// "default"), and a layer 2 Lease name the API server would refuse, are
/// refused before the agent touches the kernel.
#[test]
fn agent_refuses_clashing_pools_before_touching_the_kernel() -> Result<()> {
    let scratch = Scratch::new("pools")?;
    let path = scratch.write("lb.yaml", web())?;
    let manifests = path.display().to_string();
    let pins = format!("/sys/fs/bpf/lb-bad-config-pools-{}", std::process::id());
    let cases: [(&str, &[&str], &[&str]); 4] = [
        (
            "a layer 2 Lease that is no object name",
            &["--layer2-lease", "Segment_A"],
            &["--layer2-lease", "Segment_A"],
        ),
        (
            "overlapping ranges",
            &[
                "--pool",
                "a=198.51.100.0/24",
                "--pool",
                "b=198.51.100.128/25",
            ],
            &["--pool", "clashes with pool a"],
        ),
        (
            "one name twice",
            &["--pool", "a=198.51.100.0/24", "--pool", "a=203.0.113.0/24"],
            &["--pool", "clashes with pool a"],
        ),
        (
            "--vip-pool overlapping a named pool",
            &[
                "--vip-pool",
                "198.51.100.0/24",
                "--pool",
                "b=198.51.100.10-198.51.100.20",
            ],
            &["--pool", "clashes with pool default"],
        ),
    ];
    for (what, pools, needles) in cases {
        // No such interface: were the pools accepted, the agent would stop
        // there with another message, rather than attach to the host.
        let mut args = vec![
            "agent",
            "--iface",
            "nosuch0",
            "--manifests",
            &manifests,
            "--bpffs",
            &pins,
        ];
        args.extend_from_slice(pools);
        assert_one_clear_line(what, lb(&args)?, needles)?;
        ensure!(!Path::new(&pins).exists(), "{what}: {pins} left behind");
    }
    Ok(())
}

/// The inspection commands run by a user who may not read the pinned maps
/// say so and say what to do.
#[test]
fn inspection_without_privileges_says_to_run_as_root() -> Result<()> {
    let scratch = Scratch::new("unprivileged")?;
    let path = scratch.write("lb.yaml", web())?;
    let bed = Bed::start("lbcfg-priv", &path)?;
    bed.wait_for_services(&[WEB])?;
    let bpffs = bed.agent.bpffs().display().to_string();
    for command in ["services", "backends", "flows", "stats"] {
        let result = lb_as_nobody(&[command, "--json", "--bpffs", &bpffs])?;
        ensure!(
            result.1.lines().count() == 1,
            "lb {command}: one line only: {:?}",
            result.1
        );
        assert_one_clear_line(
            &format!("lb {command}"),
            result,
            &["permission denied", "root"],
        )?;
    }
    Ok(())
}

/// Starting an agent, or removing pinned state, without privileges: one line
/// that says privileges are missing, and nothing left in bpffs.
#[test]
fn agent_and_down_without_privileges_say_to_run_as_root() -> Result<()> {
    let scratch = Scratch::new("unprivileged-agent")?;
    let path = scratch.write("lb.yaml", web())?;
    let manifests = path.display().to_string();
    let pins = format!("/sys/fs/bpf/lb-bad-config-nobody-{}", std::process::id());
    let result = lb_as_nobody(&[
        "agent",
        "--iface",
        "lo",
        "--manifests",
        &manifests,
        "--bpffs",
        &pins,
    ]);
    let left_behind = Path::new(&pins).exists();
    // Whatever the outcome, bpffs is left as it was.
    let _ = std::fs::remove_dir_all(&pins);
    assert_one_clear_line("lb agent", result?, &["root"])?;
    ensure!(!left_behind, "lb agent left {pins} behind");

    let bed = Bed::start("lbcfg-down", &path)?;
    bed.wait_for_services(&[WEB])?;
    let bpffs = bed.agent.bpffs().display().to_string();
    assert_one_clear_line(
        "lb down",
        lb_as_nobody(&["down", "--bpffs", &bpffs])?,
        &["root"],
    )?;
    ensure!(
        bed.services()? == [owned(WEB)],
        "an unprivileged lb down must not remove anything"
    );
    Ok(())
}
