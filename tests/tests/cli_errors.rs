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

#[test]
fn agent_names_a_missing_interface_and_leaves_no_pins() {
    let pins = format!("/sys/fs/bpf/lb-cli-test-{}", std::process::id());
    assert_error(
        &[
            "agent",
            "--iface",
            "nosuch0",
            "--manifests",
            EXAMPLE,
            "--bpffs",
            &pins,
        ],
        1,
        "interface nosuch0 does not exist",
    );
    assert!(!Path::new(&pins).exists(), "pins left behind at {pins}");
}

#[test]
fn agent_rejects_bad_settings_before_touching_the_kernel() {
    assert_error(
        &[
            "agent",
            "--iface",
            "lo",
            "--manifests",
            EXAMPLE,
            "--vip-pool",
            "198.51.100.0/33",
        ],
        1,
        "--vip-pool",
    );
    assert_error(
        &[
            "agent",
            "--iface",
            "lo",
            "--manifests",
            EXAMPLE,
            "--ring-size",
            "100",
            "--bpffs",
            "/sys/fs/bpf/lb-cli-ring",
        ],
        1,
        "ring size 100 must be a prime",
    );
    assert_error(
        &[
            "agent",
            "--iface",
            "lo",
            "--manifests",
            EXAMPLE,
            "--ring-size",
            "many",
        ],
        2,
        "invalid value 'many'",
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
