//! The failover stall: sixty long-lived TCP streams over two lb hosts that
//! announce the VIP to a router over BGP with BFD (100 ms x 3) and forward by
//! direct server return; one host dies; how long does the worst-hit stream
//! go without an answer? Each kill gets a fresh segment, so every round
//! starts from two healthy hosts with fresh BFD sessions.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use lb_tests::{
    scale_out::{ActiveActive, Detection, PORT, VIP},
    streams::Streams,
};

use crate::{
    contestants::have,
    interrupt,
    report::{Goal, Section, Table, Verdict},
    stats::Figure,
};

const STREAMS: usize = 60;
const LINE_INTERVAL: Duration = Duration::from_millis(100);
/// The bar the failover test sets: no stream held up this long.
const MAX_STALL: Duration = Duration::from_secs(3);
/// How long the streams run on after the router's route changed: enough for
/// every retransmission the kill caused.
const AFTER: Duration = Duration::from_secs(2);

/// What one kill did.
struct Round {
    /// The longest stall of any stream, in ms.
    stall_ms: f64,
    /// From the kill until the router's route had one next hop, in ms.
    convergence_ms: f64,
    broken: usize,
}

pub fn run(kills: usize) -> Result<Section> {
    ensure!(
        have("bird"),
        "BIRD is not installed: run `cargo xtask setup` as root"
    );
    let mut rounds = Vec::with_capacity(kills);
    for round in 0..kills {
        eprintln!("failover: kill {} of {kills}", round + 1);
        rounds.push(kill_once(round % 2)?);
        interrupt::check()?;
    }
    Ok(section(&rounds))
}

/// Streams over both hosts, host `victim` dies, the streams run on.
fn kill_once(victim: usize) -> Result<Round> {
    let mut bed = ActiveActive::start("bench-failover", "dsr", Detection::Fast)?;
    let vip = SocketAddrV4::new(VIP, PORT).into();
    let streams = Streams::start(&bed.net.client, vip, STREAMS, LINE_INTERVAL)?;
    std::thread::sleep(Duration::from_secs(1));
    let flows = bed.flows_per_host()?;
    ensure!(
        flows.iter().all(|&n| n > 0),
        "the router does not spread the streams: flows per host {flows:?}"
    );
    let killed = Instant::now();
    bed.kill_host(victim)?;
    bed.net.wait_for_next_hops(VIP, 1)?;
    let convergence = killed.elapsed();
    std::thread::sleep(AFTER);
    let reports = streams.stop();
    let stall = reports
        .iter()
        .map(|r| r.longest_stall)
        .max()
        .unwrap_or_default();
    let broken = reports.iter().filter(|r| r.error.is_some()).count();
    eprintln!(
        "failover:   flows per host {flows:?}, route changed after {convergence:?}, \
         longest stall {stall:?}, {broken} broken"
    );
    Ok(Round {
        stall_ms: stall.as_secs_f64() * 1e3,
        convergence_ms: convergence.as_secs_f64() * 1e3,
        broken,
    })
}

fn section(rounds: &[Round]) -> Section {
    let kills = rounds.len();
    let stall = Figure::of(&rounds.iter().map(|r| r.stall_ms).collect::<Vec<_>>());
    let convergence = Figure::of(&rounds.iter().map(|r| r.convergence_ms).collect::<Vec<_>>());
    let broken: usize = rounds.iter().map(|r| r.broken).sum();
    let mut table = Table::new(
        &format!("One of two lb hosts dies, {kills} times ({STREAMS} streams each)"),
        &["figure", "median", "worst", "best"],
    );
    let ms = |figure: &Option<Figure>| match figure {
        Some(f) => [f.median, f.max, f.min]
            .map(|v| format!("{v:.0} ms"))
            .to_vec(),
        None => vec!["n/a".to_owned(); 3],
    };
    let mut row = |label: &str, cells: Vec<String>| {
        table.row([vec![label.to_owned()], cells].concat());
    };
    row("longest stall of any stream", ms(&stall));
    row(
        "router down to one next hop after the kill",
        ms(&convergence),
    );
    let worst = stall.as_ref().map(|f| f.max);
    let met = worst.is_some_and(|w| w < MAX_STALL.as_secs_f64() * 1e3) && broken == 0;
    let goal = Goal {
        goal: format!("a dead lb host breaks no stream and stalls none {MAX_STALL:?}"),
        verdict: match worst {
            Some(_) => Verdict::from_bool(met),
            None => Verdict::NotMeasured,
        },
        measured: format!(
            "worst stall {}, {broken} of {} streams broken",
            worst.map_or_else(|| "n/a".to_owned(), |w| format!("{w:.0} ms")),
            STREAMS * kills
        ),
        why: if met {
            String::new()
        } else {
            "see the failover section".to_owned()
        },
    };
    Section {
        title: "Failover".to_owned(),
        method: vec![format!(
            "The failover test's segment: a client behind a router (BIRD, eBGP, BFD \
             100 ms x 3, ECMP over the 5-tuple), two lb hosts running the real agent with \
             `--announce bgp --forwarding dsr`, three nodes that DNAT the VIP like \
             kube-proxy and answer the client directly. {STREAMS} TCP streams each send a \
             line every {} ms and wait for its echo; a stream's stall is the longest time \
             between two answers. After a second one host dies (its link down, its agent \
             and BIRD SIGKILLed: no withdrawal), alternating between the two; the streams \
             run on for {} s after the router's route changed (polled every 50 ms). The \
             surviving host has no flow entries for the streams it inherits and sends them \
             by Maglev to the node the other chose. Each kill on a fresh segment.",
            LINE_INTERVAL.as_millis(),
            AFTER.as_secs()
        )],
        tables: vec![table],
        notes: vec![format!(
            "{broken} of {} streams broke. A stall is at least the BFD detection time \
             (300 ms) plus TCP's retransmission timeout for the segments sent to the dead \
             host meanwhile.",
            STREAMS * kills
        )],
        goals: vec![goal],
    }
}
