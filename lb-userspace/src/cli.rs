//! The `lb` command line: the agent and the inspection commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    announce::Announce,
    dataplane::{DEFAULT_MAX_SERVICES, DEFAULT_NEW_FLOW_LIMIT, Forwarding},
    k8s::translate::{ClusterCheck, KUBE_PROXY_HEALTHZ_PORT},
    maglev::DEFAULT_RING_SIZE,
};

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
    /// with its source (manifests or the API server) until SIGINT or SIGTERM. The data path and its state stay
    /// pinned when it exits, unless --detach-on-exit.
    Agent(Box<AgentArgs>),
    /// List the services the data path serves.
    Services(InspectArgs),
    /// List backends (every service's, or one's) with their share of the Maglev table.
    Backends(BackendsArgs),
    /// List tracked flows: client, VIP, chosen backend, age, packets.
    Flows(FlowsArgs),
    /// Show global and per-service rates and why packets were passed or dropped.
    Stats(StatsArgs),
    /// Tell which backend a new flow would get, and whether a flow entry pins it already.
    Trace(TraceArgs),
    /// Show the BGP sessions (named as their BGPPeers, or `peerN` for the
    /// `N`th `--bgp-peer`) and the prefixes announced.
    /// JSON: {"sessions": [{"name", "peer", "peer_as", "state", "bfd"}],
    /// "announced": ["198.51.100.10/32", ...], "draining": false}.
    Bgp(InspectArgs),
    /// Withdraw every BGP announcement of this host and keep them withdrawn
    /// (the data path keeps forwarding what still arrives); returns once BIRD
    /// announces nothing. Then wait for traffic to move and stop the host.
    Drain(DrainArgs),
    /// Detach the data path and remove its pinned state (stop the agent first)
    /// and the nodes' managed neighbour entries; a BIRD it ran withdraws its
    /// announcements and stops.
    Down(PinArgs),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man {
        /// Instead, write lb.1 and a page for each command (lb-agent.1, ...)
        /// into this directory, as a package installs them.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct PinArgs {
    /// bpffs directory the agent pinned its state under.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}

#[derive(Args, Debug)]
pub struct BackendsArgs {
    #[command(flatten)]
    pub inspect: InspectArgs,
    /// Only this service: `VIP:PORT[/PROTO]` or its Kubernetes name (`ns/name:port`).
    pub service: Option<String>,
}

#[derive(Args, Debug)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub inspect: InspectArgs,
    /// Only flows of this service (`VIP:PORT[/PROTO]` or Kubernetes name).
    #[arg(long)]
    pub service: Option<String>,
    /// Only flows on this backend (`IP[:PORT]` or node name).
    #[arg(long)]
    pub backend: Option<String>,
    /// At most this many flows, most recently seen first.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub inspect: InspectArgs,
    /// Redraw every interval, like top (with --json: one JSON object per line).
    #[arg(long)]
    pub watch: bool,
    /// Time between samples, 0.1s to 1h (plain seconds, or 500ms, 2s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::units::parse_sample_interval)]
    pub interval: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    #[command(flatten)]
    pub inspect: InspectArgs,
    /// The client's address and port.
    pub client: std::net::SocketAddr,
    /// The VIP and port it connects to.
    pub vip: std::net::SocketAddr,
    /// Transport protocol of the flow.
    #[arg(long, value_enum, default_value_t = TraceProtocol::Tcp)]
    pub proto: TraceProtocol,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum TraceProtocol {
    Tcp,
    Udp,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["manifests", "kubeconfig", "in_cluster"])))]
pub struct AgentArgs {
    /// Read flags from this YAML file: its keys are the long flag names
    /// (`iface`, `vip-pool`, ...) with the values the flags take, a list for a
    /// repeatable flag, true or false for a switch. Flags on the command line
    /// win; a repeatable one given there replaces the file's list.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Interface to attach to (repeat for two-arm: client side and node side).
    #[arg(long = "iface", required = true, value_name = "IF")]
    pub interfaces: Vec<String>,
    /// YAML file or directory of Kubernetes Services, Nodes and EndpointSlices;
    /// re-read on change and on SIGHUP.
    #[arg(long, value_name = "PATH")]
    pub manifests: Option<PathBuf>,
    /// Watch the Kubernetes API server of this kubeconfig's current context.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Watch the Kubernetes API server with the pod's service account.
    #[arg(long)]
    pub in_cluster: bool,
    /// The namespace MetalLB's configuration (IPAddressPools,
    /// L2Advertisements, BGPAdvertisements, BGPPeers, BFDProfiles,
    /// Communities, and the Secrets of BGP passwords) is read from, on an API
    /// server. Without MetalLB's CRDs installed there is none, and the flags
    /// decide.
    #[arg(long, value_name = "NAMESPACE", default_value = crate::k8s::metallb::objects::DEFAULT_NAMESPACE)]
    pub metallb_namespace: String,
    /// Elect one of the agents reading the same API server (by the Lease
    /// `lb-controller` in --leader-election-namespace) to assign addresses
    /// and write statuses and Events, the others serving the addresses the
    /// statuses show; and one of those on a segment to answer ARP and NDP
    /// (--layer2-lease). `false`: this agent assigns, writes and answers on
    /// its own, right only when it is the only one.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// The namespace of the leader elections' Leases.
    #[arg(long, value_name = "NAMESPACE", default_value = "lb-system")]
    pub leader_election_namespace: String,
    /// The Lease (in --leader-election-namespace) by which the agents on one
    /// segment elect the one that answers ARP and NDP for the VIPs there
    /// (the others take over when it dies): hosts on one segment share one,
    /// hosts on different segments each need their own. Only with
    /// --leader-elect; without it, every agent answers.
    #[arg(long, value_name = "NAME", default_value = crate::k8s::election::LAYER2_LEASE)]
    pub layer2_lease: String,
    /// How long a Lease stays held after its holder stops renewing it
    /// (when another agent takes over); it is renewed every sixth of that.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = crate::units::parse_lease_duration)]
    pub leader_election_lease_duration: std::time::Duration,
    /// This agent's name in the Lease and in the Events it records, unique
    /// among the agents (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// Serve Services of this spec.loadBalancerClass (and those without one).
    #[arg(long, value_name = "CLASS", default_value = crate::k8s::translate::DEFAULT_LOAD_BALANCER_CLASS)]
    pub load_balancer_class: String,
    /// CIDR to assign VIPs from to Services that request none (the pool "default").
    #[arg(long, value_name = "CIDR")]
    pub vip_pool: Option<String>,
    /// A named VIP pool of IPv4 and/or IPv6 ranges, e.g.
    /// public=198.51.100.0/28,198.51.100.40-198.51.100.50,2001:db8:ff::/120
    /// (repeatable; Services pick one with the annotation lb.dev/pool, else get
    /// the first).
    #[arg(long = "pool", value_name = "NAME=RANGES")]
    pub pools: Vec<String>,
    /// Which Node address type to send traffic to.
    #[arg(long, value_name = "TYPE", default_value = "InternalIP", value_parser = ["InternalIP", "ExternalIP"])]
    pub node_address_type: String,
    /// The port of kube-proxy's /healthz on the nodes (its
    /// --healthz-bind-address), where the nodes of a Service port without a
    /// NodePort (allocateLoadBalancerNodePorts: false, served with
    /// --forwarding dsr) are health checked; 0 leaves such ports unchecked
    /// (for a kube-proxy whose health port lb cannot reach).
    #[arg(long, value_name = "PORT", default_value_t = KUBE_PROXY_HEALTHZ_PORT)]
    pub kube_proxy_healthz_port: u16,
    /// How the nodes of a Service port with externalTrafficPolicy Cluster
    /// are health checked: node-port, a TCP connect to its NodePort on each
    /// node (one check per node and port); kube-proxy, an HTTP GET of
    /// kube-proxy's /healthz (--kube-proxy-healthz-port) on each node, one
    /// check per node whatever the Services, as cloud load balancers check
    /// them: for clusters with many Services and nodes.
    #[arg(long, value_enum, value_name = "HOW", default_value_t = ClusterCheck::NodePort)]
    pub cluster_health_check: ClusterCheck,
    /// Time between health checks of the backends; 0 switches them off.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = crate::units::parse_duration)]
    pub health_interval: std::time::Duration,
    /// How long one health check may take.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::units::parse_positive_duration)]
    pub health_timeout: std::time::Duration,
    /// Failed checks in a row after which a backend gets no new flows.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub health_fall: u32,
    /// Further failed checks after which a failing backend is removed (its flows re-hash).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub health_dead: u32,
    /// Passed checks in a row that bring a failing backend back.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub health_rise: u32,
    /// Maglev table size per service (a prime); each service port reserves two
    /// rings of it, 8 bytes an entry.
    #[arg(long, default_value_t = DEFAULT_RING_SIZE)]
    pub ring_size: u32,
    /// How many services the Maglev map has room for.
    #[arg(long, default_value_t = DEFAULT_MAX_SERVICES)]
    pub max_services: u32,
    /// bpffs directory to pin the maps and links under.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Remove the pinned state and detach on exit, instead of leaving the data
    /// path forwarding for the next agent.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Serve Prometheus metrics, /healthz and /readyz on this address.
    #[arg(long, default_value = "127.0.0.1:9641")]
    pub metrics_address: std::net::SocketAddr,
    /// Export the per-backend series (lb_backend_*): one each per service
    /// port and node serving it, which with externalTrafficPolicy Cluster is
    /// every node, so thousands of Services over hundreds of nodes make
    /// millions. `false` keeps to the per-service series (`lb backends`
    /// still lists the backends).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub backend_metrics: bool,
    /// Answer ICMP echo requests (ping) to VIPs in the data path; by default
    /// they pass to the kernel.
    #[arg(long)]
    pub answer_ping: bool,
    /// New flows each CPU records per second; above it new flows are
    /// forwarded by the stateless Maglev choice without a flow entry, so a SYN
    /// flood cannot evict established flows. 0 records every flow.
    #[arg(long, default_value_t = DEFAULT_NEW_FLOW_LIMIT)]
    pub new_flow_limit: u32,
    /// Entries of each family's flow table (IPv4 and IPv6 flows are kept
    /// apart), shared out between the CPUs' LRU lists. Pinned tables keep
    /// the size they were created with.
    #[arg(long, default_value_t = lb_common::MAX_FLOWS)]
    pub max_flows: u32,
    /// How VIPs become reachable: `arp` answers ARP and IPv6 Neighbor
    /// Solicitations for them with the interface's MAC (in the data path) and
    /// sends a gratuitous ARP / unsolicited Neighbor Advertisement when one
    /// appears (of several agents on one segment and API server, only the
    /// holder of --layer2-lease, another taking over when it dies); `bgp`
    /// announces each VIP with a healthy backend to the --bgp-peer routers
    /// through a BIRD 2 daemon the agent runs (several lb hosts behind ECMP);
    /// `none` leaves routing to the VIPs to others. Default `arp`. Only while MetalLB's configuration has no
    /// L2Advertisement or BGPAdvertisement: when it has, those decide for
    /// each VIP by its pool (and a --announce given is reported as overruled).
    #[arg(long, value_enum, value_name = "MODE")]
    pub announce: Option<Announce>,
    #[command(flatten)]
    pub bgp: BgpArgs,
    /// How packets reach the chosen node: `nat` rewrites them to (node IP,
    /// NodePort) and translates the replies, which must come back through an
    /// lb host; `dsr` (direct server return) keeps VIP:port and only sets the
    /// node's MAC: the node's kube-proxy takes the packet and answers the
    /// client directly. DSR needs every node on a segment lb is attached to.
    #[arg(long, value_enum, default_value_t = Forwarding::Nat)]
    pub forwarding: Forwarding,
}

/// The BGP sessions of `--announce bgp`.
#[derive(Args, Debug)]
pub struct BgpArgs {
    /// This host's AS number (1 to 4294967295).
    #[arg(long, value_name = "ASN")]
    pub bgp_asn: Option<String>,
    /// A router to announce the VIPs to, with its AS (repeatable, each
    /// address once; IPv4 or IPv6, not link-local): IPv4 VIPs go to IPv4
    /// peers, IPv6 VIPs to IPv6 peers.
    #[arg(long = "bgp-peer", value_name = "ADDR@ASN")]
    pub bgp_peers: Vec<String>,
    /// BGP router id [default: the first IPv4 address of the first --iface];
    /// with MetalLB BGPPeers (any --announce), BIRD's own, for sessions
    /// without a routerID [default there: the lowest routerID].
    #[arg(long, value_name = "IPV4")]
    pub bgp_router_id: Option<std::net::Ipv4Addr>,
    /// BGP hold time in seconds: 0 (no keepalives) or 3 to 65535, as BIRD
    /// and RFC 4271 take it.
    #[arg(long, value_name = "SECONDS", default_value_t = 90, value_parser = parse_hold_time)]
    pub bgp_hold_time: u16,
    /// BFD transmit and receive interval on every BGP session; 0 switches BFD off.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = crate::units::parse_duration)]
    pub bfd_interval: std::time::Duration,
    /// BFD packets missed before a session is declared down (1 to 255).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub bfd_multiplier: u32,
    /// The BIRD 2 binary (Debian package bird2).
    #[arg(long, value_name = "PATH", default_value = "bird")]
    pub bird: PathBuf,
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Announce again (undo an earlier drain).
    #[arg(long)]
    pub undo: bool,
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

/// A BGP hold time in seconds: 0, or 3 to 65535 (RFC 4271 4.2).
fn parse_hold_time(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(seconds) if seconds == 0 || seconds >= 3 => Ok(seconds),
        Ok(seconds) => Err(format!("{seconds}s: 0 or 3 to 65535")),
        Err(_) => Err(format!("{:?} is not 0 or 3 to 65535 seconds", text.trim())),
    }
}
