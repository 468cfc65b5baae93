use std::io::{IsTerminal as _, Write as _};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use lb::{
    agent::{self, AgentOptions},
    cli::{AgentArgs, Cli, Command, InspectArgs, print_table},
    dataplane::DataplaneConfig,
    inspect,
    k8s::source::{ManifestSource, Source},
    maps::Maps,
    vip_pool::VipPool,
};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if let Err(e) = run(cli) {
        // One line naming the problem and its causes, not a backtrace.
        eprintln!("lb: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => run_agent(args),
        Command::Services(args) => show_services(&args),
        Command::Backends(args) => show_backends(&args),
        Command::Stats(args) => show_stats(&args),
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run_agent(args: AgentArgs) -> Result<()> {
    let vip_pool = args
        .vip_pool
        .as_deref()
        .map(VipPool::parse)
        .transpose()
        .context("--vip-pool")?;
    let options = AgentOptions {
        interfaces: args.interfaces,
        source: Source::Manifests(ManifestSource::new(args.manifests)),
        vip_pool,
        dataplane: DataplaneConfig {
            ring_size: args.ring_size,
            max_services: args.max_services,
            pin_dir: Some(args.bpffs),
        },
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(agent::run(options))
}

fn open(args: &InspectArgs) -> Result<Maps> {
    Ok(Maps::open_pinned(&args.bpffs)?)
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    // A closed pipe (`lb stats --json | head`) is not an error worth a panic.
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    Ok(())
}

fn show_services(args: &InspectArgs) -> Result<()> {
    let rows = inspect::services(&open(args)?)?;
    if args.json {
        return print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.vip.to_string(),
                r.port.to_string(),
                r.protocol.to_owned(),
                r.backends.to_string(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]
        })
        .collect();
    print_table(
        &["VIP", "PORT", "PROTO", "BACKENDS", "PACKETS", "BYTES"],
        &table,
    );
    Ok(())
}

fn show_backends(args: &InspectArgs) -> Result<()> {
    let rows = inspect::backends(&open(args)?)?;
    if args.json {
        return print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                format!("{}:{}", r.address, r.port),
                format!("{:.1}%", r.share * 100.0),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]
        })
        .collect();
    print_table(&["SERVICE", "BACKEND", "SHARE", "PACKETS", "BYTES"], &table);
    Ok(())
}

fn show_stats(args: &InspectArgs) -> Result<()> {
    let counters = inspect::global(&open(args)?)?;
    if args.json {
        return print_json(&counters);
    }
    let table: Vec<Vec<String>> = counters
        .iter()
        .map(|(name, value)| vec![(*name).to_owned(), value.to_string()])
        .collect();
    print_table(&["COUNTER", "VALUE"], &table);
    Ok(())
}
