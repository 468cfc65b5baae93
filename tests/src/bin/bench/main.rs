//! `lb-bench` (run by `cargo xtask bench`): lb's data path measured side by side
//! with what users would run instead, in one run, as ratios.
//!
//! The parts: the in-kernel cost per packet against reference XDP programs
//! ([`kernel`]), end to end through network namespaces against iptables DNAT and
//! HAProxy ([`e2e`]), the quality of the Maglev tables ([`maglev`]), the
//! agent at scale ([`control_plane`]) and the stall of long-lived streams when
//! one of two lb hosts dies ([`failover`]). The results are printed as tables
//! and written to BENCHMARKS.md.

mod announced;
mod contestants;
mod control_plane;
mod e2e;
mod failover;
mod flood;
mod httpd;
mod interrupt;
mod kernel;
mod maglev;
mod packet_socket;
mod report;
mod stats;
mod wrk;

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use crate::report::{Machine, Section};

/// Benchmarks lb against the kernel's floor, iptables DNAT and HAProxy, prints
/// the results and writes them to BENCHMARKS.md. Needs root (BPF, namespaces).
#[derive(Parser, Debug)]
#[command(name = "lb-bench")]
struct Args {
    /// A short run (fewer and shorter measurements) to see that everything
    /// works; its figures are noisier.
    #[arg(long)]
    quick: bool,
    /// Run only this part.
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Runs per figure; each figure is their median [default: 5, 3 with --quick].
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// Where to write the Markdown report [default: BENCHMARKS.md for a full
    /// run; --quick and --only runs write nothing unless given this].
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Skip filling the flow table to capacity (the slowest kernel scenario).
    #[arg(long)]
    no_full_flow_table: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    /// In-kernel cost per packet (BPF_PROG_TEST_RUN).
    Kernel,
    /// End to end through network namespaces: lb, iptables DNAT, HAProxy.
    E2e,
    /// Maglev table build time, balance and disruption.
    Maglev,
    /// The agent against a fake API server with 10,000 Services.
    ControlPlane,
    /// Streams over two lb hosts (BGP, BFD, DSR) while one of them dies.
    Failover,
}

/// jemalloc, as the agent has: the fake API server in this process shares
/// the CPUs with the agent it serves, and with glibc's allocator its copies
/// of 10,000 Services took CPU time that a real API server, on machines of
/// its own, would not.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let args = Args::parse();
    interrupt::install();
    match run(&args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("lb-bench failed: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let runs = args.runs.unwrap_or(if args.quick { 3 } else { 5 });
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let wants = |part: Part| args.only.is_none_or(|only| only == part);
    let needs_root = [Part::Kernel, Part::E2e, Part::ControlPlane, Part::Failover];
    if needs_root.into_iter().any(wants) && !is_root() {
        bail!(
            "lb-bench needs root for BPF and network namespaces (maglev alone does not: --only maglev)"
        );
    }
    let machine = Machine::detect();
    let mut sections: Vec<Section> = Vec::new();
    if wants(Part::Kernel) {
        let options = kernel::Options {
            runs,
            calls: if args.quick { 5_000 } else { 20_000 },
            repeat: if args.quick { 20_000 } else { 100_000 },
            batches: if args.quick { 2 } else { 5 },
            full_flow_table: !args.no_full_flow_table,
        };
        sections.push(kernel::run(options).context("in-kernel benchmark")?);
        interrupt::check()?;
    }
    if wants(Part::E2e) {
        let options = e2e::Options {
            runs,
            seconds: if args.quick { 1.0 } else { 4.0 },
        };
        sections.push(e2e::run(options).context("end-to-end benchmark")?);
        interrupt::check()?;
    }
    if wants(Part::Maglev) {
        sections.push(maglev::run(runs).context("Maglev benchmark")?);
        interrupt::check()?;
    }
    if wants(Part::ControlPlane) {
        sections.push(control_plane_section(args.quick)?);
        interrupt::check()?;
    }
    if wants(Part::Failover) {
        // One kill per run: each is a figure's sample.
        sections.push(failover::run(runs).context("failover benchmark")?);
    }
    let runtime = format!("{:.0} s", started.elapsed().as_secs_f64());
    println!("\n{}", report::text(&sections));
    println!("runtime: {runtime}");
    let output = match (&args.output, args.quick || args.only.is_some()) {
        (Some(path), _) => Some(path.clone()),
        (None, false) => Some(PathBuf::from("BENCHMARKS.md")),
        (None, true) => None,
    };
    if let Some(path) = output {
        let text = report::markdown(&machine, &command_line(), &runtime, &sections);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The control-plane figures as a report section.
fn control_plane_section(quick: bool) -> Result<Section> {
    let (figures, goals) = control_plane::run(quick).context("control-plane benchmark")?;
    let mut table = report::Table::new(
        if quick {
            "Control plane: 1,000 Services over 100 Nodes (--quick)"
        } else {
            "Control plane: 10,000 Services over 1,000 Nodes"
        },
        &["figure", "value"],
    );
    for (label, value) in figures {
        table.row(vec![label, value]);
    }
    Ok(Section {
        title: "Control plane".to_owned(),
        method: vec![
            "The real `lb agent --kubeconfig` against the in-process fake API server, which \
             holds the Services (externalTrafficPolicy Local, 3 endpoints each), their \
             EndpointSlices and the Nodes. The agent runs with `--max-services` sized to the \
             cluster and `--ring-size 251` (a 40 MB Maglev map for 10,000 service ports), so \
             every Service gets its VIP, its status and its place in the data path. \
             Announced: the agent announces with ARP (the default), and a packet socket on the \
             far end of its interface notes when the last VIP was first heard of in a \
             gratuitous ARP. Latency: an EndpointSlice \
             change in the API server until the Maglev map changed, measured once the agent's \
             start is over (its IPAllocated Events, which it records after the statuses, all \
             in). Each change follows the \
             last as soon as the map has it, a burst to the agent: it reads the cluster at most \
             every 100 ms, so most of each latency is that wait. Memory: the agent's VmHWM, \
             which counts the 40 MB Maglev map the agent maps and writes (kernel memory the \
             map holds whether mapped or not)."
                .to_owned(),
        ],
        tables: vec![table],
        notes: Vec::new(),
        goals,
    })
}

/// How this run was started, for the report: `cargo xtask bench ...` when
/// xtask started it (cargo's environment for the xtask package is inherited),
/// otherwise the command line itself.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let program = if std::env::var("CARGO_PKG_NAME").is_ok_and(|name| name == "xtask") {
        "cargo xtask bench".to_owned()
    } else {
        std::env::args()
            .next()
            .unwrap_or_else(|| "lb-bench".to_owned())
    };
    std::iter::once(program)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
