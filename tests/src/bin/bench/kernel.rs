//! In-kernel cost per packet, measured with `BPF_PROG_TEST_RUN` on the real
//! program (after the real verifier, with real maps) and on two reference
//! programs in the same process, the same namespace and the same run.
//!
//! Two methods, because `repeat` > 1 does not restore the packet between
//! iterations (a rewriting program processes its own output from the second
//! iteration on):
//! - per call: `repeat` = 1, many calls from one warm process. Every packet is
//!   the original, so every path can be measured, new flows included, but each
//!   figure carries the kernel timer's own overhead once per packet.
//! - batched: `repeat` = R with inputs whose rewritten output is again a valid
//!   input for the same path: a service whose VIP:port is its only backend's
//!   address, so the DNAT (and the reverse NAT of its replies) rewrites the
//!   addresses to themselves. The program runs the same instructions as for a
//!   real VIP; only the values differ. Each iteration also takes one off the
//!   TTL, so lb's forwarded inputs start at TTL 255 and run loops of 250, in
//!   twenty times as many pairs. New flows cannot be batched (the first
//!   iteration inserts the flow).
//!
//! Every measurement checks the action of each call and the program's global
//! counters afterwards, so the figure is known to belong to the path it names.

mod bed;
mod cases;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use aya::programs::Xdp;
use lb::dataplane::Dataplane;
use lb_common::counters;

use crate::{
    report::{Goal, Section, Table, Verdict},
    stats::{Figure, ratio, thread_cpu_time},
};

pub use lb_tests::xdp_bed::{XDP_PASS, XDP_REDIRECT, XDP_TX};

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub runs: usize,
    /// Calls with `repeat` = 1 per case and run.
    pub calls: u32,
    /// Iterations per batched call.
    pub repeat: u32,
    /// Batched calls per case and run.
    pub batches: u32,
    /// Fill the flow table to capacity for the last scenario.
    pub full_flow_table: bool,
}

pub fn run(options: Options) -> Result<Section> {
    let (ns, bed) = bed::new().context("building the namespace for BPF_PROG_TEST_RUN")?;
    // FIB lookups use the namespace of the calling thread: everything runs inside.
    ns.enter(move || cases::measure_all(&bed, options))
        .context("entering the benchmark namespace")?
}

/// What a call must do for its time to count: the action, and which global
/// counters must have grown by exactly the number of packets.
#[derive(Clone, Debug)]
pub struct Expect {
    pub action: u32,
    /// Counters that must grow by one per packet.
    pub per_packet: Vec<u32>,
    /// Counters that must not grow.
    pub unchanged: Vec<u32>,
}

impl Expect {
    /// A reference program: only the action can be checked.
    pub fn action(action: u32) -> Expect {
        Expect {
            action,
            per_packet: Vec::new(),
            unchanged: Vec::new(),
        }
    }

    /// Short description of the check, for the report.
    pub fn describe(&self) -> String {
        let action = match self.action {
            XDP_PASS => "XDP_PASS",
            XDP_TX => "XDP_TX",
            XDP_REDIRECT => "XDP_REDIRECT",
            _ => "?",
        };
        let mut parts = vec![action.to_owned()];
        for &c in &self.per_packet {
            parts.push(format!("{} +1/pkt", counters::NAMES[c as usize]));
        }
        for &c in &self.unchanged {
            parts.push(format!("{} +0", counters::NAMES[c as usize]));
        }
        parts.join(", ")
    }
}

/// The result of one `BPF_PROG_TEST_RUN` call.
pub struct Call {
    pub action: u32,
    /// The kernel's figure: time per iteration, whole nanoseconds.
    pub kernel: Duration,
    /// This thread's CPU time around the syscall: the program runs in it, and
    /// unlike the wall clock it does not count time other tasks got the CPU.
    pub cpu: Duration,
    /// The packet as the (last iteration of the) program left it.
    pub out: Vec<u8>,
}

/// Runs `program` on `input` arriving on `ifindex`.
pub fn test_run(program: &Xdp, input: &[u8], ifindex: u32, repeat: u32) -> Result<Call> {
    let mut out = [0u8; 512];
    let started = thread_cpu_time();
    let result = lb_tests::xdp_bed::test_run(program, input, ifindex, repeat, &mut out)?;
    let cpu = thread_cpu_time().saturating_sub(started);
    let out_len = (result.data_size_out as usize).min(out.len());
    Ok(Call {
        action: result.return_value,
        kernel: result.duration,
        cpu,
        out: out[..out_len].to_vec(),
    })
}

/// Checks the counter deltas of `dataplane` over a measurement of `packets`.
pub fn check_counters(
    before: &[u64],
    after: &[u64],
    expect: &Expect,
    packets: u64,
    what: &str,
) -> Result<()> {
    let delta = |c: u32| after[c as usize] - before[c as usize];
    ensure!(
        delta(counters::RX) == packets,
        "{what}: rx grew by {}, expected {packets}",
        delta(counters::RX)
    );
    for &c in &expect.per_packet {
        ensure!(
            delta(c) == packets,
            "{what}: {} grew by {}, expected {packets}: another path was measured",
            counters::NAMES[c as usize],
            delta(c)
        );
    }
    for &c in &expect.unchanged {
        ensure!(
            delta(c) == 0,
            "{what}: {} grew by {}, expected 0: another path was measured",
            counters::NAMES[c as usize],
            delta(c)
        );
    }
    Ok(())
}

pub fn counters_of(dataplane: &Dataplane) -> Result<Vec<u64>> {
    Ok(dataplane.maps().global_counters()?)
}

/// Per-case figures in ns per packet, for both methods.
pub struct CaseResult {
    pub name: String,
    pub check: String,
    pub per_call: Option<Figure>,
    pub batched: Option<Figure>,
    /// The kernel's own figure for the batched calls.
    pub batched_kernel: Option<Figure>,
}

/// Rows of one scenario table: ns and ratios to the floor and to parse-only.
pub fn case_table(
    title: &str,
    results: &[CaseResult],
    floor: &CaseResult,
    parse: &CaseResult,
) -> Table {
    let mut table = Table::new(
        title,
        &[
            "case",
            "per call ns (repeat=1)",
            "x floor",
            "x parse-only",
            "batched ns (repeat=R)",
            "x floor",
            "x parse-only",
            "batched, kernel's own ns",
        ],
    );
    let median = |f: &Option<Figure>| f.map(|f| f.median);
    for result in results {
        let cell = |f: &Option<Figure>| f.map_or_else(|| "n/a".to_owned(), |f| f.with_range(1));
        table.row(vec![
            result.name.clone(),
            cell(&result.per_call),
            ratio(median(&result.per_call), median(&floor.per_call)),
            ratio(median(&result.per_call), median(&parse.per_call)),
            cell(&result.batched),
            ratio(median(&result.batched), median(&floor.batched)),
            ratio(median(&result.batched), median(&parse.batched)),
            result
                .batched_kernel
                .map_or_else(|| "n/a".to_owned(), |f| f.with_range(0)),
        ]);
    }
    table
}

/// Where the rest of a forwarded packet's time goes: from profiles of the
/// attached established case, batched and per call, and from A/B runs of
/// the per-call cases with parts of the program removed.
macro_rules! rest_of_forwarding {
    () => {
        "the rest is the program's own work: parsing, the devmap redirect helper (an index \
         into the devmap array by the slot the next hop keeps: with a devmap hash by ifindex, \
         its hash and bucket walk, a profile of the per-call established case put about 13% \
         of the program's samples in the helper, and an A/B of the array took 4-6 ns a call \
         off the NAT and reply cases, within noise on DSR), the key filter's word, the \
         interface's MAC, the settings and the clock with the time of the last backend change \
         (global data, read at their addresses; the clock and that time share a cache line), \
         and four map reads (for an established packet the cache slot, the backend's traffic \
         counter, the next hop, the outcome counter; not the backend's slot, as the cached \
         copy was checked against it since the agent last changed one, nor a service \
         counter, as a service's traffic is its backends'), each a chain of \
         dependent loads, over which a profile spreads the time. Per call, most of it is the \
         first touch of each of those cold lines (two for a per-CPU map: its pointer table \
         and the value): a profile of the per-call established case put about 13% of the \
         program's samples on the flow cache, 12% on the traffic counter, 8% on the outcome \
         counter, 6% on the next hop and 5% on the key filter's word; without both counter \
         updates (a hack) the case took 9.5 ns less a call and 16 ns less batched, still over \
         the per-call goal; keeping the traffic counters and the flow cache in plain arrays \
         indexed by CPU (no pointer table) took 0-4 ns a call off, within noise, and was not \
         kept. On an earlier machine (a floor of 44 ns a call), dropping the clock, the \
         traffic counters and the MAC check (then a map read too) saved about 5 ns \
         a call on the established case. Reading the key filter as global data instead of an \
         array map's values saved 3-5 ns a call attached (0.5-0.9 ns batched), the interfaces \
         another 0-2 ns batched, the settings 2-5 ns a call and 3 ns batched on the DSR case \
         (1-3 ns batched on the others), not reading the backend's slot 2-5 ns a call on the NAT and \
         reply cases (0.7-2.4 ns batched), counting per backend only about 2 ns batched on \
         the forwarded cases (within noise per call). The transport path runs in the entry \
         point's frame, with no BPF subprogram call: the ARP and ICMP paths are programs of \
         their own, tail-called. A subprogram's return costs much with this CPU's Safe RET \
         mitigation: in an A/B of 5 rounds, attached, doing without it took 17-24 ns a call \
         off the forwarded cases, 2-5 ns batched (the non-VIP pass-through, which never made \
         the call, lost 1-2 ns a call)"
    };
}

/// Issue 11's per-packet goals: (case, per call, batched, what the path
/// does), each goal the most the case may cost as a multiple of the XDP_TX
/// floor measured beside it.
const GOALS: [(&str, f64, Option<f64>, &str); 6] = [
    ("established TCP flow", 1.9, Some(4.0), ESTABLISHED),
    ("established UDP flow", 1.9, Some(4.0), ESTABLISHED),
    (
        "established TCP flow, DSR",
        1.7,
        Some(3.0),
        concat!(
            "as the NAT case without the rewrite: no hash lookup, the flow's entry from this \
             CPU's cached copy (FLOW_CACHE4, an array read and a key compare), which names \
             the backend; ",
            rest_of_forwarding!()
        ),
    ),
    (
        "reply, reverse NAT",
        1.9,
        Some(4.0),
        concat!(
            "no hash lookup: the frontend from its NodePort (NODE_PORTS4, an array read), the \
             entry of the request the reply answers from this CPU's cached copy (FLOW_CACHE4, \
             an array read and a key compare), the client's next hop from this CPU's slot \
             for it (CLIENT_HOPS, an array read); then the rewrite with its checksums; ",
            rest_of_forwarding!()
        ),
    ),
    (
        "new TCP flow (Maglev lookup + flow insert)",
        NEW_FLOW_GOAL,
        None,
        "the insert into the 1M-entry LRU flow table (FLOWS4): the new entry's memory is cold, \
         and the attribution row for one insert alone is above the whole goal, while even the \
         cheapest a flow table could make, one cold line written into an array, takes most of \
         what the goal leaves above the floor (see the note below the attribution table); a profile of \
         the per-call case put about three times the program's own samples in the kernel's \
         insert, and, within the program, the most on the Maglev ring's slot (a random entry \
         of the service's 64 KB ring, about 13%) and the SERVICES4 lookup (about 5%)",
    ),
    (
        cases::PASS_THROUGH,
        1.2,
        Some(1.5),
        "no hash lookup is left on this path (the key filters answer before the transport \
         path is entered): the rest is parsing Ethernet and IP, the key filter's words for \
         the two addresses (no VIP, no node: the ports are not read, which saved 1-2.5 ns a \
         call, 1 ns batched, nor is the interface's MAC, which saved 6-7 ns), and one \
         counter; the words are global data, read with no map lookup",
    ),
];

/// The new-flow goal, per call, in floors.
pub const NEW_FLOW_GOAL: f64 = 4.5;

/// What an established NAT packet costs besides the floor.
const ESTABLISHED: &str = concat!(
    "no hash lookup: the flow's entry from this CPU's cached copy (FLOW_CACHE4, an array \
     read and a key compare, where the FLOWS4 lookup it spares costs what the attribution \
     rows give), which names the backend, so no SERVICES4 lookup either; \
     then the rewrite with its checksums; ",
    rest_of_forwarding!()
);

/// A goal that `ns` stays within `max` times `floor` ns (the XDP_TX floor, or
/// the `reference` named); a miss says by how much, and `why` where the time
/// goes.
pub fn ratio_goal(
    goal: String,
    ns: Option<f64>,
    (floor, reference): (Option<f64>, &str),
    max: f64,
    why: &str,
) -> Goal {
    let (Some(ns), Some(floor)) = (ns, floor) else {
        return Goal {
            goal,
            verdict: Verdict::NotMeasured,
            measured: "n/a".to_owned(),
            why: "a case failed to measure".to_owned(),
        };
    };
    let times = ns / floor;
    let met = times <= max;
    Goal {
        goal,
        verdict: Verdict::from_bool(met),
        measured: format!("{times:.2}x ({ns:.1} ns, {reference} {floor:.1} ns)"),
        why: if met {
            String::new()
        } else {
            format!(
                "{:.0} ns over the {:.0} ns allowed ({:.1}x the goal): {why} (the attribution \
                 table below gives what each operation costs)",
                ns - max * floor,
                max * floor,
                times / max
            )
        },
    }
}

/// One goal row per (case, method) of [`GOALS`], judged by the loaded
/// program's figure, as the goals were first measured; by the attached
/// pass's instead where the loaded one has no verdict to give: every goal
/// when the loaded pass was noisy ([`noise`]) and the attached one quiet,
/// and a batched figure the loaded runs could not resolve (see
/// `cases::resolved`; the attached calls need no XDP dispatcher swap).
fn per_packet_goals(main: &[CaseResult], attached: &[CaseResult]) -> Vec<Goal> {
    let quiet_attached = judged_attached(main, attached);
    let mut goals = Vec::new();
    for (name, per_call, batched, why) in GOALS {
        let methods = [
            (Method::PerCall, Some(per_call)),
            (Method::Batched, batched),
        ];
        for (method, max) in methods {
            let Some(max) = max else { continue };
            let goal = format!("{name}: {} <= {max}x the floor", method.label());
            let (pass, instead) = if quiet_attached {
                (
                    attached,
                    Some("where the loaded pass was noisy (see the notes)"),
                )
            } else if matches!(method, Method::Batched) && method.of(named(main, name)).is_none() {
                (
                    attached,
                    Some("where the loaded program's runs were unresolved"),
                )
            } else {
                (main, None)
            };
            let floor = (method.of(find_case(pass, cases::FLOOR)), "floor");
            let mut judged = ratio_goal(goal, method.of(named(pass, name)), floor, max, why);
            if let Some(instead) = instead {
                judged.measured.push_str(&format!(" attached, {instead}"));
            }
            goals.push(judged);
        }
    }
    goals
}

/// Whether the per-packet goals are judged by the attached pass: the
/// loaded one was noisy ([`noise`]) and the attached one quiet.
fn judged_attached(main: &[CaseResult], attached: &[CaseResult]) -> bool {
    noise(main).is_some() && noise(attached).is_none()
}

/// How a case's figure was measured.
#[derive(Clone, Copy)]
enum Method {
    PerCall,
    Batched,
}

impl Method {
    fn label(self) -> &'static str {
        match self {
            Self::PerCall => "per call",
            Self::Batched => "batched",
        }
    }

    /// The median of this method's figure for `case`.
    fn of(self, case: Option<&CaseResult>) -> Option<f64> {
        let case = case?;
        let figure = match self {
            Self::PerCall => case.per_call.as_ref(),
            Self::Batched => case.batched.as_ref(),
        };
        Some(figure?.median)
    }
}

/// The case of `results` named `name`.
fn named<'a>(results: &'a [CaseResult], name: &str) -> Option<&'a CaseResult> {
    results.iter().find(|r| r.name == name)
}

/// The case of `results` whose name starts with `prefix`.
fn find_case<'a>(results: &'a [CaseResult], prefix: &str) -> Option<&'a CaseResult> {
    results.iter().find(|r| r.name.starts_with(prefix))
}

/// How far a pass's floor runs may spread per call, as a share of their
/// median, for the pass to count as quiet.
const QUIET_SPREAD: f64 = 0.1;

/// How far above parse-only the floor may read per call, as a share, for
/// the pass to count as quiet: in a quiet pass the two are within a few
/// nanoseconds, either way, attached.
const QUIET_FLOOR_OVER_PARSE: f64 = 0.02;

/// Why a pass was noisy, if it was: its floor read clearly above its
/// parse-only reference per call (parse-only does more; see
/// [`QUIET_FLOOR_OVER_PARSE`]), or its floor's runs spread by more than
/// [`QUIET_SPREAD`] of their median. The machine was busy during that
/// pass, and its ratios, and any verdict judged on them, are noise.
fn noise(results: &[CaseResult]) -> Option<String> {
    let floor = find_case(results, cases::FLOOR)?.per_call?;
    let parse = find_case(results, cases::PARSE)?.per_call?;
    if floor.median > parse.median * (1.0 + QUIET_FLOOR_OVER_PARSE) {
        return Some(format!(
            "its floor read {:.1} ns a call, above parse-only's {:.1} ns, which does more",
            floor.median, parse.median
        ));
    }
    (floor.max - floor.min > QUIET_SPREAD * floor.median).then(|| {
        format!(
            "its floor's runs ranged from {:.1} to {:.1} ns a call, more than {:.0}% of their \
             median",
            floor.min,
            floor.max,
            QUIET_SPREAD * 100.0
        )
    })
}

/// Says so when a pass was noisy ([`noise`]).
fn noise_note(pass: &str, results: &[CaseResult]) -> Option<String> {
    noise(results).map(|why| {
        format!("The {pass} pass was noisy: {why}. Its ratios, and any verdict on them, are noise.")
    })
}

/// Puts the scenario tables and the per-packet goals together.
pub fn section(
    options: Options,
    (main, attached): (&[CaseResult], &[CaseResult]),
    scaling: Table,
    mut notes: Vec<String>,
) -> Result<Section> {
    notes.extend(noise_note("loaded", main));
    notes.extend(noise_note("attached", attached));
    if judged_attached(main, attached) {
        notes.push(
            "The attached pass was quiet, so the per-packet goals are judged by its figures."
                .to_owned(),
        );
    }
    let find = |prefix: &str| find_case(main, prefix).with_context(|| format!("no case {prefix}"));
    let floor = find(cases::FLOOR)?;
    let parse = find(cases::PARSE)?;
    let table = case_table(
        "In-kernel cost per packet (4 services, Maglev M = 16381)",
        main,
        floor,
        parse,
    );
    let mut checks = Table::new("What each case was checked to measure", &["case", "check"]);
    for result in main {
        checks.row(vec![result.name.clone(), result.check.clone()]);
    }
    let goals = per_packet_goals(main, attached);
    Ok(Section {
        title: "In-kernel cost per packet (BPF_PROG_TEST_RUN)".to_owned(),
        method: vec![
            format!(
                "The real `lb_xdp` program and two references from the same build \
                 (`ref_xdp_tx`: returns XDP_TX, the floor of the XDP machinery; \
                 `ref_parse_only`: parses Ethernet/IPv4/TCP with bounds checks and returns \
                 XDP_TX) run with `BPF_PROG_TEST_RUN` in one process, one namespace (with \
                 routes and permanent neighbours, so FIB lookups succeed) and one thread \
                 pinned to one CPU, cases interleaved within each of {} runs.",
                options.runs
            ),
            format!(
                "- **per call**: `repeat` = 1, {} calls per case and run; the figure is the \
                 mean of the kernel's per-call durations. Each call sees the original packet, \
                 so every path is measurable, but each figure includes the kernel timer's own \
                 overhead (two clock reads around one program run): compare with the floor \
                 row, which is almost nothing but that overhead. Nothing is subtracted.\n\
                 - **batched**: {} pairs of calls per case and run, one with `repeat` = {} and \
                 one with `repeat` = 2; the figure is the difference of this thread's CPU time \
                 between the two, divided by the difference in iterations. That leaves out what \
                 a call costs once whatever its `repeat` (the syscall, and the kernel swapping \
                 the program into the XDP dispatcher around the loop; its size is in the notes), \
                 and, unlike the kernel's own figure (last column: whole nanoseconds, too coarse \
                 for the references, and counting time the hypervisor took the CPU away), it \
                 has sub-nanosecond resolution. `repeat` does not restore the packet between \
                 iterations, so the forwarding cases use a service whose VIP:port is its own \
                 single backend (client port 41000): the NAT rewrites the addresses to \
                 themselves and every iteration takes the same path with the same instructions \
                 as for a real VIP. Each iteration takes one off the TTL too, so forwarded \
                 inputs start at TTL 255 and run `repeat` = 250 in 20 times as many pairs. \
                 A run is resolved when the standard error of its pairs' mean difference is \
                 at most {:.0}% of that mean; a figure with no resolved run is n/a, and its \
                 goal is judged by the attached pass, whose calls swap no program into the \
                 dispatcher. New flows cannot be batched (the first iteration creates the \
                 flow): n/a.",
                options.calls,
                options.batches,
                options.repeat,
                cases::MAX_SLOPE_ERROR * 100.0
            ),
            "Every call's action is checked, and the program's global counters after each \
             measurement: the counter of the measured path must have grown by exactly one per \
             packet (see the second table)."
                .to_owned(),
        ],
        tables: vec![table, checks, scaling],
        notes,
        goals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A case that took `per_call` ns a call (`spread` from the lowest run to
    /// the highest) and a quarter of it batched.
    fn case(name: &str, per_call: f64, spread: f64) -> CaseResult {
        let figure = |median: f64| Figure {
            median,
            min: median - spread / 2.0,
            max: median + spread / 2.0,
        };
        CaseResult {
            name: name.to_owned(),
            check: String::new(),
            per_call: Some(figure(per_call)),
            batched: Some(figure(per_call / 4.0)),
            batched_kernel: None,
        }
    }

    /// A pass whose floor (with its runs' `spread`), parse-only and
    /// established cases took these ns a call.
    fn pass(floor: f64, spread: f64, parse: f64, established: f64) -> Vec<CaseResult> {
        vec![
            case(cases::FLOOR, floor, spread),
            case(cases::PARSE, parse, 0.0),
            case("established TCP flow", established, 0.0),
        ]
    }

    /// The established case's goals, per call and batched.
    fn established(goals: &[Goal]) -> [&Goal; 2] {
        ["per call", "batched"].map(|method| {
            goals
                .iter()
                .find(|g| {
                    g.goal
                        .starts_with(&format!("established TCP flow: {method}"))
                })
                .expect("the goal")
        })
    }

    #[test]
    fn goals_are_judged_by_the_attached_pass_when_the_loaded_one_was_noisy() {
        // 4.5x the floor: both goals missed.
        let attached = pass(100.0, 2.0, 110.0, 450.0);
        // Quiet: judged by the loaded pass, 1.5x, both met.
        for goal in established(&per_packet_goals(
            &pass(200.0, 2.0, 210.0, 300.0),
            &attached,
        )) {
            assert_eq!(goal.verdict, Verdict::Met, "{}", goal.measured);
            assert!(!goal.measured.contains("attached"), "{}", goal.measured);
        }
        // Noisy, by a floor above parse-only or by a floor's wide runs.
        for loaded in [
            pass(200.0, 2.0, 150.0, 300.0),
            pass(200.0, 30.0, 210.0, 300.0),
        ] {
            assert!(noise(&loaded).is_some());
            for goal in established(&per_packet_goals(&loaded, &attached)) {
                assert_eq!(goal.verdict, Verdict::Missed, "{}", goal.measured);
                assert!(
                    goal.measured
                        .contains("attached, where the loaded pass was noisy"),
                    "{}",
                    goal.measured
                );
            }
        }
        // A floor a little above parse-only is not noise.
        assert!(noise(&pass(100.0, 2.0, 99.0, 450.0)).is_none());
        // A loaded per-call figure that is missing is not measured: only
        // an unresolved batched one is taken from the attached pass.
        let mut failed = pass(200.0, 2.0, 210.0, 300.0);
        failed[2].per_call = None;
        failed[2].batched = None;
        let goals = per_packet_goals(&failed, &attached);
        let [per_call, batched] = established(&goals);
        assert_eq!(
            per_call.verdict,
            Verdict::NotMeasured,
            "{}",
            per_call.measured
        );
        assert!(
            batched.measured.contains("runs were unresolved"),
            "{}",
            batched.measured
        );
        // Both noisy: the loaded pass, as there is nothing better.
        let noisy_attached = pass(100.0, 30.0, 110.0, 450.0);
        let goals = per_packet_goals(&pass(200.0, 2.0, 150.0, 300.0), &noisy_attached);
        assert_eq!(established(&goals)[0].verdict, Verdict::Met);
    }
}
