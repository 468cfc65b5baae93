//! The `lb` command line: the agent and the inspection commands.

use std::{io::Write as _, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{dataplane::DEFAULT_MAX_SERVICES, maglev::DEFAULT_RING_SIZE};

/// Default bpffs directory for the pinned maps.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/lb";

/// lb: an XDP load balancer that gives Kubernetes Services of type LoadBalancer
/// a real external IP.
#[derive(Parser, Debug)]
#[command(name = "lb", version)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent in the foreground: attach the XDP program and keep it in step
    /// with the manifests until SIGINT or SIGTERM, then detach.
    Agent(AgentArgs),
    /// List the services the data path serves.
    Services(InspectArgs),
    /// List every service's backends with their share of the Maglev table.
    Backends(InspectArgs),
    /// Show the global packet counters.
    Stats(InspectArgs),
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Interface to attach to (repeat for two-arm: client side and node side).
    #[arg(long = "iface", required = true, value_name = "IF")]
    pub interfaces: Vec<String>,
    /// YAML file or directory of Kubernetes Services and Nodes; re-read on change
    /// and on SIGHUP.
    #[arg(long, value_name = "PATH")]
    pub manifests: PathBuf,
    /// CIDR to assign VIPs from to Services that request none.
    #[arg(long, value_name = "CIDR")]
    pub vip_pool: Option<String>,
    /// Maglev table size per service (a prime); each service costs 8 bytes per entry.
    #[arg(long, default_value_t = DEFAULT_RING_SIZE)]
    pub ring_size: u32,
    /// How many services the Maglev map has room for.
    #[arg(long, default_value_t = DEFAULT_MAX_SERVICES)]
    pub max_services: u32,
    /// bpffs directory to pin the maps under.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// bpffs directory the agent pinned its maps under.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Prints rows as left-aligned columns under `headers`.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut out = String::new();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    // A closed pipe (`lb backends | head`) is not worth a panic.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
}
