//! End to end through network namespaces: the same topology, servers and load
//! for every contestant (lb, iptables DNAT, HAProxy), runs interleaved so that
//! drift and other load on the machine affect all of them alike.

use std::{collections::BTreeMap, net::SocketAddrV4, time::Duration};

use anyhow::{Context, Result};
use lb_tests::topology::{self, HOST_IFACE, LB_CLIENT_IFACE};

use crate::{
    contestants::{Contestant, HTTP_PORT, HTTP_WORKERS, Kind, NODE_UDP_PORT, UDP_PORT, VIP, have},
    flood, interrupt,
    report::{Goal, Section, Table, Verdict},
    stats::{CpuTimes, Figure, human, ratio},
    wrk,
};

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub runs: usize,
    /// Length of each flood and each wrk run.
    pub seconds: f64,
}

/// Different client ports in the flood: that many 5-tuples (flows, conntrack
/// entries) for the load balancer to track.
const FLOOD_TUPLES: u16 = 16384;
/// Generator threads, one per CPU on the 2-CPU machines this runs on.
const FLOOD_THREADS: usize = 2;
/// Time for in-flight packets to reach the sinks before they are read.
const SETTLE: Duration = Duration::from_millis(100);
/// wrk's load for throughput and loaded latency: closed loop, so this many
/// requests are in flight at any time.
const WRK_CONNECTIONS: usize = 32;
const WRK_THREADS: usize = 2;
/// Unloaded latency: one connection at a time.
const IDLE_CONNECTIONS: usize = 1;

/// The name of the reference row: the lb namespace only routes.
const FORWARDING: &str = "kernel forwarding, no load balancing (reference)";

#[derive(Default)]
struct Samples {
    udp_pps: Vec<f64>,
    udp_sent_pps: Vec<f64>,
    udp_cpu_per_m: Vec<f64>,
    conns: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    cpu_us_per_conn: Vec<f64>,
    idle_p50: Vec<f64>,
    idle_p99: Vec<f64>,
    errors: u64,
    requests: u64,
}

pub fn run(options: Options) -> Result<Section> {
    let mut missing = Vec::new();
    for tool in ["nft", "wrk"] {
        if !have(tool) {
            missing.push(tool);
        }
    }
    anyhow::ensure!(
        missing.is_empty(),
        "missing {}: run `cargo xtask setup` as root",
        missing.join(", ")
    );
    let mut contestants = Vec::new();
    let mut skipped = Vec::new();
    for kind in Kind::ALL {
        if let Some(tool) = kind.tools().iter().find(|tool| !have(tool)) {
            skipped.push(format!("{}: `{tool}` is not installed", kind.name()));
            continue;
        }
        eprintln!("e2e: setting up {}", kind.name());
        contestants
            .push(Contestant::start(kind).with_context(|| format!("setting up {}", kind.name()))?);
        interrupt::check()?;
    }
    let duration = Duration::from_secs_f64(options.seconds);
    let mut samples: BTreeMap<String, Samples> = BTreeMap::new();
    for run in 0..options.runs {
        for contestant in &contestants {
            if contestant.kind.forwards_udp() {
                eprintln!(
                    "e2e: run {}/{}: UDP flood through {}",
                    run + 1,
                    options.runs,
                    contestant.kind.name()
                );
                let vip = SocketAddrV4::new(VIP, UDP_PORT);
                flood_once(
                    contestant,
                    vip,
                    duration,
                    samples
                        .entry(contestant.kind.name().to_owned())
                        .or_default(),
                )?;
                interrupt::check()?;
            }
        }
        // The reference runs where nothing filters in the lb namespace: in
        // HAProxy's topology (HAProxy only listens on the VIP's TCP port; the
        // others have XDP or conntrack on the path).
        if let Some(plain) = contestants.iter().find(|c| c.kind == Kind::Haproxy) {
            eprintln!(
                "e2e: run {}/{}: UDP flood, plain forwarding",
                run + 1,
                options.runs
            );
            let node = SocketAddrV4::new(topology::node_ip(1), NODE_UDP_PORT);
            flood_once(
                plain,
                node,
                duration,
                samples.entry(FORWARDING.to_owned()).or_default(),
            )?;
            interrupt::check()?;
        }
        for contestant in &contestants {
            eprintln!(
                "e2e: run {}/{}: wrk through {}",
                run + 1,
                options.runs,
                contestant.kind.name()
            );
            let entry = samples
                .entry(contestant.kind.name().to_owned())
                .or_default();
            wrk_once(contestant, duration, entry)?;
            interrupt::check()?;
        }
    }
    section(&contestants, &samples, &skipped, options)
}

fn flood_once(
    contestant: &Contestant,
    dst: SocketAddrV4,
    duration: Duration,
    samples: &mut Samples,
) -> Result<()> {
    let topology = &contestant.topology;
    let frames = flood::frames(
        topology::CLIENT_IP,
        dst,
        FLOOD_TUPLES,
        topology.client.mac(HOST_IFACE)?,
        topology.lb.mac(LB_CLIENT_IFACE)?,
    );
    let delivered = || -> Result<u64> {
        topology
            .nodes
            .iter()
            .map(|node| flood::delivered(&node.ns))
            .sum()
    };
    let before = delivered()?;
    let cpu_before = CpuTimes::now()?;
    let started = std::time::Instant::now();
    let sent = flood::send(
        &topology.client,
        HOST_IFACE,
        frames,
        FLOOD_THREADS,
        duration,
    )?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = CpuTimes::now()?.since(&cpu_before);
    std::thread::sleep(SETTLE);
    let arrived = delivered()? - before;
    anyhow::ensure!(
        arrived > 0,
        "no flood packet reached the nodes through {}; its log:\n{}",
        contestant.kind.name(),
        contestant.log()
    );
    eprintln!(
        "e2e:   {} pps delivered of {} offered, {:.2} CPU s per M packets",
        human(arrived as f64 / elapsed),
        human(sent as f64 / elapsed),
        cpu.kernel() / (arrived as f64 / 1e6)
    );
    samples.udp_pps.push(arrived as f64 / elapsed);
    samples.udp_sent_pps.push(sent as f64 / elapsed);
    samples
        .udp_cpu_per_m
        .push(cpu.kernel() / (arrived as f64 / 1e6));
    Ok(())
}

fn wrk_once(contestant: &Contestant, duration: Duration, samples: &mut Samples) -> Result<()> {
    let url = format!("http://{VIP}:{HTTP_PORT}/");
    let client = &contestant.topology.client;
    let cpu_before = CpuTimes::now()?;
    let loaded = wrk::run(client, &url, WRK_THREADS, WRK_CONNECTIONS, duration)?;
    let cpu = CpuTimes::now()?.since(&cpu_before);
    eprintln!(
        "e2e:   {} connections/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        human(loaded.per_second),
        loaded.p50_ms,
        loaded.p99_ms,
        loaded.errors
    );
    samples.conns.push(loaded.per_second);
    samples.p50.push(loaded.p50_ms);
    samples.p99.push(loaded.p99_ms);
    if loaded.requests > 0 {
        samples
            .cpu_us_per_conn
            .push(cpu.busy() * 1e6 / loaded.requests as f64);
    }
    let idle = wrk::run(client, &url, 1, IDLE_CONNECTIONS, duration)?;
    samples.idle_p50.push(idle.p50_ms);
    samples.idle_p99.push(idle.p99_ms);
    samples.errors += loaded.errors + idle.errors;
    samples.requests += loaded.requests + idle.requests;
    Ok(())
}

fn figure(values: &[f64]) -> Option<Figure> {
    Figure::of(values)
}

fn cell(figure: Option<Figure>, decimals: usize) -> String {
    figure.map_or_else(|| "n/a".to_owned(), |f| f.with_range(decimals))
}

fn rate_cell(figure: Option<Figure>) -> String {
    figure.map_or_else(
        || "n/a".to_owned(),
        |f| {
            format!(
                "{} ({}–{})",
                crate::stats::human(f.median),
                crate::stats::human(f.min),
                crate::stats::human(f.max)
            )
        },
    )
}

fn section(
    contestants: &[Contestant],
    samples: &BTreeMap<String, Samples>,
    skipped: &[String],
    options: Options,
) -> Result<Section> {
    let empty = Samples::default();
    let get = |name: &str| samples.get(name).unwrap_or(&empty);
    let lb = get(Kind::Lb.name());
    let median = |v: &[f64]| figure(v).map(|f| f.median);
    let mut rows: Vec<(String, bool)> = contestants
        .iter()
        .map(|c| (c.kind.name().to_owned(), c.kind.forwards_udp()))
        .collect();
    rows.push((FORWARDING.to_owned(), true));

    let mut udp = Table::new(
        "UDP flood: packets/s delivered to the nodes (16,384 5-tuples, 2 generator threads)",
        &[
            "contestant",
            "delivered pps",
            "lb ÷ this",
            "offered pps",
            "kernel CPU s per M packets (whole machine)",
            "lb ÷ this",
            "above kernel forwarding, s per M packets",
            "lb ÷ this (above forwarding)",
        ],
    );
    // What a contestant's packets cost the kernel beyond plain forwarding:
    // per interleaved run, so the machine's state at the time cancels out.
    let marginal = |name: &str| -> Vec<f64> {
        let (own, floor) = (&get(name).udp_cpu_per_m, &get(FORWARDING).udp_cpu_per_m);
        own.iter()
            .zip(floor)
            .map(|(own, floor)| own - floor)
            .collect()
    };
    for (name, forwards) in &rows {
        let s = get(name);
        if !forwards {
            udp.row(vec![
                name.clone(),
                "n/a (not a packet forwarder)".to_owned(),
                "n/a".to_owned(),
                "n/a".to_owned(),
                "n/a".to_owned(),
                "n/a".to_owned(),
                "n/a".to_owned(),
                "n/a".to_owned(),
            ]);
            continue;
        }
        let above = (name != FORWARDING).then(|| marginal(name));
        let above = above.as_deref().unwrap_or_default();
        udp.row(vec![
            name.clone(),
            rate_cell(figure(&s.udp_pps)),
            ratio(median(&lb.udp_pps), median(&s.udp_pps)),
            rate_cell(figure(&s.udp_sent_pps)),
            cell(figure(&s.udp_cpu_per_m), 2),
            ratio(median(&lb.udp_cpu_per_m), median(&s.udp_cpu_per_m)),
            cell(figure(above), 2),
            ratio(median(&marginal(Kind::Lb.name())), median(above)),
        ]);
    }

    let mut http = Table::new(
        &format!(
            "HTTP through the VIP with wrk: a new TCP connection per request, {WRK_CONNECTIONS} \
             connections (loaded) and 1 connection (idle)"
        ),
        &[
            "contestant",
            "connections/s",
            "lb ÷ this",
            "p50 ms",
            "p99 ms",
            "lb ÷ this (p50, p99)",
            "CPU µs per connection",
            "idle p50 ms",
            "idle p99 ms",
            "lb ÷ this (idle p50, p99)",
        ],
    );
    for contestant in contestants {
        let s = get(contestant.kind.name());
        http.row(vec![
            contestant.kind.name().to_owned(),
            rate_cell(figure(&s.conns)),
            ratio(median(&lb.conns), median(&s.conns)),
            cell(figure(&s.p50), 2),
            cell(figure(&s.p99), 2),
            format!(
                "{}, {}",
                ratio(median(&lb.p50), median(&s.p50)),
                ratio(median(&lb.p99), median(&s.p99))
            ),
            cell(figure(&s.cpu_us_per_conn), 0),
            cell(figure(&s.idle_p50), 3),
            cell(figure(&s.idle_p99), 3),
            format!(
                "{}, {}",
                ratio(median(&lb.idle_p50), median(&s.idle_p50)),
                ratio(median(&lb.idle_p99), median(&s.idle_p99))
            ),
        ]);
    }

    let mut notes = Vec::new();
    for contestant in contestants {
        let s = get(contestant.kind.name());
        if s.requests > 0 && s.errors * 100 > s.requests {
            notes.push(format!(
                "{}: wrk reported {} errors in {} requests.",
                contestant.kind.name(),
                s.errors,
                s.requests
            ));
        }
    }
    for contestant in contestants {
        if let Some(counters) = contestant.lb_counters()? {
            let list: Vec<String> = counters
                .iter()
                .map(|(name, value)| format!("{name} {value}"))
                .collect();
            notes.push(format!(
                "lb's own counters after all runs (every packet the XDP program saw, by \
                 outcome): {}.",
                list.join(", ")
            ));
        }
    }
    for line in skipped {
        notes.push(format!("Skipped {line}."));
    }

    let pps = |kind: Kind| median(&get(kind.name()).udp_pps);
    let conns = |kind: Kind| median(&get(kind.name()).conns);
    let goal = |name: &str, lb: Option<f64>, other: Option<f64>, want: f64, why: &str| -> Goal {
        match (lb, other) {
            (Some(lb), Some(other)) if other > 0.0 => {
                let r = lb / other;
                Goal {
                    goal: name.to_owned(),
                    verdict: Verdict::from_bool(r >= want),
                    measured: format!("{r:.2}x"),
                    why: if r >= want {
                        String::new()
                    } else {
                        why.to_owned()
                    },
                }
            }
            _ => Goal {
                goal: name.to_owned(),
                verdict: Verdict::NotMeasured,
                measured: "n/a".to_owned(),
                why: "a contestant could not be measured (see the notes)".to_owned(),
            },
        }
    };
    let lb_above = median(&marginal(Kind::Lb.name()));
    let iptables_above = median(&marginal(Kind::Iptables.name()));
    let marginal_goal = match (lb_above, iptables_above) {
        (Some(lb), Some(iptables)) if iptables > 0.0 => {
            let r = lb / iptables;
            Goal {
                goal: "lb's kernel CPU per packet above forwarding <= 1/3 of iptables DNAT's"
                    .to_owned(),
                verdict: Verdict::from_bool(r <= 1.0 / 3.0),
                measured: format!(
                    "{r:.2} ({lb:.2} vs {iptables:.2} s per M packets above forwarding)"
                ),
                why: if r <= 1.0 / 3.0 {
                    String::new()
                } else {
                    format!(
                        "lb's share would have to be {:.2} s per M packets; on a veth every \
                         packet is first copied into a page for XDP and becomes an skb again \
                         after the redirect, a cost plain forwarding does not pay and a NIC \
                         driver would not (see above), besides the program itself",
                        iptables / 3.0
                    )
                },
            }
        }
        _ => Goal {
            goal: "lb's kernel CPU per packet above forwarding <= 1/3 of iptables DNAT's"
                .to_owned(),
            verdict: Verdict::NotMeasured,
            measured: "n/a".to_owned(),
            why: "a contestant could not be measured (see the notes)".to_owned(),
        },
    };
    let goals = vec![
        marginal_goal,
        goal(
            "lb ≥ 2x iptables DNAT in packets/s",
            pps(Kind::Lb),
            pps(Kind::Iptables),
            2.0,
            "generator, veths, bridge and node sinks share the same 2 CPUs and cost the same \
             for both, so they dilute the difference between the two forwarders (see the \
             plain-forwarding row)",
        ),
        goal(
            "lb ≥ 5x HAProxy in packets/s (judged on new TCP connections/s: HAProxy does not forward UDP)",
            conns(Kind::Lb),
            conns(Kind::Haproxy),
            5.0,
            "each connection's cost is dominated by wrk and the servers' TCP stacks on the \
             same 2 CPUs; the load balancer's share of it is small",
        ),
    ];

    Ok(Section {
        title: "End to end through network namespaces".to_owned(),
        method: vec![
            "Topology (`lb_tests::topology`, two-arm): client namespace → lb namespace \
             (lbc0, lbn0) → a bridge → three node namespaces. Each contestant gets its own \
             copy; all exist at once and their runs are interleaved. Only the lb namespace \
             differs:\n\
             - **lb (XDP)**: the real `lb agent` attached to lbc0 and lbn0, fed a manifest with \
             one Service (TCP 80 → NodePort 30080, UDP 9000 → NodePort 30090) and the three \
             Nodes.\n\
             - **iptables DNAT**: kube-proxy's iptables mode: a Service chain in the nat table \
             picks a node with `-m statistic --mode random` and DNATs to its NodePort; \
             conntrack un-NATs replies.\n\
             - **HAProxy (TCP mode)**: listening on the VIP (added to the lb namespace's \
             loopback), round robin to the NodePorts, one thread per CPU. It proxies \
             connections and cannot forward UDP packets: n/a there.\n\
             - **kernel forwarding (reference)**: the flood sent to a node's address instead of \
             the VIP, so the lb namespace only routes it (in HAProxy's topology, where nothing \
             filters): the floor of this topology."
                .to_owned(),
            format!(
                "**UDP flood**: {FLOOD_THREADS} threads in the client namespace write prebuilt \
                 frames with {FLOOD_TUPLES} different source ports (valid checksums) onto the \
                 client's veth with AF_PACKET `sendmmsg` for {:.0} s per run; each node counts \
                 and drops them with an nftables rule on its ingress hook. Figure: packets that \
                 reached the nodes per second. CPU: kernel time (system + irq + \
                 softirq) of the whole machine from /proc/stat during the flood, divided by the \
                 packets delivered. Softirq work cannot be attributed to a namespace (it runs on \
                 whatever CPU raised it, mostly the sender's), so every contestant is charged the \
                 same way, generator, veths, bridge and sinks included; user time is left out \
                 because the whole path is kernel work and other users' work on a shared machine \
                 is mostly user time.",
                options.seconds
            ),
            format!(
                "**HTTP**: wrk in the client namespace against http://{VIP}/ for {:.0} s per \
                 run, {WRK_CONNECTIONS} connections over {WRK_THREADS} threads (throughput and \
                 loaded latency) and then 1 connection (idle latency). The node servers \
                 (`httpd.rs`: {} worker threads per node, in-process) close each connection \
                 after one answer, so every request is a new TCP connection: requests/s = new \
                 connections/s. wrk, the servers and the load balancer share the machine's CPUs, \
                 so these figures measure the whole path, not the load balancer alone. CPU per \
                 connection: whole-machine busy time during the loaded run / requests.",
                options.seconds, HTTP_WORKERS
            ),
            "Ratios are lb's figure divided by the contestant's: above 1 is better for lb for \
             rates, below 1 is better for lb for latencies and CPU."
                .to_owned(),
            "What this topology understates: on a veth, a frame a socket sends arrives as an \
             skb, and to run XDP on it the veth first copies it into a page with XDP headroom; \
             the frame lb redirects becomes an skb again at the next veth. A NIC driver runs \
             XDP on its receive buffer before any skb exists. Every packet also crosses the \
             generator, three veth pairs, a bridge and a node's receive path, all on the same \
             two CPUs as the load balancer, so the load balancer is a small part of each \
             packet's cost here; the in-kernel figures above isolate it. The machine is shared \
             with other work (load average in the machine section): runs are interleaved \
             across contestants and the median is taken, and the ranges show the spread."
                .to_owned(),
        ],
        tables: vec![udp, http],
        notes,
        goals,
    })
}
