//! Bad input to the `lb` binary: one clear line naming the problem, exit status
//! 1 (clap's own usage errors: 2), and nothing left behind.

use std::{path::Path, process::Command};

use lb_tests::agent::lb_binary;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/voting-app.yaml");

/// Runs `lb args...`; returns (exit code, stderr).
fn lb(args: &[&str]) -> (i32, String) {
    let output = Command::new(lb_binary().expect("lb binary"))
        .args(args)
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
    for (extra, code, needle) in [
        (&["--vip-pool", "198.51.100.0/33"][..], 1, "--vip-pool"),
        (
            &["--ring-size", "100", "--bpffs", "/sys/fs/bpf/lb-cli-ring"][..],
            1,
            "ring size 100 must be a prime",
        ),
        (&["--ring-size", "many"][..], 2, "invalid value 'many'"),
        (
            &["--max-flows", "10", "--bpffs", "/sys/fs/bpf/lb-cli-flows"][..],
            1,
            "max flows 10 must be at least 1024",
        ),
    ] {
        assert_error(&agent("lo", extra), code, needle);
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
    let help = lb_ok(&["--help"]);
    for command in [
        "agent",
        "services",
        "backends",
        "flows",
        "stats",
        "trace",
        "down",
        "completions",
        "man",
    ] {
        assert!(
            help.contains(command),
            "`lb --help` lacks {command}:\n{help}"
        );
        let command_help = lb_ok(&[command, "--help"]);
        assert!(command_help.contains("Usage: lb"), "{command_help}");
    }
    let bash = lb_ok(&["completions", "bash"]);
    assert!(
        bash.contains("complete") && bash.contains("trace"),
        "{bash}"
    );
    let man = lb_ok(&["man"]);
    assert!(man.starts_with(".ie") || man.contains(".TH"), "{man}");
    assert!(man.contains("trace"), "the man page lists the commands");
}
