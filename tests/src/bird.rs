//! BIRD 2 as the test's own router: an eBGP speaker that learns VIPs from the
//! lb hosts, checks them with BFD and installs them, several next hops merged
//! into one ECMP route, in its namespace's kernel table.
//!
//! The daemon runs in the foreground under a [`ChildGuard`], so it logs into
//! the guard's log and dies with it; `birdc` talks to it through a socket in
//! the guard's own directory, from any namespace.

use std::{
    ffi::OsStr,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::{ChildGuard, NetNs};

pub const BIRD: &str = "/usr/sbin/bird";
/// The router's AS, as in the issue.
pub const ROUTER_ASN: u32 = 64500;
/// The lb hosts' AS.
pub const LB_ASN: u32 = 64512;

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A running BIRD; dropping it stops the daemon (SIGTERM, which closes its
/// sessions) and removes its files.
#[derive(Debug)]
pub struct Bird {
    daemon: ChildGuard,
    dir: PathBuf,
}

impl Bird {
    /// Starts BIRD in `ns` with `config` and waits until it answers on its socket.
    pub fn start(ns: &NetNs, config: &str) -> Result<Bird> {
        let dir = std::env::temp_dir().join(format!(
            "lb-tests-bird-{}-{}",
            ns.name(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
        let (socket, pid) = (dir.join("bird.ctl"), dir.join("bird.pid"));
        let args: [&OsStr; 7] = [
            "-f".as_ref(),
            "-c".as_ref(),
            conf.as_ref(),
            "-s".as_ref(),
            socket.as_ref(),
            "-P".as_ref(),
            pid.as_ref(),
        ];
        let daemon = ns.spawn(BIRD, &args)?;
        let bird = Bird { daemon, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while birdc(&bird.socket(), "show status").is_err() {
            if Instant::now() > deadline {
                bail!(
                    "BIRD in {} does not answer; log:\n{}",
                    ns.name(),
                    bird.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(bird)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// Runs one `birdc` command against this daemon.
    pub fn birdc(&self, command: &str) -> Result<String> {
        birdc(&self.socket(), command)
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        // The daemon goes with its guard; then its files.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `birdc -s SOCKET COMMAND...` and returns its output; `command` is
/// split on whitespace.
pub fn birdc(socket: &Path, command: &str) -> Result<String> {
    let output = Command::new("birdc")
        .arg("-s")
        .arg(socket)
        .args(command.split_whitespace())
        .output()
        .context("running birdc")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    // birdc exits 0 also when it cannot connect; it says so on stdout.
    if !output.status.success() || text.contains("Unable to connect") {
        bail!(
            "birdc -s {} {command}: {text}{}",
            socket.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(text)
}

/// `show route` output, each route's "learnt at" time taken apart from the
/// rest. BIRD keeps that time on its monotonic clock and shows it as the wall
/// time now minus the route's age, the two clocks read at slightly different
/// moments, so one route shows a millisecond either way from one `show` to
/// the next: the times are compared within [`LearntRoutes::TIME_JITTER`],
/// everything else exactly.
#[derive(Debug, Clone)]
pub struct LearntRoutes {
    /// The output with every time replaced by `<time>`.
    shape: String,
    /// The times, in milliseconds since midnight, in order of appearance.
    times: Vec<i64>,
}

impl LearntRoutes {
    /// How far the shown time of a route that was not announced again may
    /// move; an announcement again comes at least seconds later in the tests.
    pub const TIME_JITTER: i64 = 5;

    /// Takes `show route` output printed with `timeformat route iso long ms`.
    pub fn parse(output: &str) -> LearntRoutes {
        let mut times = Vec::new();
        let shape = output
            .split_inclusive(char::is_whitespace)
            .map(|word| {
                let bare = word.trim_end().trim_end_matches(']');
                match time_of_day_ms(bare) {
                    Some(time) => {
                        times.push(time);
                        word.replacen(bare, "<time>", 1)
                    }
                    None => word.to_owned(),
                }
            })
            .collect();
        LearntRoutes { shape, times }
    }

    /// Whether `other` shows the same routes, none learnt again since.
    pub fn same_as(&self, other: &LearntRoutes) -> bool {
        self.shape == other.shape
            && self
                .times
                .iter()
                .zip(&other.times)
                .all(|(a, b)| (a - b).abs() <= Self::TIME_JITTER)
    }
}

impl std::fmt::Display for LearntRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (times {:?} ms)", self.shape, self.times)
    }
}

/// `HH:MM:SS.mmm` as milliseconds since midnight.
fn time_of_day_ms(word: &str) -> Option<i64> {
    let (hms, ms) = word.split_once('.')?;
    let mut parts = hms.split(':');
    let mut field = |digits: usize| {
        parts
            .next()
            .filter(|part| part.len() == digits)
            .and_then(|part| part.parse::<i64>().ok())
    };
    let (h, m, s) = (field(2)?, field(2)?, field(2)?);
    if parts.next().is_some() || ms.len() != 3 {
        return None;
    }
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<i64>().ok()?)
}

/// Whether BIRD at `socket` has a BFD session to `peer` that is Up.
pub fn bfd_up(socket: &Path, peer: Ipv4Addr) -> Result<bool> {
    let sessions = birdc(socket, "show bfd sessions")?;
    let peer = peer.to_string();
    Ok(sessions.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some(peer.as_str()) && words.any(|w| w == "Up")
    }))
}

/// The router's configuration: eBGP from AS [`ROUTER_ASN`] to every one of
/// `peers` (AS [`LB_ASN`]), everything learnt exported to the kernel with
/// equal routes merged into one multipath route, BFD at 100 ms x 3 on every
/// session.
pub fn router_config(router_id: Ipv4Addr, peers: &[Ipv4Addr]) -> String {
    let mut config = format!(
        "router id {router_id};
log stderr {{ info, remote, warning, error, auth, fatal, bug }};
# Milliseconds, so that a route withdrawn and announced again within a
# second shows a new time.
timeformat route iso long ms;
timeformat protocol iso long ms;
protocol device {{ }}
protocol kernel {{
  ipv4 {{ import none; export all; }};
  merge paths on;
}}
protocol bfd {{
  interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};
}}
template bgp lbhost {{
  local {router_id} as {ROUTER_ASN};
  ipv4 {{ import all; export none; }};
  bfd on;
  # A peer that died and comes back is taken again at once, not after minutes.
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 5;
}}
"
    );
    for (index, peer) in peers.iter().enumerate() {
        config.push_str(&format!(
            "protocol bgp lb{index} from lbhost {{ neighbor {peer} as {LB_ASN}; }}\n"
        ));
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOWN: &str = "Table master4:
10.0.0.100/32        unicast [lb0 2026-12-05 05:04:01.210] * (100) [AS64512i]
	via 10.0.1.11 on r0
                     unicast [lb1 2026-12-05 05:04:02.999] (100) [AS64512i]
	via 10.0.1.12 on r0
";

    #[test]
    fn routes_shown_a_millisecond_apart_are_the_same() {
        let before = LearntRoutes::parse(SHOWN);
        assert_eq!(before.times, [18_241_210, 18_242_999]);
        let jittered = LearntRoutes::parse(&SHOWN.replace("01.210", "01.211"));
        assert!(before.same_as(&jittered));
    }

    #[test]
    fn a_route_learnt_again_or_gone_is_not_the_same() {
        let before = LearntRoutes::parse(SHOWN);
        let again = LearntRoutes::parse(&SHOWN.replace("05:04:01.210", "05:04:03.500"));
        assert!(!before.same_as(&again));
        let gone = LearntRoutes::parse(&SHOWN.replace("10.0.1.12", "10.0.1.13"));
        assert!(!before.same_as(&gone));
        let hop_lost = LearntRoutes::parse(
            SHOWN
                .split_inclusive('\n')
                .take(3)
                .collect::<String>()
                .as_str(),
        );
        assert!(!before.same_as(&hop_lost));
    }
}
