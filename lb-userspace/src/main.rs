use std::io::IsTerminal as _;

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Parser as _};
use lb::{
    agent::{self, AgentOptions},
    announce::{
        self, Announce, Announcement, BgpStart,
        bgp::{Bfd, BgpError, BgpSettings, FlagSettings, Session, parse_asn, parse_peers},
        bird::{Bird, find_binary},
    },
    catalog::Catalog,
    cli::{AgentArgs, Cli, Command, PinArgs},
    config,
    dataplane::DataplaneConfig,
    health::HealthConfig,
    k8s::{
        election::{CONTROLLER_LEASE, Duty, ElectionConfig, Elections},
        kube_source::{KubeConfigSource, KubeSource},
        pools::{Pool, Pools},
        source::{ManifestSource, Source},
        translate::{TranslateConfig, Translator},
    },
    pins::PinDir,
    show::{self, StdoutClosed, print},
};
use tracing_subscriber::EnvFilter;

/// jemalloc, not glibc's malloc: the agent re-translates every Service on
/// each change, and with 10,000 of them glibc's allocator (its chunk
/// consolidation on free) took a third of each round (BENCHMARKS.md,
/// control plane).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let argv = match config::with_config_file(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => fail(&e.into()),
    };
    let cli = Cli::parse_from(argv);
    init_logging(cli.verbose);
    match run(cli) {
        // The reader has what it wanted (`lb stats --watch | head`).
        Err(e) if e.is::<StdoutClosed>() => {}
        Err(e) => fail(&e),
        Ok(()) => {}
    }
}

fn fail(error: &anyhow::Error) -> ! {
    eprintln!("lb: {}", one_line(error));
    std::process::exit(1);
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => run_agent(*args),
        Command::Services(args) => show::services(&args),
        Command::Backends(args) => show::backends(&args),
        Command::Flows(args) => show::flows(&args),
        Command::Stats(args) => show::stats(&args),
        Command::Trace(args) => show::trace(&args),
        Command::Bgp(args) => announce::commands::bgp(&args),
        Command::Drain(args) => announce::commands::drain(&args),
        Command::Down(args) => down(&args),
        // Written whole through `print`: clap_complete panics on a failed
        // write.
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lb", &mut script);
            print(script)
        }
        Command::Man { dir: None } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            print(page)
        }
        Command::Man { dir: Some(dir) } => clap_mangen::generate_to(Cli::command(), &dir)
            .with_context(|| format!("writing the man pages to {}", dir.display())),
    }
}

/// Removes the pinned state: links first, so the program detaches.
fn down(args: &PinArgs) -> Result<()> {
    let pins = PinDir::new(&args.bpffs);
    pins.check_known_layouts()?;
    let stopped = Bird::of(&args.bpffs).stop().context("stopping BIRD")?;
    // Said once all is done: a reader that went must not stop it half way.
    let removed = pins.remove()?;
    Catalog::remove(&args.bpffs);
    // Direct server return's managed entries for the nodes served the data
    // path just removed.
    if let Err(e) = lb::node_neighbors::remove_all() {
        eprintln!("warning: removing the nodes' managed neighbour entries: {e}");
    }
    if stopped {
        print("BIRD withdrew its announcements and stopped\n")?;
    }
    if removed.is_empty() {
        print(format!("nothing pinned under {}\n", args.bpffs.display()))
    } else {
        print(format!(
            "removed {} pins under {}\n",
            removed.len(),
            args.bpffs.display()
        ))
    }
}

/// The error and its causes on one line, each said once (libraries often
/// repeat their cause in their own message), with a hint when the cause is
/// missing privileges.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut denied = false;
    for cause in error.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            denied |= io.kind() == std::io::ErrorKind::PermissionDenied;
        }
        let text = cause.to_string();
        denied |= text.contains("Operation not permitted") || text.contains("Permission denied");
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    // SAFETY: geteuid has no preconditions.
    if denied && unsafe { libc::geteuid() } != 0 {
        line.push_str(" (run as root: lb needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)");
    }
    line
}

/// Whether `name` is a valid Kubernetes object name (an RFC 1123
/// subdomain).
fn is_object_name(name: &str) -> bool {
    let fits = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=253).contains(&name.len())
        && name.chars().all(|c| fits(c) || c == '-' || c == '.')
        && name.starts_with(fits)
        && name.ends_with(fits)
}

/// The announcement the flags ask for, checked before anything is loaded, so
/// an agent restarted with bad settings leaves the running data path alone.
/// `--bgp-router-id` goes with any `--announce`: it is also BIRD's own for
/// BGPPeer sessions, which run whatever `--announce` says.
fn announcement(args: &AgentArgs) -> Result<Announcement> {
    let mode = args.announce.unwrap_or_default();
    let bgp = &args.bgp;
    let given = [
        ("--bgp-asn", bgp.bgp_asn.is_some()),
        ("--bgp-peer", !bgp.bgp_peers.is_empty()),
    ];
    if mode != Announce::Bgp
        && let Some((flag, _)) = given.iter().find(|(_, given)| *given)
    {
        return Err(BgpError::NotBgp(flag).into());
    }
    let flags = match mode {
        Announce::Bgp => Some(flag_sessions(args)?),
        _ => None,
    };
    // Found now when the flags ask for BGP: a missing BIRD stops the agent
    // before anything is loaded. BGPPeer objects look for it when they come.
    let bird = match flags {
        Some(_) => find_binary(&bgp.bird)?,
        None => bgp.bird.clone(),
    };
    Ok(Announcement {
        mode,
        explicit: args.announce.is_some(),
        bgp: BgpStart {
            flags,
            bird,
            router_id: bgp.bgp_router_id,
        },
    })
}

/// The BGP sessions of `--announce bgp`.
fn flag_sessions(args: &AgentArgs) -> Result<BgpSettings> {
    let bgp = &args.bgp;
    let asn = parse_asn(
        "--bgp-asn",
        bgp.bgp_asn.as_deref().ok_or(BgpError::NoLocalAs)?,
    )?;
    let peers = parse_peers(&bgp.bgp_peers)?;
    if peers.is_empty() {
        return Err(BgpError::NoPeers.into());
    }
    let first = &args.interfaces[0];
    let router_id = match bgp.bgp_router_id {
        Some(id) => id,
        None => *lb::iface::ipv4_addresses(first)
            .with_context(|| format!("reading the addresses of {first}"))?
            .first()
            .ok_or_else(|| BgpError::NoRouterId(first.clone()))?,
    };
    let flags = FlagSettings {
        asn,
        hold_time: bgp.bgp_hold_time,
        bfd: (!bgp.bfd_interval.is_zero())
            .then(|| Bfd::symmetric(bgp.bfd_interval, bgp.bfd_multiplier)),
    };
    Ok(BgpSettings {
        router_id: Some(router_id),
        sessions: peers
            .iter()
            .enumerate()
            .map(|(index, peer)| Session::of_flag(index, peer, &flags))
            .collect(),
    })
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
    let announcement = announcement(&args)?;
    let mut pools = Vec::new();
    if let Some(cidr) = &args.vip_pool {
        pools.push(Pool::from_cidr("default", cidr).context("--vip-pool")?);
    }
    for text in &args.pools {
        pools.push(Pool::parse(text).context("--pool")?);
    }
    let translator = Translator::new(
        TranslateConfig {
            load_balancer_class: args.load_balancer_class,
            node_address_type: args.node_address_type,
            forwarding: args.forwarding,
            kube_proxy_healthz_port: Some(args.kube_proxy_healthz_port).filter(|&port| port != 0),
            cluster_check: args.cluster_health_check,
        },
        Pools::from_flags(pools).context("--pool")?,
    );
    let kubernetes = match (args.kubeconfig, args.in_cluster) {
        (Some(path), _) => Some(KubeConfigSource::File(path)),
        (None, true) => Some(KubeConfigSource::InCluster),
        (None, false) => None,
    };
    let manifests = args.manifests;
    let metallb_namespace = args.metallb_namespace;
    let identity = match args.identity {
        Some(identity) if identity.is_empty() => anyhow::bail!("--identity: must not be empty"),
        Some(identity) => identity,
        // Only an API server's Lease and Events name the agent.
        None if kubernetes.is_none() => String::new(),
        None => host_name().context("--identity: no host name to default to")?,
    };
    if !is_object_name(&args.layer2_lease) || args.layer2_lease == CONTROLLER_LEASE {
        anyhow::bail!(
            "--layer2-lease: must be a Lease name (lower-case letters, digits, '-' and '.', \
             starting and ending with a letter or digit) other than {CONTROLLER_LEASE}, got {:?}",
            args.layer2_lease
        );
    }
    let election = |lease: &str, duty| ElectionConfig {
        lease: lease.to_owned(),
        namespace: args.leader_election_namespace.clone(),
        duty,
        identity: identity.clone(),
        lease_duration: args.leader_election_lease_duration,
    };
    // A host that answers at layer 2 only as MetalLB's advertisements say
    // (--announce bgp or none) takes no part: holding the Lease, it would
    // silence the segment's hosts that answer.
    let elections = args.leader_elect.then(|| Elections {
        controller: election(CONTROLLER_LEASE, Duty::Controller),
        layer2: (announcement.mode == Announce::Arp)
            .then(|| election(&args.layer2_lease, Duty::Layer2)),
    });
    let options = |source| AgentOptions {
        interfaces: args.interfaces,
        source,
        translator,
        health: HealthConfig {
            interval: args.health_interval,
            timeout: args.health_timeout,
            rise: args.health_rise,
            fall: args.health_fall,
            dead: args.health_dead,
        },
        detach_on_exit: args.detach_on_exit,
        metrics_address: args.metrics_address,
        backend_metrics: args.backend_metrics,
        dataplane: DataplaneConfig {
            answer_ping: args.answer_ping,
            new_flow_limit: args.new_flow_limit,
            max_flows: args.max_flows,
            ring_size: args.ring_size,
            max_services: args.max_services,
            pin_dir: Some(args.bpffs),
            forwarding: args.forwarding,
        },
        announcement,
    };
    // Two threads: the watches, which decode every object that changes (at a
    // start, 10,000 Services coming back with their statuses), run beside
    // the rounds, whose programming of the data path blocks in system
    // calls. On one thread they took turns: with 10,000 Services every VIP
    // was in status after 1.7 s, against 1.1 s on two. Not one per CPU: the
    // host's CPUs are the data path's.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async move {
            // The Kubernetes source starts its watches, so it needs the runtime.
            let source = match (kubernetes, manifests) {
                (Some(config), _) => Source::Kubernetes(Box::new(
                    KubeSource::connect(&config, &metallb_namespace, &identity, elections)
                        .await
                        .context("connecting to the Kubernetes API")?,
                )),
                (None, Some(path)) => Source::Manifests(ManifestSource::new(path)),
                (None, None) => {
                    anyhow::bail!("--manifests, --kubeconfig or --in-cluster is required")
                }
            };
            agent::run(options(source)).await
        })
}

/// The host's name (`uname -n`), which names this agent among several.
fn host_name() -> Result<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer outlives the call, which writes at most its length.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).context("gethostname");
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).into_owned();
    anyhow::ensure!(!name.is_empty(), "the host name is empty");
    Ok(name)
}

#[cfg(test)]
mod tests {
    use lb::cli::{Cli, Command};

    use super::*;

    fn agent_args(args: &[&str]) -> AgentArgs {
        let required = ["lb", "agent", "--iface", "lo", "--manifests", "m.yaml"];
        let argv = required.iter().chain(args);
        match Cli::try_parse_from(argv).expect("arguments").command {
            Command::Agent(args) => *args,
            other => panic!("not the agent: {other:?}"),
        }
    }

    #[test]
    fn a_router_id_goes_with_any_announcement() {
        for announce in [&[][..], &["--announce", "arp"], &["--announce", "none"]] {
            let mut args = vec!["--bgp-router-id", "192.0.2.1"];
            args.extend_from_slice(announce);
            let announcement = announcement(&agent_args(&args)).expect("accepted");
            assert_eq!(
                announcement.bgp.router_id,
                Some("192.0.2.1".parse().unwrap()),
                "{args:?}"
            );
        }
        let refused = announcement(&agent_args(&["--bgp-asn", "64512"])).err();
        let refused = refused.expect("--bgp-asn without --announce bgp refused");
        assert_eq!(refused.to_string(), "--bgp-asn is for --announce bgp");
    }
}
