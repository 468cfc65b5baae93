//! The inspection commands: listings as tables for people and JSON for scripts.

use std::{collections::HashMap, io::Write as _, net::SocketAddr, time::Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::{
    catalog::Catalog,
    cli::{BackendsArgs, FlowsArgs, InspectArgs, StatsArgs, TraceArgs, TraceProtocol},
    dataplane::service_key,
    inspect::{self, Snapshot},
    maps::Maps,
    model::{Frontend, Protocol},
};

fn open(args: &InspectArgs) -> Result<(Maps, Snapshot)> {
    let maps = Maps::open_pinned(&args.bpffs)?;
    let snapshot = Snapshot::take(&maps, Catalog::read(&args.bpffs))?;
    Ok((maps, snapshot))
}

/// Fails when `filter` (the service argument `what`) selects no service: an
/// empty listing would read as "no backends" or "no flows".
fn check_service_filter(snapshot: &Snapshot, what: &str, filter: Option<&str>) -> Result<()> {
    if let Some(filter) = filter
        && !snapshot
            .services
            .iter()
            .any(|(frontend, _)| snapshot.service_matches(frontend, filter))
    {
        bail!(
            "{what} {filter:?}: no service is VIP:PORT, VIP:PORT/PROTO or named so \
             (`lb services` lists them)"
        );
    }
    Ok(())
}

/// Prints `rows` as JSON, or as a table of `headers` with `cells` per row.
fn list<T: Serialize>(
    rows: &[T],
    json: bool,
    headers: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    if json {
        return print_json(&rows);
    }
    let table: Vec<Vec<String>> = rows.iter().map(cells).collect();
    print_table(headers, &table)
}

/// Standard output was closed by its reader (`lb flows | head`): the command
/// ends there, quietly and successfully, as `main` takes it.
#[derive(thiserror::Error, Debug)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// Writes `output` to standard output: every command writes there through
/// this, as `print!` panics on a closed pipe (Rust ignores SIGPIPE), and a
/// watch that ignored the error would sample on forever for no reader.
pub fn print(output: impl AsRef<[u8]>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    // Flushed now, so that a closed pipe is seen at this write.
    match out.write_all(output.as_ref()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        result => result.context("writing to standard output"),
    }
}

/// Prints rows as left-aligned columns under `headers`.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) -> Result<()> {
    print(table(headers, rows))
}

/// Rows as left-aligned columns under `headers`, each line ending in a newline.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
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
    out
}

pub fn print_json(value: &impl Serialize) -> Result<()> {
    print(serde_json::to_string_pretty(value)? + "\n")
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.into()
    }
}

pub fn services(args: &InspectArgs) -> Result<()> {
    let (maps, snapshot) = open(args)?;
    let rows = inspect::services(&maps, &snapshot)?;
    list(
        &rows,
        args.json,
        &[
            "NAME", "VIP", "PORT", "PROTO", "BACKENDS", "PACKETS", "BYTES", "FLOWS",
        ],
        |r| {
            vec![
                or_dash(&r.name),
                r.frontend.vip.to_string(),
                r.frontend.port.to_string(),
                r.frontend.protocol.to_string(),
                format!("{}/{}", r.backends_healthy, r.backends_total),
                r.packets.to_string(),
                r.bytes.to_string(),
                r.active_flows.to_string(),
            ]
        },
    )
}

pub fn backends(args: &BackendsArgs) -> Result<()> {
    let (maps, snapshot) = open(&args.inspect)?;
    check_service_filter(&snapshot, "SERVICE", args.service.as_deref())?;
    let rows = inspect::backends(&maps, &snapshot, args.service.as_deref())?;
    list(
        &rows,
        args.inspect.json,
        &[
            "SERVICE", "NODE", "ADDRESS", "PORT", "WEIGHT", "HEALTH", "SHARE", "PACKETS", "BYTES",
            "FLOWS",
        ],
        |r| {
            vec![
                if r.service_name.is_empty() {
                    r.frontend.to_string()
                } else {
                    r.service_name.clone()
                },
                or_dash(&r.node),
                r.address.to_string(),
                r.port.to_string(),
                r.weight.map_or("-".into(), |w| w.to_string()),
                r.health.to_owned(),
                format!("{:.1}%", r.share * 100.0),
                r.packets.to_string(),
                r.bytes.to_string(),
                r.active_flows.to_string(),
            ]
        },
    )
}

pub fn flows(args: &FlowsArgs) -> Result<()> {
    let (_, snapshot) = open(&args.inspect)?;
    check_service_filter(&snapshot, "--service", args.service.as_deref())?;
    let rows = inspect::flows(
        &snapshot,
        args.service.as_deref(),
        args.backend.as_deref(),
        args.limit,
    );
    list(
        &rows,
        args.inspect.json,
        &[
            "CLIENT",
            "VIP",
            "PROTO",
            "BACKEND",
            "NODE",
            "AGE",
            "LAST SEEN",
            "PACKETS",
        ],
        |r| {
            vec![
                r.client.to_string(),
                r.vip.to_string(),
                r.protocol.to_owned(),
                r.backend.to_string(),
                or_dash(&r.node),
                format!("{:.1}s", r.age_seconds),
                format!("{:.1}s", r.last_seen_seconds),
                r.packets.to_string(),
            ]
        },
    )
}

pub fn trace(args: &TraceArgs) -> Result<()> {
    if args.client.is_ipv4() != args.vip.is_ipv4() {
        bail!(
            "CLIENT {} and VIP {} are of different IP families: no packet has both",
            args.client,
            args.vip
        );
    }
    let (maps, snapshot) = open(&args.inspect)?;
    let protocol = match args.proto {
        TraceProtocol::Tcp => Protocol::Tcp,
        TraceProtocol::Udp => Protocol::Udp,
    };
    let report = inspect::trace(&maps, &snapshot, args.client, args.vip, protocol)?;
    if args.inspect.json {
        return print_json(&report);
    }
    let mut lines = vec![format!(
        "{} -> {} ({})",
        report.client, report.vip, report.protocol
    )];
    if let Some(service) = &report.service {
        lines.push(format!("service:   {service}"));
    }
    if let Some(backend) = report.new_flow_backend {
        let node = report.new_flow_node.as_deref().unwrap_or("-");
        lines.push(format!("new flow:  {backend} ({node})"));
    }
    if let Some(pinned) = report.pinned_backend {
        lines.push(format!("flow entry: {pinned}"));
    }
    lines.push(format!("verdict:   {}", report.verdict));
    print(lines.join("\n") + "\n")
}

/// One sample of every counter, for computing rates.
struct Sample {
    at: Instant,
    global: std::collections::BTreeMap<&'static str, u64>,
    services: Vec<inspect::ServiceRow>,
    snapshot: Snapshot,
}

fn sample(args: &InspectArgs) -> Result<Sample> {
    let (maps, snapshot) = open(args)?;
    Ok(Sample {
        at: Instant::now(),
        global: inspect::global(&maps)?,
        services: inspect::services(&maps, &snapshot)?,
        snapshot,
    })
}

#[derive(Serialize)]
struct Rates {
    interval_seconds: f64,
    packets_per_second: f64,
    new_flows_per_second: f64,
    services: Vec<ServiceRate>,
    /// Counters since the program was loaded, by name.
    totals: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct ServiceRate {
    service: String,
    vip: SocketAddr,
    protocol: Protocol,
    packets_per_second: f64,
    bits_per_second: f64,
    /// Flows created since the last sample that are still in the flow table.
    new_flows_per_second: f64,
    active_flows: u64,
}

fn rates(before: &Sample, after: &Sample) -> Rates {
    let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let delta = |name: &str| {
        after
            .global
            .get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.global.get(name).copied().unwrap_or(0)) as f64
            / seconds
    };
    // Indexed once: a sample lists every service and reads every flow.
    let earlier: HashMap<(u32, Frontend), (u64, u64)> = before
        .services
        .iter()
        .map(|s| ((s.id, s.frontend), (s.packets, s.bytes)))
        .collect();
    let created = after.snapshot.flows_created_since(before.snapshot.now_ns);
    let services = after
        .services
        .iter()
        .map(|now| {
            let (packets, bytes) = earlier
                .get(&(now.id, now.frontend))
                .copied()
                .unwrap_or((0, 0));
            ServiceRate {
                service: now.name.clone(),
                vip: SocketAddr::new(now.frontend.vip, now.frontend.port),
                protocol: now.frontend.protocol,
                packets_per_second: now.packets.saturating_sub(packets) as f64 / seconds,
                bits_per_second: now.bytes.saturating_sub(bytes) as f64 * 8.0 / seconds,
                new_flows_per_second: created
                    .get(&service_key(&now.frontend))
                    .copied()
                    .unwrap_or(0) as f64
                    / seconds,
                active_flows: now.active_flows,
            }
        })
        .collect();
    Rates {
        interval_seconds: seconds,
        packets_per_second: delta("rx"),
        new_flows_per_second: delta("new_flows"),
        services,
        totals: after.global.clone(),
    }
}

/// The table form of one sample.
fn render(rates: &Rates) -> String {
    let summary = format!(
        "packets/s {:.0}   new flows/s {:.0}   (interval {:.1}s)\n\n",
        rates.packets_per_second, rates.new_flows_per_second, rates.interval_seconds
    );
    let services: Vec<Vec<String>> = rates
        .services
        .iter()
        .map(|s| {
            vec![
                or_dash(&s.service),
                format!("{}/{}", s.vip, s.protocol),
                format!("{:.0}", s.packets_per_second),
                format!("{:.0}", s.bits_per_second),
                format!("{:.0}", s.new_flows_per_second),
                s.active_flows.to_string(),
            ]
        })
        .collect();
    let totals: Vec<Vec<String>> = rates
        .totals
        .iter()
        .map(|(name, value)| vec![(*name).to_owned(), value.to_string()])
        .collect();
    summary
        + &table(
            &[
                "SERVICE",
                "FRONTEND",
                "PACKETS/S",
                "BITS/S",
                "NEW FLOWS/S",
                "FLOWS",
            ],
            &services,
        )
        + "\n"
        + &table(&["COUNTER", "TOTAL"], &totals)
}

pub fn stats(args: &StatsArgs) -> Result<()> {
    let interval = args.interval;
    let mut before = sample(&args.inspect)?;
    loop {
        std::thread::sleep(interval);
        let after = sample(&args.inspect)?;
        let rates = rates(&before, &after);
        match (args.inspect.json, args.watch) {
            // One object per line, so a consumer can stream it.
            (true, true) => print(serde_json::to_string(&rates)? + "\n")?,
            (true, false) => print_json(&rates)?,
            // Clear the screen and go home, like top.
            (false, true) => print("\x1b[2J\x1b[H".to_owned() + &render(&rates))?,
            (false, false) => print(render(&rates))?,
        }
        if !args.watch {
            return Ok(());
        }
        before = after;
    }
}
