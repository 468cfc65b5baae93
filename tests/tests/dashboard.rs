//! The Grafana dashboard shipped in deploy/grafana asks only for metrics a
//! real agent exports, and shows every packet outcome.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use lb_tests::{
    agent::{Agent, backends_of},
    http,
    manifests::{self, ManifestFile, ServicePort},
    topology::{Layout, Topology},
};
use serde_json::Value;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/lb.json");
const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

/// The metric names of a PromQL expression: identifiers that select series
/// (followed by `{` or `[`) and every `lb_` name, outside string literals.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let unquoted: String = expr
        .split('"')
        .enumerate()
        .map(|(index, part)| if index % 2 == 0 { part } else { "\"\"" })
        .collect();
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = unquoted.as_str();
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        // `$__rate_interval` and the like are Grafana variables.
        let variable = rest[..start].ends_with('$');
        let tail = &rest[start..];
        let end = tail.find(|c| !is_name(c)).unwrap_or(tail.len());
        let (name, after) = tail.split_at(end);
        let selects = after.trim_start().starts_with(['{', '[']);
        if !variable && (selects || name.starts_with("lb_")) {
            names.insert(name.to_owned());
        }
        rest = after;
    }
    names
}

/// Every query of the dashboard (panels and variables) with where it is.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            found.push((format!("panel {:?}", panel["title"]), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["definition"].as_str() {
            found.push((format!("variable {:?}", variable["name"]), query.to_owned()));
        }
    }
    found
}

/// The names of the samples in a Prometheus text exposition.
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The values an `outcome=~"..."` matcher of the dashboard's queries takes:
/// alternatives that are names or have one `.*` in them.
fn outcome_patterns(dashboard: &Value) -> Vec<String> {
    const MATCHER: &str = "outcome=~\"";
    queries(dashboard)
        .into_iter()
        .filter_map(|(_, expr)| {
            let start = expr.find(MATCHER)? + MATCHER.len();
            let end = expr[start..].find('"')? + start;
            Some(expr[start..end].to_owned())
        })
        .flat_map(|alternatives| {
            alternatives
                .split('|')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once(".*") {
        Some((prefix, suffix)) => {
            name.len() >= prefix.len() + suffix.len()
                && name.starts_with(prefix)
                && name.ends_with(suffix)
        }
        None => pattern == name,
    }
}

/// Every outcome a packet can have is on one of the outcome panels: a new
/// one (an answer sent back, say) must not go unseen.
#[test]
fn every_outcome_is_on_the_dashboard() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("dashboard"))
            .expect("JSON");
    let patterns = outcome_patterns(&dashboard);
    assert!(matches("fib_.*_pass", "fib_miss_pass") && !matches("drop_.*", "pass_x"));
    for outcome in lb_common::counters::OUTCOMES {
        let name = lb_common::counters::NAMES[outcome as usize];
        assert!(
            patterns.iter().any(|pattern| matches(pattern, name)),
            "outcome {name} is on no panel ({patterns:?})"
        );
    }
}

#[test]
fn metric_names_are_read_from_expressions() {
    let expr = r#"8 * sum by (service) (rate(lb_x_total{service=~"$service"}[$__rate_interval])) / up[5m] + lb_y"#;
    let want = ["lb_x_total", "lb_y", "up"].map(str::to_owned);
    assert_eq!(metric_names(expr), BTreeSet::from(want));
}

#[test]
fn dashboard_queries_name_only_metrics_the_agent_exports() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("read dashboard"))
            .expect("the dashboard is JSON");
    let datasource = dashboard["templating"]["list"][0].clone();
    assert_eq!(datasource["type"], "datasource", "{datasource}");
    assert_eq!(datasource["query"], "prometheus", "{datasource}");

    let topology = Topology::new(Layout::TwoArm, 1).expect("topology");
    let http = ServicePort::http(80, 31000);
    let service = manifests::load_balancer_service_yaml("web", "dash", VIP, &[http]);
    let manifests = ManifestFile::new(
        "dashboard",
        &manifests::service_and_nodes(service, &topology.nodes),
    )
    .expect("manifest");
    let agent =
        Agent::start(&topology.lb, &topology.lb_ifaces(), manifests.path(), &[]).expect("agent");
    agent
        .wait_for_backends(Duration::from_secs(20), |rows| {
            backends_of(rows, &format!("{VIP}:80/tcp")).len() == 1
        })
        .expect("agent programs the service");
    let (status, metrics) = http::get(
        &topology.lb,
        "127.0.0.1:9641".parse().expect("addr"),
        "/metrics",
    )
    .expect("scrape");
    assert_eq!(status, 200, "{metrics}");
    let exported = exported(&metrics);

    let queries = queries(&dashboard);
    assert!(
        queries
            .iter()
            .any(|(place, _)| place.starts_with("variable")),
        "the dashboard's variables have no query: {queries:?}"
    );
    for (place, expr) in queries {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr:?}");
        for name in names {
            assert!(
                exported.contains(&name),
                "{place}: {name} is not exported by the agent (query {expr:?}); it exports {exported:?}"
            );
        }
    }
}
