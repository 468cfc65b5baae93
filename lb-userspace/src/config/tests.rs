use std::{ffi::OsString, path::PathBuf};

use clap::Parser as _;

use super::*;
use crate::cli::{AgentArgs, Command};

/// Writes `yaml` to a file of its own and returns its path.
fn config_file(test: &str, yaml: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("lb-config-{test}-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).expect("write config");
    path
}

/// `lb agent --config FILE cmdline...` merged and parsed.
fn agent(test: &str, yaml: &str, cmdline: &[&str]) -> Result<AgentArgs, ConfigError> {
    let path = config_file(test, yaml);
    let mut argv: Vec<OsString> = ["lb", "agent", "--config"].map(OsString::from).to_vec();
    argv.push(path.clone().into());
    argv.extend(cmdline.iter().map(OsString::from));
    let merged = with_config_file(argv);
    std::fs::remove_file(&path).expect("remove config");
    match Cli::try_parse_from(merged?)
        .expect("clap parses the merge")
        .command
    {
        Command::Agent(args) => Ok(*args),
        other => panic!("not the agent: {other:?}"),
    }
}

fn error(test: &str, yaml: &str) -> String {
    let error = agent(test, yaml, &[]).expect_err("config is refused");
    let text = error.to_string();
    assert!(!text.contains('\n'), "not one line: {text:?}");
    text
}

const FULL: &str = "
iface: [eth0, eth1]
manifests: /etc/lb/services.yaml
ring-size: 1021
detach-on-exit: true
answer-ping: false
pool: [a=198.51.100.0/28, b=198.51.100.32/28]
health-interval: 5s
announce: none
";

#[test]
fn file_values_are_used_when_the_command_line_says_nothing() {
    let args = agent("file", FULL, &[]).expect("config");
    assert_eq!(args.interfaces, ["eth0", "eth1"]);
    assert_eq!(args.manifests, Some(PathBuf::from("/etc/lb/services.yaml")));
    assert_eq!(args.ring_size, 1021);
    assert!(args.detach_on_exit);
    assert!(!args.answer_ping);
    assert_eq!(args.pools.len(), 2);
    assert_eq!(args.health_interval, std::time::Duration::from_secs(5));
    assert_eq!(args.announce, Some(crate::announce::Announce::None));
    // Keys the file leaves out keep their defaults.
    assert_eq!(args.bpffs, PathBuf::from(crate::cli::DEFAULT_BPFFS));
}

#[test]
fn the_command_line_wins_and_replaces_lists() {
    let cmdline = [
        "--iface",
        "veth9",
        "--ring-size",
        "4093",
        "--pool",
        "c=10.0.0.0/30",
    ];
    let args = agent("override", FULL, &cmdline).expect("config");
    assert_eq!(args.interfaces, ["veth9"]);
    assert_eq!(args.ring_size, 4093);
    assert_eq!(args.pools, ["c=10.0.0.0/30"]);
    assert_eq!(args.manifests, Some(PathBuf::from("/etc/lb/services.yaml")));
}

#[test]
fn a_single_value_serves_a_repeatable_flag_and_an_empty_file_nothing() {
    let args = agent("single", "iface: eth0\nmanifests: /m", &[]).expect("config");
    assert_eq!(args.interfaces, ["eth0"]);
    let args = agent("empty", "# nothing\n", &["--iface", "lo", "--in-cluster"]).expect("empty");
    assert!(args.in_cluster);
}

#[test]
fn without_config_the_command_line_is_untouched() {
    let argv: Vec<OsString> = ["lb", "services", "--json"].map(OsString::from).to_vec();
    assert_eq!(with_config_file(argv.clone()).expect("no config"), argv);
}

#[test]
fn bad_files_name_the_key_and_the_problem() {
    let suffix = |text: String| text.split_once(".yaml: ").expect("path first").1.to_owned();
    for (test, yaml, want) in [
        (
            "unknown",
            "ifaces: [eth0]",
            "unknown key \"ifaces\" (did you mean \"iface\"?)",
        ),
        ("nonsense", "zzzz: 1", "unknown key \"zzzz\""),
        (
            "ringsize",
            "ring-size: x",
            "ring-size: invalid value \"x\": invalid digit found in string",
        ),
        (
            "announce",
            "announce: ospf",
            "announce: invalid value \"ospf\": possible values: arp, bgp, none",
        ),
        (
            "switch",
            "answer-ping: yes",
            "answer-ping: expected true or false",
        ),
        (
            "list",
            "bpffs: [a, b]",
            "bpffs: expected a single value (a string or a number)",
        ),
        (
            "nested",
            "config: other.yaml",
            "config: a config file cannot name another",
        ),
        (
            "notmap",
            "- iface",
            "expected a mapping of flag names to values",
        ),
    ] {
        assert_eq!(suffix(error(test, yaml)), want, "{yaml}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let argv = ["lb", "agent", "--config", "/nonexistent/lb.yaml"].map(OsString::from);
    let error = with_config_file(argv.to_vec()).expect_err("missing file");
    assert!(
        error.to_string().starts_with("/nonexistent/lb.yaml: "),
        "{error}"
    );
}

/// The commented default the Debian package installs as /etc/lb/lb.yaml.
const PACKAGED: &str = include_str!("../../../deploy/debian/lb.yaml");

#[test]
fn the_packaged_config_sets_nothing_and_lists_every_key_with_a_valid_value() {
    let agent = agent_command();
    let nothing_given = agent
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(["agent"])
        .expect("partial parse");
    assert_eq!(
        file_args(&agent, PACKAGED, &nothing_given).expect("as shipped"),
        Vec::<String>::new()
    );

    // Every `#key: value` line with its `#` removed.
    let uncommented: Vec<&str> = PACKAGED
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .filter(|line| line.starts_with(|c: char| c.is_ascii_lowercase()) && line.contains(": "))
        .collect();
    file_args(&agent, &uncommented.join("\n"), &nothing_given).expect("every value is valid");
    let listed: Vec<&str> = uncommented
        .iter()
        .filter_map(|line| line.split(':').next())
        .collect();
    for long in agent.get_arguments().filter_map(Arg::get_long) {
        assert!(
            long == CONFIG || listed.contains(&long),
            "{long} is not in deploy/debian/lb.yaml"
        );
    }
}
