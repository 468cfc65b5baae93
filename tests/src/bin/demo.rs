//! `cargo xtask demo`: the voting app's two LoadBalancer Services served by lb on
//! a network-namespace topology, driven with curl from a client namespace.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use lb_tests::{
    agent::Agent,
    servers,
    topology::{Layout, Topology},
};

const VIP_POOL: &str = "198.51.100.0/28";
const REQUESTS: usize = 12;
/// (Service, NodePort) pairs from examples/voting-app.yaml.
const APPS: [(&str, u16); 2] = [("vote", 31000), ("result", 31001)];

fn main() {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    // Ctrl-C only raises the flag: the demo stops at its next step and every
    // guard (agent, servers, namespaces) cleans up as it unwinds.
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        eprintln!("demo: cannot handle Ctrl-C: {e}");
    }
    if let Err(e) = run(&interrupted) {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn check(interrupted: &AtomicBool) -> Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

fn run(interrupted: &AtomicBool) -> Result<()> {
    let manifests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/voting-app.yaml");
    println!("== topology: client -> lb (XDP, two-arm) -> node-1, node-2, node-3");
    let topology = Topology::new(Layout::TwoArm, 3).context("building the topology")?;
    let _servers = topology
        .nodes
        .iter()
        .flat_map(|node| {
            APPS.iter().map(move |(app, port)| {
                servers::http_name_server(&node.ns, *port, &format!("{} ({app})", node.name))
            })
        })
        .collect::<Result<Vec<_>>>()
        .context("starting the node servers")?;
    check(interrupted)?;
    println!(
        "== lb agent --manifests {} --vip-pool {VIP_POOL}",
        manifests.display()
    );
    let agent = Agent::start(
        &topology.lb,
        &topology.lb_ifaces(),
        &manifests,
        &["--vip-pool", VIP_POOL],
    )?;
    // Two Services of three nodes each.
    agent.wait_for_backends(Duration::from_secs(20), |rows| rows.len() >= 6)?;
    check(interrupted)?;
    let services = agent.query("services")?;
    println!("{}", lb_table(&agent, "services")?);
    for service in services.as_array().into_iter().flatten() {
        let url = format!(
            "http://{}:{}/",
            service["vip"].as_str().unwrap_or("?"),
            service["port"]
        );
        println!("== {REQUESTS} requests: curl {url}");
        for i in 1..=REQUESTS {
            check(interrupted)?;
            let answer = topology
                .client
                .run(&["curl", "-s", "--max-time", "3", &url])
                .with_context(|| format!("curl {url}"))?;
            println!("  request {i:>2} answered by {}", answer.trim());
        }
    }
    println!("== per-backend counters (lb backends)");
    println!("{}", lb_table(&agent, "backends")?);
    println!("== global counters (lb stats)");
    println!("{}", lb_table(&agent, "stats")?);
    println!("== cleaning up");
    Ok(())
}

/// The CLI's human-readable table, as an operator would see it; an error
/// with `lb`'s standard error when it fails (an empty table is no demo).
fn lb_table(agent: &Agent, command: &str) -> Result<String> {
    agent.command(&[command])
}
