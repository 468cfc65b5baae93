//! The scenarios and cases of the in-kernel benchmark, and the loop that
//! measures them.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{HashMap, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use lb::{
    dataplane::{ATTRIBUTION_OBJECT, Dataplane, DataplaneConfig, Forwarding, REFERENCE_OBJECT},
    model::{Protocol, ServiceSpec},
};
use lb_common::{Flow, FlowKey, FlowKey4, MAX_FLOWS, MAX_SERVICES, counters};
use lb_tests::{packets, specs};

use super::{
    CaseResult, Expect, Options, XDP_PASS, XDP_REDIRECT, XDP_TX,
    bed::{ATTACH_IFACES, Bed, CLIENT, NODES, node_ip},
    check_counters, counters_of, test_run,
};
use crate::{
    report::{Section, Table},
    stats::{Figure, median},
};

pub const FLOOR: &str = "XDP_TX floor";
pub const PARSE: &str = "parse-only";
pub const PASS_THROUGH: &str = "non-VIP pass-through";

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const TCP_PORT: u16 = 80;
const UDP_PORT: u16 = 53;
/// The NodePorts of the services at the VIP.
const NODE_TCP_PORT: u16 = 31000;
const NODE_UDP_PORT: u16 = 31053;
/// Port and NodePort of the self-mapped services (see the module docs): a
/// NodePort of their own, as Kubernetes gives each Service port, so that the
/// VIP's replies are the VIP's.
const SELF_TCP_PORT: u16 = 31100;
const SELF_UDP_PORT: u16 = 31153;
/// Client port of the flows to real VIPs.
const CLIENT_PORT: u16 = 40000;
/// Client port of the flows to self-mapped services (see the module docs).
const SELF_CLIENT_PORT: u16 = 41000;
/// Ring size of the many-services scenario: the Maglev map then takes
/// MAX_SERVICES x 2 slots x 1021 entries x 4 bytes.
const SMALL_RING: u32 = 1021;
const MANY_SERVICES: usize = 10_000;
/// Flow-table fill per CPU beyond its share, so every per-CPU LRU list is full.
const FILL_EXTRA: f64 = 0.02;

/// Where the packets of a per-call case come from.
enum Input {
    /// The same packet every call.
    Same(Vec<u8>),
    /// A TCP SYN from a never-seen client to `dst` every call.
    NewFlows(SocketAddrV4),
}

struct Case<'a> {
    name: String,
    program: &'a Xdp,
    /// The data path whose counters prove the path; `None` for references.
    dataplane: Option<&'a Dataplane>,
    ifindex: u32,
    /// Packets sent on `setup_if` before every measurement, to create the
    /// flow the case needs; not measured.
    setup: Vec<Vec<u8>>,
    setup_if: u32,
    per_call: Option<Input>,
    batched: Option<Vec<u8>>,
    expect: Expect,
}

/// Unique client addresses for new flows: 50,000 ports per address.
struct FlowSource {
    base: u32,
    next: u32,
}

impl FlowSource {
    fn new(base: Ipv4Addr) -> FlowSource {
        FlowSource {
            base: u32::from(base),
            next: 0,
        }
    }

    fn next(&mut self) -> SocketAddrV4 {
        let n = self.next;
        self.next += 1;
        SocketAddrV4::new(
            Ipv4Addr::from(self.base + n / 50_000),
            10_000 + (n % 50_000) as u16,
        )
    }
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// The service at (`vip`, `port`, `protocol`) on the nodes at `backends`,
/// each named after its address.
fn service(
    vip: Ipv4Addr,
    port: u16,
    protocol: Protocol,
    backends: &[(Ipv4Addr, u16)],
) -> ServiceSpec {
    let backends = backends
        .iter()
        .map(|&(ip, port)| specs::backend(format!("{ip}:{port}"), ip, port))
        .collect();
    specs::service(vip, port, protocol, backends)
}

fn all_nodes(port: u16) -> Vec<(Ipv4Addr, u16)> {
    (1..=NODES).map(|i| (node_ip(i), port)).collect()
}

fn load(bed: &Bed, ring_size: u32, max_services: u32, forwarding: Forwarding) -> Result<Dataplane> {
    bed.load(DataplaneConfig {
        ring_size,
        max_services,
        pin_dir: None,
        // Every new flow takes the recorded path this benchmark measures.
        new_flow_limit: 0,
        forwarding,
        ..Default::default()
    })
    .context("loading lb's XDP program")
}

fn cpus() -> usize {
    crate::stats::online_cpus()
}

fn reference<'a>(refs: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    refs.program(name)
        .with_context(|| format!("no program {name} in the reference object"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}

/// The destination backend of a DNAT-ed frame.
fn destination(frame: &[u8]) -> Result<SocketAddrV4> {
    ensure!(frame.len() >= 38, "output frame too short");
    let ip = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
    Ok(sock(ip, u16::from_be_bytes([frame[36], frame[37]])))
}

pub fn measure_all(bed: &Bed, options: Options) -> Result<Section> {
    lb_tests::xdp_bed::pin_to_cpu(cpus() - 1)?;
    let mut refs = Ebpf::load(REFERENCE_OBJECT).context("loading the reference programs")?;
    for name in ["ref_xdp_tx", "ref_parse_only"] {
        let program: &mut Xdp = refs
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
    }
    let floor = reference(&refs, "ref_xdp_tx")?;
    let parse = reference(&refs, "ref_parse_only")?;
    let mut log = Log::default();
    let mut notes = Vec::new();
    let mut flows = FlowSource::new(Ipv4Addr::new(10, 128, 0, 0));

    eprintln!("kernel: main scenario (4 services, M = 16381)");
    let main_dataplane = main_dataplane(bed)?;
    let mut dsr_dataplane = dsr_dataplane(bed)?;
    let (mut cases, backend) = main_cases(bed, &main_dataplane, floor, parse)?;
    cases.extend(dsr_cases(bed, &dsr_dataplane)?);
    let main = measure(&mut cases, options, &mut flows, &mut log)?;
    notes.push(format!(
        "The established and reply cases used the flow of client {CLIENT}:{CLIENT_PORT} to \
         {VIP}:{TCP_PORT}, which Maglev sent to {backend}."
    ));
    notes.push(verifier_note(&main_dataplane)?);

    let mut scaling = Table::new(
        "In-kernel cost vs. services loaded and flow-table occupancy (ns per packet)",
        &[
            "scenario",
            "flows in FLOWS4 afterwards",
            "XDP_TX floor per call",
            "established per call",
            "new flow per call",
            "XDP_TX floor batched",
            "established batched",
        ],
    );
    // The established per-call cost with one service and with many.
    let mut established = Vec::new();
    for services in [1, MANY_SERVICES] {
        eprintln!("kernel: {services} service(s), M = {SMALL_RING}");
        let dataplane = many_services_dataplane(bed, services)?;
        let mut cases = scaling_cases(bed, &dataplane, floor)?;
        let results = measure(&mut cases, options, &mut flows, &mut log)?;
        let occupancy = dataplane.maps().flows.count();
        scaling.row(scaling_row(
            &format!("{services} service(s), M = {SMALL_RING}, max services {MAX_SERVICES}"),
            occupancy,
            &results,
        ));
        established.push(per_call(&results, "established TCP flow"));
    }
    let mut goals = vec![super::ratio_goal(
        format!("established per call with {MANY_SERVICES} services <= 1.1x with one (flat)"),
        established[1],
        (established[0], "one service"),
        1.1,
        "the path is the same; with 10,000 services its SERVICES bucket, key-filter word \
         and counters lie among more memory and miss the cache more often",
    )];
    scaling.row(vec![
        "100,000 services".to_owned(),
        "not possible".to_owned(),
        "n/a".to_owned(),
        "n/a".to_owned(),
        "n/a".to_owned(),
        "n/a".to_owned(),
        "n/a".to_owned(),
    ]);
    notes.push(
        "The scenarios of the second table measure through the self-mapped TCP service \
         (the only service of the one-service scenario), per call and batched; new flows come \
         from unique client addresses and ports."
            .to_owned(),
    );
    notes.push(format!(
        "100,000 services cannot be loaded: the SERVICES hash map has a compile-time \
         capacity of MAX_SERVICES = {MAX_SERVICES} entries, and the Maglev map needs \
         max_services x 2 x M x 4 bytes (two ring slots per service so updates swap whole \
         tables): 100,000 x 2 x 16381 x 4 B = 13.1 GB at the default M, still 817 MB at \
         M = 1021. Serving that many would take a larger SERVICES map and a smaller or \
         shared ring per service."
    ));

    if options.full_flow_table {
        eprintln!("kernel: filling the flow table ({MAX_FLOWS} entries)");
        let dataplane = &main_dataplane;
        let before = dataplane.maps().flows.count();
        let inserted = fill_flows(bed, dataplane)?;
        let filled = dataplane.maps().flows.count();
        notes.push(format!(
            "Full flow table: FLOWS4 held {before} entries after the main scenario; \
             {inserted} more new flows were run through the program (SYNs from unique \
             clients, on every CPU, because the LRU lists are per CPU with \
             MAX_FLOWS / CPUs = {} entries each), after which FLOWS4 held {filled} of \
             MAX_FLOWS = {MAX_FLOWS} entries (counted by iterating the map). Every new \
             flow measured there evicts the least recently used one.",
            MAX_FLOWS as usize / cpus()
        ));
        let mut cases = scaling_cases(bed, dataplane, floor)?;
        let results = measure(&mut cases, options, &mut flows, &mut log)?;
        let occupancy = dataplane.maps().flows.count();
        scaling.row(scaling_row(
            "4 services, M = 16381, flow table full",
            occupancy,
            &results,
        ));
        goals.push(super::ratio_goal(
            "new TCP flow, flow table full: per call <= 7x the floor".to_owned(),
            per_call(&results, "new TCP flow"),
            (per_call(&results, FLOOR), "floor"),
            7.0,
            "each insert first evicts this CPU's least recently used flow (a walk of the \
             LRU's lists and the bucket lock of the evicted entry), then writes cold memory: \
             the attribution row for one insert into a full LRU with per-CPU lists alone \
             is above what the goal leaves above the floor, and the common list's is more; \
             a flow table in an array would evict by overwriting, at the cost of its slot \
             row",
        ));
    }
    notes.push(format!(
        "One batched call with `repeat` = 2 took {:.0} µs of CPU (median): the fixed cost \
         the batched method leaves out.",
        median(&log.fixed_costs) / 1e3
    ));
    eprintln!("kernel: attribution (one operation per program)");
    let mut attribution_object =
        Ebpf::load(ATTRIBUTION_OBJECT).context("loading the attribution programs")?;
    let (attribution, flow_table_note) = attribution(
        bed,
        &mut attribution_object,
        floor,
        options,
        &mut flows,
        &mut log,
    )?;
    eprintln!("kernel: main scenario again, every program attached");
    // The full-table scenario filled the main data path's flow table: the
    // attached pass gets an empty one, as the main scenario had, so its new
    // flows are inserted into a table with room there too.
    drop(main_dataplane);
    let mut nat_dataplane = self::main_dataplane(bed)?;
    let (attached, attached_results) = attached_pass(
        bed,
        &mut refs,
        (&mut nat_dataplane, &mut dsr_dataplane),
        options,
        &mut flows,
        &mut log,
    )?;
    notes.push(flow_table_note);
    let mut section = super::section(options, (&main, &attached_results), scaling, notes)?;
    section.goals.extend(goals);
    section.tables.push(attached);
    section.tables.push(attribution);
    Ok(section)
}

/// How much of the verifier's budget loading the data path took: every path
/// a program may take is explored, and a program whose exploration passes
/// the budget does not load, so each change to the data path spends from it.
/// The agent's start waits for the exploration, which takes time in
/// proportion.
fn verifier_note(dataplane: &Dataplane) -> Result<String> {
    const BUDGET: u32 = 1_000_000;
    let verified: Vec<String> = dataplane
        .verified_instructions()?
        .into_iter()
        .map(|(name, count)| {
            format!(
                "{name} {count} ({:.1}%)",
                100.0 * f64::from(count) / f64::from(BUDGET)
            )
        })
        .collect();
    Ok(format!(
        "Loading the data path, the verifier processed, of its budget of {BUDGET} instructions \
         per program: {}.",
        verified.join(", ")
    ))
}

/// The main scenario's cases again with every program attached to an
/// interface of the namespace (`bed::ATTACH_IFACES`), as in production: the
/// kernel's XDP dispatcher then calls an attached program directly, while a
/// merely loaded one is reached through an indirect call.
fn attached_pass(
    bed: &Bed,
    refs: &mut Ebpf,
    (nat, dsr): (&mut Dataplane, &mut Dataplane),
    options: Options,
    flows: &mut FlowSource,
    log: &mut Log,
) -> Result<(Table, Vec<CaseResult>)> {
    let [floor_if, parse_if, nat_if, dsr_if] = ATTACH_IFACES;
    for (name, iface) in [("ref_xdp_tx", floor_if), ("ref_parse_only", parse_if)] {
        let program: &mut Xdp = refs
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        program
            .attach(iface, XdpMode::Default)
            .with_context(|| format!("attaching {name} to {iface}"))?;
    }
    nat.attach(nat_if)?;
    dsr.attach(dsr_if)?;
    let (floor, parse) = (
        reference(refs, "ref_xdp_tx")?,
        reference(refs, "ref_parse_only")?,
    );
    let (mut cases, _) = main_cases(bed, nat, floor, parse)?;
    cases.extend(dsr_cases(bed, dsr)?);
    let results = measure(&mut cases, options, flows, log)?;
    let find = |prefix: &str| {
        results
            .iter()
            .find(|r| r.name.starts_with(prefix))
            .with_context(|| format!("no case {prefix}"))
    };
    let table = super::case_table(
        "The same cases with every program attached to an interface (ns per packet)",
        &results,
        find(FLOOR)?,
        find(PARSE)?,
    );
    Ok((table, results))
}

const LRU_PER_CPU: &str = "one new IPv4 flow in a 1M LRU hash (not full), per-CPU lists";
const LRU_COMMON: &str = "one new IPv4 flow in a 1M LRU hash (not full), common list";

/// The programs of `lb-ebpf/src/attribution.rs`, each one operation of the
/// data path and XDP_TX, and what each adds to the floor.
const HASH_PREALLOC: &str = "one new IPv4 flow in a 1M plain hash (not full), preallocated";
const HASH_NO_PREALLOC: &str =
    "one new IPv4 flow in a 1M plain hash (not full), allocated at insert";
pub const SLOT_INSERT: &str =
    "one new IPv4 flow written into a free 64-byte slot of a 1M-slot array (no hash map)";
const EVICT_PER_CPU: &str =
    "one new IPv4 flow in a 1M LRU hash full for this CPU (evicts), per-CPU lists";
const EVICT_COMMON: &str = "one new IPv4 flow in a full 1M LRU hash (evicts), common list";
/// The rows whose table this CPU fills before they are measured.
const EVICTING: [(&str, &str); 2] = [
    ("attr_lru_evict_per_cpu", EVICT_PER_CPU),
    ("attr_lru_evict_common", EVICT_COMMON),
];

const ATTRIBUTION: [(&str, &str); 14] = [
    (
        "attr_fib_lookup",
        "one bpf_fib_lookup (IPv4, resolved neighbour)",
    ),
    ("attr_clock", "one bpf_ktime_get_ns"),
    ("attr_clock_coarse", "one bpf_ktime_get_coarse_ns"),
    ("attr_clock_jiffies", "one bpf_jiffies64"),
    ("attr_lru_insert_per_cpu", LRU_PER_CPU),
    ("attr_lru_insert_common", LRU_COMMON),
    ("attr_hash_insert", HASH_PREALLOC),
    ("attr_hash_insert_no_prealloc", HASH_NO_PREALLOC),
    ("attr_slot_insert", SLOT_INSERT),
    EVICTING[0],
    EVICTING[1],
    (
        "attr_hash_lookup_key40",
        "one hash lookup, 40-byte key (an IPv6 flow)",
    ),
    (
        "attr_hash_lookup_key16",
        "one hash lookup, 16-byte key (an IPv4 flow)",
    ),
    (
        "attr_flow_lookup",
        "one hash lookup, 16-byte key, in a 1M-entry LRU hash with per-CPU lists (as FLOWS4)",
    ),
];

/// Measures the attribution programs: their table, and the note on the
/// flow table's kind.
fn attribution(
    bed: &Bed,
    object: &mut Ebpf,
    floor: &Xdp,
    options: Options,
    flows: &mut FlowSource,
    log: &mut Log,
) -> Result<(Table, String)> {
    for (name, _) in ATTRIBUTION {
        let program: &mut Xdp = object
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
    }
    // The lookups must hit, as lb's do on its hot path.
    let mut key40: HashMap<_, FlowKey, u32> =
        HashMap::try_from(object.map_mut("HASH_KEY40").context("no map HASH_KEY40")?)?;
    key40.insert(FlowKey::new([0, 0, 0, 1], [0, 0, 0, 2], 3, 4, 6), 1, 0)?;
    let mut key16: HashMap<_, FlowKey4, u32> =
        HashMap::try_from(object.map_mut("HASH_KEY16").context("no map HASH_KEY16")?)?;
    let ipv4_flow = FlowKey4 {
        src_ip: 1,
        dst_ip: 2,
        src_port: 3,
        dst_port: 4,
        proto: 6,
        _pad: [0; 3],
    };
    key16.insert(ipv4_flow, 1, 0)?;
    let mut flow_table: HashMap<_, FlowKey4, Flow> =
        HashMap::try_from(object.map_mut("FLOW_TABLE").context("no map FLOW_TABLE")?)?;
    flow_table.insert(ipv4_flow, Flow::default(), 0)?;
    let packet = packets::tcp_ack(sock(CLIENT, CLIENT_PORT), sock(VIP, TCP_PORT), b"");
    // More inserts than the table holds, from this CPU: its free entries
    // (all of them with a common list, its share with per-CPU lists) are
    // gone, and every insert measured evicts.
    for (name, _) in EVICTING {
        let call = test_run(
            reference(object, name)?,
            &packet,
            bed.client_if,
            MAX_FLOWS + MAX_FLOWS / 8,
        )?;
        ensure!(
            call.action == XDP_TX,
            "filling the table of {name}: action {}",
            call.action
        );
    }
    let mut cases = vec![reference_case(FLOOR.to_owned(), floor, bed, &packet)];
    for (name, what) in ATTRIBUTION {
        let mut case = reference_case(what.to_owned(), reference(object, name)?, bed, &packet);
        // A batched run inserts `repeat` flows per call and fills the table
        // within a run, after which every insert evicts (that cost is the
        // full-table scenario's): per call only, as lb's new flows.
        if [
            LRU_PER_CPU,
            LRU_COMMON,
            HASH_PREALLOC,
            HASH_NO_PREALLOC,
            SLOT_INSERT,
            EVICT_PER_CPU,
            EVICT_COMMON,
        ]
        .contains(&what)
        {
            case.batched = None;
        }
        cases.push(case);
    }
    let results = measure(&mut cases, options, flows, log)?;
    check_no_eviction(object)?;
    let floor = results.first().context("the floor was measured")?;
    let mut table = Table::new(
        "What single operations cost (ns per packet; each in a program of its own that then \
         returns XDP_TX, minus the XDP_TX floor measured beside them)",
        &[
            "operation",
            "per call",
            "per call minus floor",
            "batched",
            "batched minus floor",
        ],
    );
    let minus = |a: Option<Figure>, b: Option<Figure>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.1}", a.median - b.median),
        _ => "n/a".to_owned(),
    };
    let shown = |f: Option<Figure>| f.map_or_else(|| "n/a".to_owned(), |f| f.with_range(1));
    for result in &results[1..] {
        table.row(vec![
            result.name.clone(),
            shown(result.per_call),
            minus(result.per_call, floor.per_call),
            shown(result.batched),
            minus(result.batched, floor.batched),
        ]);
    }
    Ok((table, flow_table_choice(&results)))
}

/// That the hash insert rows measured inserts into tables with room: every
/// key the insert programs made (`INSERTS`' first count, each a new one) is
/// still in their maps, so no insert evicted. (The slot insert aborts, and
/// its row fails, if its slot was taken.)
fn check_no_eviction(object: &Ebpf) -> Result<()> {
    let inserts: PerCpuArray<_, u32> =
        PerCpuArray::try_from(object.map("INSERTS").context("no map INSERTS")?)?;
    let made: u64 = inserts.get(&0, 0)?.iter().map(|&n| u64::from(n)).sum();
    let mut held = 0;
    for name in ["LRU_PER_CPU", "LRU_COMMON", "PLAIN", "PLAIN_NO_PREALLOC"] {
        let map: HashMap<_, FlowKey4, Flow> =
            HashMap::try_from(object.map(name).with_context(|| format!("no map {name}"))?)?;
        held += map.keys().collect::<Result<Vec<_>, _>>()?.len() as u64;
    }
    ensure!(
        held == made,
        "the insert rows evicted: {made} flows inserted, {held} held"
    );
    Ok(())
}

/// Which kind of hash the flow table is, and why, from the insert rows.
fn flow_table_choice(results: &[CaseResult]) -> String {
    let [per_cpu, common, plain, allocating, slot, floor] = [
        LRU_PER_CPU,
        LRU_COMMON,
        HASH_PREALLOC,
        HASH_NO_PREALLOC,
        SLOT_INSERT,
        FLOOR,
    ]
    .map(|name| per_call(results, name));
    let [evict_per_cpu, evict_common] =
        [EVICT_PER_CPU, EVICT_COMMON].map(|name| per_call(results, name));
    let percent = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.0}%", 100.0 * a / b),
        _ => "(not measured)".to_owned(),
    };
    format!(
        "FLOWS4 and FLOWS6 are LRU hashes with per-CPU lists (BPF_F_NO_COMMON_LRU). Here one \
         insert with per-CPU lists took {} of one with the common list, a plain preallocated \
         hash's insert {} of it and one that allocates at insert {} (per call); into a full \
         table, where every insert evicts, per-CPU lists took {} of the common list. On one CPU \
         every insert into a 1M-entry table costs mostly cold memory (the new entry and its \
         bucket), which no kernel hash map avoids: a plain hash would save the LRU's list \
         upkeep but would need the agent to expire idle flows, and when full it refuses new \
         flows where an LRU evicts the least recently used. Between the LRU variants, what \
         decides is many cores: a common list is one lock that every \
         CPU takes when its local free list runs dry and it must take entries back from the \
         shared inactive list, so under a flood of new flows inserts on all cores queue on \
         it, while per-CPU lists share no lock on insert (Katran keeps a flow table per CPU \
         for the same reason). The price is that each CPU evicts only among the flows it \
         inserted, MAX_FLOWS / CPUs of them; RSS spreads flows evenly over the CPUs, so \
         that is each CPU's fair share. {}",
        percent(per_cpu, common),
        percent(plain, common),
        percent(allocating, common),
        percent(evict_per_cpu, evict_common),
        array_table(per_cpu, slot, floor),
    )
}

/// What a flow table in an array would save a new flow, from the slot row:
/// its insert is one cold line, the least any table's can be.
fn array_table(per_cpu: Option<f64>, slot: Option<f64>, floor: Option<f64>) -> String {
    let (Some(per_cpu), Some(slot), Some(floor)) = (per_cpu, slot, floor) else {
        return String::new();
    };
    let allowed = (super::NEW_FLOW_GOAL - 1.0) * floor;
    format!(
        "A flow table in an array map (set-associative, as the Maglev paper's, or \
         direct-mapped) would need no bucket, free list or LRU list, so an insert would be one \
         cold line read and written: the slot row, {:.0} ns above the floor, {:.0} ns less \
         than an insert into FLOWS4's kind. That is the least any flow table's insert can \
         cost here, and alone it is {:.0}% of the {:.0} ns above the floor that the new-flow \
         goal ({}x the floor) leaves for the whole path, which also reads the \
         service, its Maglev ring's slot and the next hop.",
        slot - floor,
        per_cpu - slot,
        100.0 * (slot - floor) / allowed,
        allowed,
        super::NEW_FLOW_GOAL,
    )
}

/// The median per-call figure of case `name`.
fn per_call(results: &[CaseResult], name: &str) -> Option<f64> {
    let result = results.iter().find(|r| r.name == name)?;
    result.per_call.map(|f| f.median)
}

fn scaling_row(scenario: &str, occupancy: usize, results: &[CaseResult]) -> Vec<String> {
    let get = |name: &str, batched: bool| -> String {
        results
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| if batched { r.batched } else { r.per_call })
            .map_or_else(|| "n/a".to_owned(), |f| f.with_range(1))
    };
    vec![
        scenario.to_owned(),
        occupancy.to_string(),
        get(FLOOR, false),
        get("established TCP flow", false),
        get("new TCP flow", false),
        get(FLOOR, true),
        get("established TCP flow", true),
    ]
}

/// Four services: TCP and UDP on a real VIP, and their self-mapped twins for
/// the batched method.
fn main_dataplane(bed: &Bed) -> Result<Dataplane> {
    let mut dataplane = load(
        bed,
        lb::maglev::DEFAULT_RING_SIZE,
        lb::dataplane::DEFAULT_MAX_SERVICES,
        Forwarding::Nat,
    )?;
    for spec in [
        service(VIP, TCP_PORT, Protocol::Tcp, &all_nodes(NODE_TCP_PORT)),
        service(VIP, UDP_PORT, Protocol::Udp, &all_nodes(NODE_UDP_PORT)),
        service(
            node_ip(1),
            SELF_TCP_PORT,
            Protocol::Tcp,
            &[(node_ip(1), SELF_TCP_PORT)],
        ),
        service(
            node_ip(1),
            SELF_UDP_PORT,
            Protocol::Udp,
            &[(node_ip(1), SELF_UDP_PORT)],
        ),
    ] {
        dataplane.set_service(&spec)?;
    }
    Ok(dataplane)
}

/// The main scenario's TCP service served by direct server return.
fn dsr_dataplane(bed: &Bed) -> Result<Dataplane> {
    let mut dataplane = load(
        bed,
        lb::maglev::DEFAULT_RING_SIZE,
        lb::dataplane::DEFAULT_MAX_SERVICES,
        Forwarding::Dsr,
    )?;
    dataplane.set_service(&service(
        VIP,
        TCP_PORT,
        Protocol::Tcp,
        &all_nodes(NODE_TCP_PORT),
    ))?;
    Ok(dataplane)
}

/// Direct server return: the packet keeps VIP:port, so its output is a valid
/// input again and the batched method needs no self-mapped twin.
fn dsr_cases<'a>(bed: &Bed, dataplane: &'a Dataplane) -> Result<Vec<Case<'a>>> {
    let client = sock(CLIENT, CLIENT_PORT);
    let vip_tcp = sock(VIP, TCP_PORT);
    let ack = packets::tcp_ack(client, vip_tcp, b"");
    let program = dataplane.program()?;
    let case = |name: &str, per_call: Input, batched: Option<Vec<u8>>, expect: Expect| Case {
        name: name.to_owned(),
        program,
        dataplane: Some(dataplane),
        ifindex: bed.client_if,
        setup: vec![packets::tcp_syn(client, vip_tcp)],
        setup_if: bed.client_if,
        per_call: Some(per_call),
        batched,
        expect,
    };
    Ok(vec![
        case(
            "established TCP flow, DSR",
            Input::Same(ack.clone()),
            Some(ack),
            Expect {
                action: XDP_REDIRECT,
                per_packet: vec![counters::FORWARD_REDIRECT],
                unchanged: vec![counters::NEW_FLOWS, counters::FLOW_REHASHED],
            },
        ),
        case(
            "new TCP flow, DSR",
            Input::NewFlows(vip_tcp),
            None,
            Expect {
                action: XDP_REDIRECT,
                per_packet: vec![counters::FORWARD_REDIRECT, counters::NEW_FLOWS],
                unchanged: vec![counters::FLOW_REHASHED],
            },
        ),
    ])
}

/// The self-mapped TCP service alone, or with `services - 1` others.
fn many_services_dataplane(bed: &Bed, services: usize) -> Result<Dataplane> {
    let mut dataplane = load(bed, SMALL_RING, MAX_SERVICES, Forwarding::Nat)?;
    dataplane.set_service(&service(
        node_ip(1),
        SELF_TCP_PORT,
        Protocol::Tcp,
        &[(node_ip(1), SELF_TCP_PORT)],
    ))?;
    for i in 1..services {
        let i = u16::try_from(i).context("too many services")?;
        let vip = Ipv4Addr::new(198, 51, 100, 100 + (i / 250) as u8);
        dataplane
            .set_service(&service(
                vip,
                10_000 + i,
                Protocol::Tcp,
                &all_nodes(20_000 + i),
            ))
            .with_context(|| format!("service {i}"))?;
    }
    ensure!(
        dataplane.services().count() == services,
        "services not all loaded"
    );
    Ok(dataplane)
}

fn main_cases<'a>(
    bed: &Bed,
    dataplane: &'a Dataplane,
    floor: &'a Xdp,
    parse: &'a Xdp,
) -> Result<(Vec<Case<'a>>, SocketAddrV4)> {
    let program = dataplane.program()?;
    let client = sock(CLIENT, CLIENT_PORT);
    let self_client = sock(CLIENT, SELF_CLIENT_PORT);
    let vip_tcp = sock(VIP, TCP_PORT);
    let self_tcp = sock(node_ip(1), SELF_TCP_PORT);
    let self_udp = sock(node_ip(1), SELF_UDP_PORT);
    let syn = packets::tcp_syn(client, vip_tcp);
    let self_syn = packets::tcp_syn(self_client, self_tcp);
    // The real flow's backend, needed to build its replies.
    let first = test_run(program, &syn, bed.client_if, 1)?;
    ensure!(
        first.action == XDP_REDIRECT,
        "first SYN: action {}",
        first.action
    );
    let backend = destination(&first.out)?;
    let ack = packets::tcp_ack(client, vip_tcp, b"");
    let forward = Expect {
        action: XDP_REDIRECT,
        per_packet: vec![counters::FORWARD_REDIRECT],
        unchanged: vec![counters::NEW_FLOWS, counters::FLOW_REHASHED],
    };
    let lb_case = |name: &str, ifindex: u32| Case {
        name: name.to_owned(),
        program,
        dataplane: Some(dataplane),
        ifindex,
        setup: vec![syn.clone(), self_syn.clone()],
        setup_if: bed.client_if,
        per_call: None,
        batched: None,
        expect: forward.clone(),
    };
    let cases = vec![
        reference_case(format!("{FLOOR} (ref_xdp_tx)"), floor, bed, &ack),
        reference_case(format!("{PARSE} (ref_parse_only)"), parse, bed, &ack),
        Case {
            per_call: Some(Input::Same(ack.clone())),
            batched: Some(packets::tcp_ack(self_client, self_tcp, b"")),
            ..lb_case("established TCP flow", bed.client_if)
        },
        Case {
            per_call: Some(Input::NewFlows(vip_tcp)),
            expect: Expect {
                action: XDP_REDIRECT,
                per_packet: vec![counters::FORWARD_REDIRECT, counters::NEW_FLOWS],
                unchanged: vec![counters::FLOW_REHASHED],
            },
            ..lb_case("new TCP flow (Maglev lookup + flow insert)", bed.client_if)
        },
        Case {
            setup: vec![
                packets::udp(client, sock(VIP, UDP_PORT), b"x"),
                packets::udp(self_client, self_udp, b"x"),
            ],
            per_call: Some(Input::Same(packets::udp(client, sock(VIP, UDP_PORT), b"x"))),
            batched: Some(packets::udp(self_client, self_udp, b"x")),
            ..lb_case("established UDP flow", bed.client_if)
        },
        Case {
            per_call: Some(Input::Same(packets::tcp_ack(backend, client, b""))),
            batched: Some(packets::tcp_ack(self_tcp, self_client, b"")),
            expect: Expect {
                action: XDP_REDIRECT,
                per_packet: vec![counters::REPLY_REDIRECT],
                // Replies to the flow this host tracks, as most are.
                unchanged: vec![
                    counters::NEW_FLOWS,
                    counters::FORWARD_REDIRECT,
                    counters::REPLIES_UNTRACKED,
                ],
            },
            ..lb_case("reply, reverse NAT", bed.node_if)
        },
        Case {
            setup: Vec::new(),
            per_call: Some(Input::Same(packets::tcp_ack(
                client,
                sock(node_ip(2), NODE_TCP_PORT),
                b"",
            ))),
            batched: Some(packets::tcp_ack(
                client,
                sock(node_ip(2), NODE_TCP_PORT),
                b"",
            )),
            expect: Expect {
                action: XDP_PASS,
                per_packet: vec![counters::PASS_NOT_SERVICE],
                unchanged: vec![counters::NEW_FLOWS],
            },
            ..lb_case(PASS_THROUGH, bed.client_if)
        },
    ];
    Ok((cases, backend))
}

/// A reference program (`ref_xdp_tx`, `ref_parse_only`) bouncing `packet`
/// from the client side with XDP_TX, per call and batched.
fn reference_case<'a>(name: String, program: &'a Xdp, bed: &Bed, packet: &[u8]) -> Case<'a> {
    Case {
        name,
        program,
        dataplane: None,
        ifindex: bed.client_if,
        setup: Vec::new(),
        setup_if: bed.client_if,
        per_call: Some(Input::Same(packet.to_vec())),
        batched: Some(packet.to_vec()),
        expect: Expect::action(XDP_TX),
    }
}

/// Floor, established and new flows through the self-mapped TCP service.
fn scaling_cases<'a>(bed: &Bed, dataplane: &'a Dataplane, floor: &'a Xdp) -> Result<Vec<Case<'a>>> {
    let program = dataplane.program()?;
    let self_client = sock(CLIENT, SELF_CLIENT_PORT);
    let self_tcp = sock(node_ip(1), SELF_TCP_PORT);
    let setup = vec![packets::tcp_syn(self_client, self_tcp)];
    let ack = packets::tcp_ack(self_client, self_tcp, b"");
    Ok(vec![
        reference_case(FLOOR.to_owned(), floor, bed, &ack),
        Case {
            name: "established TCP flow".to_owned(),
            program,
            dataplane: Some(dataplane),
            ifindex: bed.client_if,
            setup: setup.clone(),
            setup_if: bed.client_if,
            per_call: Some(Input::Same(ack.clone())),
            batched: Some(ack),
            expect: Expect {
                action: XDP_REDIRECT,
                per_packet: vec![counters::FORWARD_REDIRECT],
                unchanged: vec![counters::NEW_FLOWS, counters::FLOW_REHASHED],
            },
        },
        Case {
            name: "new TCP flow".to_owned(),
            program,
            dataplane: Some(dataplane),
            ifindex: bed.client_if,
            setup,
            setup_if: bed.client_if,
            per_call: Some(Input::NewFlows(self_tcp)),
            batched: None,
            expect: Expect {
                action: XDP_REDIRECT,
                per_packet: vec![counters::FORWARD_REDIRECT, counters::NEW_FLOWS],
                unchanged: vec![counters::FLOW_REHASHED],
            },
        },
    ])
}

/// Measures every case `options.runs` times, cases interleaved within a run so
/// that drift (frequency, other load) affects them alike.
fn measure(
    cases: &mut [Case<'_>],
    options: Options,
    flows: &mut FlowSource,
    log: &mut Log,
) -> Result<Vec<CaseResult>> {
    let mut per_call: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut batched: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut batched_kernel: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    // One unrecorded round warms caches, the JIT image and the flow entries.
    let warm = Options {
        calls: (options.calls / 10).max(100),
        batches: 1,
        repeat: (options.repeat / 10).max(100),
        ..options
    };
    for case in cases.iter() {
        run_per_call(case, warm, flows)?;
        run_batched(case, warm, log)?;
    }
    for _ in 0..options.runs {
        for (i, case) in cases.iter().enumerate() {
            if let Some(ns) = run_per_call(case, options, flows)? {
                per_call[i].push(ns);
            }
        }
        for (i, case) in cases.iter().enumerate() {
            if let Some(result) = run_batched(case, options, log)? {
                batched[i].extend(result.per_packet);
                batched_kernel[i].push(result.kernel);
            }
        }
    }
    Ok(cases
        .iter()
        .enumerate()
        .map(|(i, case)| CaseResult {
            name: case.name.clone(),
            check: case.expect.describe(),
            per_call: Figure::of(&per_call[i]),
            batched: Figure::of(&batched[i]),
            batched_kernel: Figure::of(&batched_kernel[i]),
        })
        .collect())
}

fn prepare(case: &Case<'_>) -> Result<Option<Vec<u64>>> {
    let Some(dataplane) = case.dataplane else {
        return Ok(None);
    };
    let program = dataplane.program()?;
    for packet in &case.setup {
        // Setup packets are client packets, also for the reply case.
        test_run(program, packet, case.setup_if, 1)?;
    }
    Ok(Some(counters_of(dataplane)?))
}

/// Mean kernel-reported ns per call over `options.calls` calls with repeat = 1.
fn run_per_call(case: &Case<'_>, options: Options, flows: &mut FlowSource) -> Result<Option<f64>> {
    let Some(input) = &case.per_call else {
        return Ok(None);
    };
    let before = prepare(case)?;
    let mut total_ns: u128 = 0;
    for _ in 0..options.calls {
        let call = match input {
            Input::Same(packet) => test_run(case.program, packet, case.ifindex, 1)?,
            Input::NewFlows(dst) => {
                let packet = packets::tcp_syn(flows.next(), *dst);
                test_run(case.program, &packet, case.ifindex, 1)?
            }
        };
        if call.action != case.expect.action {
            bail!(
                "{}: action {} instead of {}",
                case.name,
                call.action,
                case.expect.action
            );
        }
        total_ns += call.kernel.as_nanos();
    }
    if let (Some(before), Some(dataplane)) = (before, case.dataplane) {
        let after = counters_of(dataplane)?;
        check_counters(
            &before,
            &after,
            &case.expect,
            u64::from(options.calls),
            &case.name,
        )?;
    }
    Ok(Some(total_ns as f64 / f64::from(options.calls)))
}

/// Thread CPU time in ns per iteration, from `options.batches` pairs of calls
/// (R at most 254: see the TTL below):
/// one with `repeat` = R and one with `repeat` = 2. Their difference divided by
/// R - 2 leaves out what every call costs once, whatever its `repeat`: the
/// syscall, and (for `repeat` > 1) the kernel installing the program in the XDP
/// dispatcher before the loop and removing it after.
fn run_batched(case: &Case<'_>, options: Options, log: &mut Log) -> Result<Option<Batched>> {
    let Some(packet) = &case.batched else {
        return Ok(None);
    };
    let (repeat, batches, packet) = batching(case, options, packet);
    let before = prepare(case)?;
    let (mut slopes_ns, mut fixed_ns, mut kernel_ns) = (Vec::new(), 0u128, 0u128);
    for _ in 0..batches {
        let short = test_run(case.program, &packet, case.ifindex, SHORT_REPEAT)?;
        let long = test_run(case.program, &packet, case.ifindex, repeat)?;
        for call in [&short, &long] {
            if call.action != case.expect.action {
                bail!(
                    "{} (batched): action {} instead of {}",
                    case.name,
                    call.action,
                    case.expect.action
                );
            }
        }
        slopes_ns.push(long.cpu.as_secs_f64() * 1e9 - short.cpu.as_secs_f64() * 1e9);
        fixed_ns += short.cpu.as_nanos();
        kernel_ns += long.kernel.as_nanos();
    }
    let packets = u64::from(batches) * u64::from(repeat + SHORT_REPEAT);
    if let (Some(before), Some(dataplane)) = (before, case.dataplane) {
        let after = counters_of(dataplane)?;
        check_counters(
            &before,
            &after,
            &case.expect,
            packets,
            &format!("{} (batched)", case.name),
        )?;
    }
    let iterations = f64::from(repeat - SHORT_REPEAT);
    let per_packet = resolved(&slopes_ns).map(|slope| slope / iterations);
    let batches = f64::from(batches);
    log.fixed_costs.push(fixed_ns as f64 / batches);
    Ok(Some(Batched {
        per_packet,
        kernel: kernel_ns as f64 / batches,
    }))
}

/// The largest standard error a batched run's mean slope may have, as a
/// share of that mean.
pub const MAX_SLOPE_ERROR: f64 = 0.1;

/// The mean of a run's slopes (ns per pair), if it is resolved: positive,
/// and with a standard error within [`MAX_SLOPE_ERROR`] of it. A forwarded
/// case runs at most 250 iterations a call (see `batching`), some 15 µs of
/// work, while the fixed cost of a call whose program the kernel swaps into
/// the XDP dispatcher is some 300 µs and varies by a third of that; such a
/// run's mean is noise, and is reported as not measured.
fn resolved(slopes_ns: &[f64]) -> Option<f64> {
    let n = slopes_ns.len() as f64;
    let mean = slopes_ns.iter().sum::<f64>() / n;
    let variance = slopes_ns.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let error = (variance / n).sqrt();
    (mean > 0.0 && error <= MAX_SLOPE_ERROR * mean).then_some(mean)
}

/// `repeat`, number of pairs and input of a batched case. lb forwards its own
/// output again on every iteration, one TTL less each time: its packets start
/// at TTL 255 and run loops of [`FORWARDED_REPEAT`], in
/// [`FORWARDED_BATCH_FACTOR`] times as many pairs.
fn batching(case: &Case<'_>, options: Options, packet: &[u8]) -> (u32, u32, Vec<u8>) {
    let forwards = case.dataplane.is_some() && case.expect.action != XDP_PASS;
    if !forwards || options.repeat <= FORWARDED_REPEAT {
        return (options.repeat, options.batches, packet.to_vec());
    }
    let batches = options.batches * FORWARDED_BATCH_FACTOR;
    (
        FORWARDED_REPEAT,
        batches,
        packets::with_ttl(packet, u8::MAX),
    )
}

/// The longest loop a forwarded packet survives from TTL 255, with margin.
const FORWARDED_REPEAT: u32 = 250;

/// How many more pairs the short loops of forwarded packets get. Not enough
/// to match the other cases' iterations: every call with `repeat` > 1 costs
/// the kernel's XDP dispatcher swap, tens of milliseconds of wall time, so
/// that would take an hour; twenty times the pairs keeps the run in minutes.
const FORWARDED_BATCH_FACTOR: u32 = 20;

/// One batched measurement: thread CPU time per iteration, and the kernel's
/// own figure (the loop's time over its iterations, whole ns, including
/// interrupts and time the hypervisor took the CPU away).
struct Batched {
    /// `None` when the run could not resolve it (see [`resolved`]).
    per_packet: Option<f64>,
    kernel: f64,
}

/// The short call of a batched pair; 2 is the smallest `repeat` for which the
/// kernel takes its batched path (with the XDP dispatcher swap).
const SHORT_REPEAT: u32 = 2;

/// What the report needs besides the figures.
#[derive(Default)]
struct Log {
    /// CPU time of every short batched call, ns.
    fixed_costs: Vec<f64>,
}

/// Runs new flows through the program on every CPU until each CPU's LRU list
/// is full; returns how many were run.
fn fill_flows(bed: &Bed, dataplane: &Dataplane) -> Result<u64> {
    let program = dataplane.program()?;
    let cpus = cpus();
    let per_cpu = (f64::from(MAX_FLOWS) / cpus as f64 * (1.0 + FILL_EXTRA)) as u32;
    let client_if = bed.client_if;
    let dst = sock(node_ip(1), SELF_TCP_PORT);
    let results: Vec<Result<u64>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..cpus)
            .map(|cpu| {
                scope.spawn(move || -> Result<u64> {
                    // Threads start in the namespace of the thread that spawns them.
                    lb_tests::xdp_bed::pin_to_cpu(cpu)?;
                    let base = Ipv4Addr::new(10, 192 + cpu as u8, 0, 0);
                    let mut source = FlowSource::new(base);
                    for _ in 0..per_cpu {
                        let packet = packets::tcp_syn(source.next(), dst);
                        let call = test_run(program, &packet, client_if, 1)?;
                        ensure!(call.action == XDP_REDIRECT, "fill: action {}", call.action);
                    }
                    Ok(u64::from(per_cpu))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| bail!("fill thread panicked")))
            .collect()
    });
    lb_tests::xdp_bed::pin_to_cpu(cpus - 1)?;
    results.into_iter().sum()
}

#[cfg(test)]
mod tests {
    use super::resolved;

    #[test]
    fn a_batched_run_resolves_only_when_its_pairs_agree() {
        let agreeing = [1000.0, 1010.0, 990.0, 1005.0, 995.0];
        assert_eq!(resolved(&agreeing), Some(1000.0));
        // 15 µs of work under a fixed cost that varies by 100 µs.
        let noisy: Vec<f64> = (0..100)
            .map(|i| 15_000.0 + if i % 2 == 0 { 100_000.0 } else { -100_000.0 })
            .collect();
        assert_eq!(resolved(&noisy), None);
        assert_eq!(resolved(&[-5.0, -6.0, -5.5]), None, "no negative cost");
    }
}
