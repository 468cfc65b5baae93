//! Bad input to the `lb` binary and missing privileges: one clear line naming
//! the problem, exit status 1 (clap's own usage errors: 2), and nothing left
//! behind. A reader that stops reading ends a command quietly.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use lb::{
    dataplane::{Dataplane, DataplaneConfig},
    pins::PinDir,
};
use lb_tests::{agent::lb_binary, netns::NetNs, pin_root::PinRoot};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/voting-app.yaml");

/// Runs `lb args...`; returns (exit code, stderr).
fn lb(args: &[&str]) -> (i32, String) {
    run(Command::new(lb_binary().expect("lb binary")).args(args))
}

/// Runs `lb args...` as the user nobody, without capabilities; returns (exit
/// code, stderr).
fn lb_unprivileged(args: &[&str]) -> (i32, String) {
    run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(lb_binary().expect("lb binary"))
        .args(args))
}

/// Runs `command`; returns (exit code, stderr).
fn run(command: &mut Command) -> (i32, String) {
    let output = command
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("run lb");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_error(args: &[&str], code: i32, needle: &str) {
    let (status, stderr) = lb(args);
    assert_eq!(status, code, "lb {args:?}: {stderr}");
    let line = stderr
        .lines()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("lb {args:?}: want {needle:?} in {stderr:?}"));
    if code == 1 {
        assert!(
            line.starts_with("lb: "),
            "not lb's one-line error: {stderr:?}"
        );
        assert!(!stderr.contains("backtrace"), "{stderr:?}");
    }
}

/// Loads a data path pinned under `root`, attached to no interface: the
/// state the inspection commands read, as an agent leaves it.
fn pin_data_path(root: &Path) {
    let config = DataplaneConfig {
        ring_size: 251,
        max_services: 4,
        max_flows: 1024,
        pin_dir: Some(root.to_owned()),
        ..Default::default()
    };
    drop(Dataplane::load(config).expect("load the data path"));
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Where the pinned state cannot be looked at (bpffs is often mounted mode
/// 0700), a user without privileges is told so: a refused look was taken for
/// a missing pin ("nothing is loaded") or an empty directory (`lb down`:
/// "nothing pinned").
#[test]
fn without_privileges_the_commands_say_so_not_that_nothing_is_pinned() {
    let outer = PinRoot::new("cli-denied");
    let root = outer.path().join("lb");
    pin_data_path(&root);
    let state = PinDir::new(&root).state();
    let bpffs = root.display().to_string();
    for (what, closed) in [
        ("its parent", outer.path()),
        ("--bpffs", &root),
        ("the state directory", &state),
    ] {
        set_mode(closed, 0o700);
        for command in ["services", "down"] {
            let args = [command, "--bpffs", &bpffs];
            let (status, stderr) = lb_unprivileged(&args);
            assert_eq!(status, 1, "{what} of mode 0700, lb {args:?}: {stderr:?}");
            assert!(
                stderr.starts_with("lb: ") && stderr.contains("run as root"),
                "{what} of mode 0700, lb {args:?}: {stderr:?}"
            );
        }
        set_mode(closed, 0o755);
    }
    assert!(
        PinDir::new(&root).exists(),
        "an unprivileged `lb down` removed the state"
    );
}

/// Waits up to `patience` for `child` to exit; kills it if it does not.
fn exit_within(child: &mut Child, patience: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait for lb") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill lb");
    child.wait().expect("reap lb");
    None
}

/// A reader that stops reading (`lb stats --watch | head`) ends a watch at
/// its next sample, quietly and successfully: it neither panics (Rust
/// ignores SIGPIPE, so `print!` panics instead) nor samples on for no one.
#[test]
fn a_watch_ends_quietly_when_its_reader_stops_reading() {
    let root = PinRoot::new("cli-pipe");
    pin_data_path(root.path());
    for (form, first_line) in [(&["--json"][..], "{"), (&[], "packets/s")] {
        let mut watch = Command::new(lb_binary().expect("lb binary"))
            .args(["stats", "--watch", "--interval", "0.1", "--bpffs"])
            .arg(root.path())
            .args(form)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lb stats --watch");
        let mut reader = BufReader::new(watch.stdout.take().expect("stdout"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("a first line");
        assert!(line.contains(first_line), "{form:?}: {line:?}");
        drop(reader);
        let status = exit_within(&mut watch, Duration::from_secs(5));
        let mut stderr = String::new();
        watch
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        assert!(
            status.is_some_and(|status| status.success()) && !stderr.contains("panicked"),
            "lb stats --watch {form:?} after its reader left: {status:?}, {stderr:?}"
        );
    }
}

/// `lb agent --iface IFACE --manifests EXAMPLE` and `extra`.
fn agent<'a>(iface: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["agent", "--iface", iface, "--manifests", EXAMPLE];
    args.extend_from_slice(extra);
    args
}

#[test]
fn agent_names_a_missing_interface_and_leaves_no_pins() {
    let pins = format!("/sys/fs/bpf/lb-cli-test-{}", std::process::id());
    assert_error(
        &agent("nosuch0", &["--bpffs", &pins]),
        1,
        "interface nosuch0 does not exist",
    );
    assert!(!Path::new(&pins).exists(), "pins left behind at {pins}");
}

#[test]
fn agent_rejects_bad_settings_before_touching_the_kernel() {
    for (case, (extra, code, needle)) in [
        (&["--vip-pool", "198.51.100.0/33"][..], 1, "--vip-pool"),
        (
            &["--ring-size", "100"][..],
            1,
            "ring size 100 must be a prime",
        ),
        (&["--ring-size", "many"][..], 2, "invalid value 'many'"),
        (
            &["--max-flows", "10"][..],
            1,
            "max flows 10 must be at least 1024",
        ),
        (
            &["--node-address-type", "Hostname"][..],
            2,
            "invalid value 'Hostname' for '--node-address-type <TYPE>'",
        ),
        (
            &["--bgp-hold-time", "2"][..],
            2,
            "'--bgp-hold-time <SECONDS>': 2s: 0 or 3 to 65535",
        ),
        (
            &["--bfd-multiplier", "0"][..],
            2,
            "'--bfd-multiplier <N>': 0 is not in 1..=255",
        ),
        (
            &["--health-timeout", "0"][..],
            2,
            "\"0\" must be more than 0",
        ),
        (
            &["--health-fall", "0"][..],
            2,
            "'--health-fall <N>': 0 is not in 1..",
        ),
        (
            &["--health-rise", "0"][..],
            2,
            "'--health-rise <N>': 0 is not in 1..",
        ),
        (
            &["--leader-election-lease-duration", "1500ms"][..],
            2,
            "\"1500ms\" is not a whole number of seconds from 2s to 24h",
        ),
        (
            &["--leader-elect", "maybe"][..],
            2,
            "invalid value 'maybe' for '--leader-elect <BOOL>'",
        ),
        (&["--identity", ""][..], 1, "--identity: must not be empty"),
    ]
    .into_iter()
    .enumerate()
    {
        let pins = format!("/sys/fs/bpf/lb-cli-bad-{}-{case}", std::process::id());
        let mut extra = extra.to_vec();
        extra.extend(["--bpffs", pins.as_str()]);
        assert_error(&agent("lo", &extra), code, needle);
        assert!(!Path::new(&pins).exists(), "{extra:?}: pins left at {pins}");
        let lo = Command::new("ip")
            .args(["-j", "link", "show", "dev", "lo"])
            .output()
            .expect("ip link");
        assert!(
            !String::from_utf8_lossy(&lo.stdout).contains("\"xdp\""),
            "{extra:?}: XDP attached to the host's lo"
        );
    }
}

#[test]
fn agent_rejects_bad_bgp_settings_before_touching_the_kernel() {
    let pins = format!("/sys/fs/bpf/lb-cli-bgp-{}", std::process::id());
    let bgp = |extra: &[&'static str]| -> Vec<String> {
        let mut args = vec!["--bpffs", pins.as_str(), "--announce", "bgp"];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect()
    };
    for (extra, needle) in [
        (
            bgp(&["--bgp-asn", "64512", "--bgp-peer", "10.1.0.1"]),
            "--bgp-peer 10.1.0.1: no AS: write ADDR@ASN",
        ),
        (
            bgp(&["--bgp-asn", "4294967296", "--bgp-peer", "10.1.0.1@64500"]),
            "--bgp-asn 4294967296: an AS number is 1 to 4294967295",
        ),
        (
            bgp(&["--bgp-asn", "64512", "--bgp-peer", "10.1.0.1@0"]),
            "--bgp-peer 10.1.0.1@0: an AS number is 1 to 4294967295",
        ),
        (
            bgp(&["--bgp-peer", "10.1.0.1@64500"]),
            "--announce bgp needs --bgp-asn",
        ),
        (
            bgp(&["--bgp-asn", "64512", "--bgp-peer", "fe80::1@64500"]),
            "--bgp-peer fe80::1@64500: a link-local address needs an interface",
        ),
        (
            bgp(&[
                "--bgp-asn",
                "64512",
                "--bgp-peer",
                "10.1.0.1@64500",
                "--bgp-peer",
                "10.1.0.1@64501",
            ]),
            "--bgp-peer 10.1.0.1@64501: 10.1.0.1 is a peer already (--bgp-peer 10.1.0.1@64500)",
        ),
        (
            bgp(&[
                "--bgp-asn",
                "64512",
                "--bgp-peer",
                "10.1.0.1@64500",
                "--bird",
                "/nonexistent/bird",
            ]),
            "/nonexistent/bird not found: install bird2 (apt-get install bird2) or pass --bird PATH",
        ),
        (
            vec![
                "--bpffs".to_owned(),
                pins.clone(),
                "--bgp-asn".to_owned(),
                "64512".to_owned(),
            ],
            "--bgp-asn is for --announce bgp",
        ),
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        assert_error(&agent("lo", &extra), 1, needle);
    }
    assert!(!Path::new(&pins).exists(), "pins left behind at {pins}");
}

/// A config file of its own for `lb agent --config`, removed when dropped.
struct ConfigFile(String);

impl ConfigFile {
    fn new(tag: &str, yaml: &str) -> Self {
        let path = std::env::temp_dir().join(format!("lb-cli-{tag}-{}.yaml", std::process::id()));
        std::fs::write(&path, yaml).expect("config file");
        Self(path.display().to_string())
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn agent_config_file_errors_name_the_file_and_key_in_one_line() {
    let pins = format!("/sys/fs/bpf/lb-cli-config-{}", std::process::id());
    for (tag, yaml, want) in [
        (
            "unknown",
            "ifaces: [lo]\n",
            r#"unknown key "ifaces" (did you mean "iface"?)"#,
        ),
        (
            "value",
            "ring-size: x\n",
            r#"ring-size: invalid value "x": invalid digit found in string"#,
        ),
    ] {
        let yaml = format!("iface: [lo]\nmanifests: {EXAMPLE}\nbpffs: {pins}\n{yaml}");
        let config = ConfigFile::new(tag, &yaml);
        let (status, stderr) = lb(&["agent", "--config", &config.0]);
        assert_eq!(status, 1, "{yaml}: {stderr}");
        assert_eq!(stderr, format!("lb: {}: {want}\n", config.0), "{yaml}");
    }
    assert!(!Path::new(&pins).exists(), "pins left behind at {pins}");
}

#[test]
fn agent_takes_flags_from_its_config_file_and_the_command_line_wins() {
    let pins = format!("/sys/fs/bpf/lb-cli-config-ok-{}", std::process::id());
    let config = ConfigFile::new(
        "works",
        &format!("iface: [nosuch0]\nmanifests: {EXAMPLE}\nbpffs: {pins}\n"),
    );
    let from_file = ["agent", "--config", &config.0];
    assert_error(&from_file, 1, "interface nosuch0 does not exist");
    let overridden = [&from_file[..], &["--iface", "nosuch1"]].concat();
    assert_error(&overridden, 1, "interface nosuch1 does not exist");
    // Another source on the command line replaces the file's manifests
    // (they are alternatives: given together, clap refuses them).
    let other_source = [&from_file[..], &["--kubeconfig", "/nonexistent/kubeconfig"]].concat();
    assert_error(&other_source, 1, "/nonexistent/kubeconfig");
    assert!(!Path::new(&pins).exists(), "pins left behind at {pins}");
}

#[test]
fn stats_names_a_bad_interval() {
    for (interval, needle) in [
        ("nan", "'--interval <DURATION>': \"nan\" is not a duration"),
        (
            "0.05",
            "'--interval <DURATION>': \"0.05\" is not between 0.1s and 1h",
        ),
        (
            "2h",
            "'--interval <DURATION>': \"2h\" is not between 0.1s and 1h",
        ),
    ] {
        assert_error(&["stats", "--interval", interval], 2, needle);
    }
}

/// A trace of a client and a VIP of different families describes no packet:
/// refused before anything is read.
#[test]
fn trace_refuses_mixed_families() {
    assert_error(
        &["trace", "10.0.0.2:40000", "[2001:db8::10]:80"],
        1,
        "CLIENT 10.0.0.2:40000 and VIP [2001:db8::10]:80 are of different IP families",
    );
}

#[test]
fn inspection_says_when_nothing_is_loaded() {
    for command in ["services", "backends", "stats"] {
        assert_error(
            &[command, "--bpffs", "/sys/fs/bpf/lb-nothing-here"],
            1,
            "nothing is loaded at /sys/fs/bpf/lb-nothing-here",
        );
    }
}

#[test]
fn state_of_another_layout_is_refused_not_misread() {
    let root = format!("/sys/fs/bpf/lb-layout-test-{}", std::process::id());
    std::fs::create_dir_all(format!("{root}/v999")).expect("fake newer layout");
    let refused = "holds pinned state of map layout v999";
    assert_error(&["services", "--bpffs", &root], 1, refused);
    assert_error(&["down", "--bpffs", &root], 1, refused);
    assert_error(&agent("lo", &["--bpffs", &root]), 1, refused);
    assert!(
        Path::new(&format!("{root}/v999")).is_dir(),
        "the other layout's state was touched"
    );
    std::fs::remove_dir_all(&root).expect("cleanup");
}

/// The commands that take `--bpffs`, each with what else it needs.
const BPFFS_COMMANDS: [&[&str]; 10] = [
    &["agent", "--iface", "lo", "--manifests", EXAMPLE],
    &["services"],
    &["backends"],
    &["flows"],
    &["stats"],
    &["trace", "10.0.0.2:40000", "198.51.100.10:80"],
    &["bgp"],
    &["drain"],
    &["drain", "--undo"],
    &["down"],
];

/// Asserts that `stderr` is the one line saying `root` lies on no bpffs,
/// with the way out: mount one at `mount_point` or use another `--bpffs`.
fn assert_not_bpffs(what: &str, (status, stderr): (i32, String), root: &str, mount_point: &str) {
    assert_eq!(status, 1, "{what}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr:?}");
    for needle in [
        format!("lb: {root} is not on a bpffs"),
        format!("`mount -t bpf bpf {mount_point}`"),
        "point --bpffs at a directory on a bpffs".to_owned(),
    ] {
        assert!(
            stderr.contains(&needle),
            "{what}: want {needle:?} in {stderr:?}"
        );
    }
}

#[test]
fn a_bpffs_directory_on_another_file_system_is_refused_with_the_way_out() {
    let existing = std::env::temp_dir().join(format!("lb-not-bpffs-{}", std::process::id()));
    std::fs::create_dir_all(&existing).expect("scratch directory");
    let existing = existing.display().to_string();
    // Not there yet: its nearest existing parent is what must be a bpffs.
    let missing = format!("{existing}/pins");
    for command in BPFFS_COMMANDS {
        for (root, mount_point) in [(&existing, &existing), (&missing, &existing)] {
            let mut args = command.to_vec();
            args.extend(["--bpffs", root]);
            assert_not_bpffs(&format!("lb {args:?}"), lb(&args), root, mount_point);
        }
    }
    assert!(!Path::new(&missing).exists(), "{missing} was created");
    std::fs::remove_dir(&existing).expect("scratch directory left empty");
}

/// `ip netns exec` mounts a sysfs of its own on /sys, where /sys/fs/bpf is a
/// plain directory: the default `--bpffs` is no bpffs there.
#[test]
fn under_ip_netns_exec_the_default_bpffs_is_refused_with_the_way_out() {
    let ns = NetNs::new("lbcli").expect("namespace");
    let lb_path = lb_binary().expect("lb binary");
    for command in BPFFS_COMMANDS {
        let output = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(&lb_path)
            .args(command)
            .output()
            .expect("run lb in the namespace");
        assert_not_bpffs(
            &format!("ip netns exec lb {command:?}"),
            (
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ),
            "/sys/fs/bpf/lb",
            "/sys/fs/bpf",
        );
    }
}

/// Runs `lb args...` expecting success; returns stdout.
fn lb_ok(args: &[&str]) -> String {
    let output = Command::new(lb_binary().expect("lb binary"))
        .args(args)
        .output()
        .expect("run lb");
    assert!(output.status.success(), "lb {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn help_completions_and_man_page_come_from_the_clap_model() {
    let commands = [
        "agent",
        "services",
        "backends",
        "flows",
        "stats",
        "trace",
        "bgp",
        "drain",
        "down",
        "completions",
        "man",
    ];
    let help = lb_ok(&["--help"]);
    // The first word of each line under "Commands:", in order.
    let (_, listing) = help
        .split_once("\nCommands:\n")
        .unwrap_or_else(|| panic!("`lb --help` lists no commands:\n{help}"));
    let listed: Vec<&str> = listing
        .lines()
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(listed[..], [&commands[..], &["help"]].concat(), "{help}");
    for command in commands {
        let command_help = lb_ok(&[command, "--help"]);
        assert!(
            command_help.contains(&format!("Usage: lb {command}")),
            "{command_help}"
        );
    }
    let bash = lb_ok(&["completions", "bash"]);
    assert!(bash.contains("complete -F _lb"), "{bash}");
    for command in commands {
        assert!(
            bash.contains(&format!("lb,{command})")),
            "{command} in {bash}"
        );
    }
    let man = lb_ok(&["man"]);
    assert!(man.contains("\n.TH lb 1 "), "{man}");
    for command in commands {
        // Each command is listed with its page, as roff escapes it.
        assert!(
            man.contains(&format!("\nlb\\-{command}(1)\n")),
            "{command} in {man}"
        );
    }
}
