//! The BIRD 2 daemon an agent runs for `--announce bgp`. Its files live in
//! the agent's run directory; it is started once and outlives the agent (the
//! routes stay announced while the pinned data path forwards), a later agent
//! takes it over, and `lb down` stops it, withdrawing first. Everything goes
//! through BIRD's control socket, so `birdc` is not needed.

use std::{
    collections::BTreeSet,
    fs, io,
    io::{BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    bgp::BgpSettings,
    bird_config::{self, Exports},
};
use crate::rundir;

/// How long BIRD may take to open its control socket, or to exit.
const PATIENCE: Duration = Duration::from_secs(5);
/// A reply to a command must come within this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Between withdrawing everything and shutting down: time for the
/// withdrawals to reach the peers.
const WITHDRAW_GRACE: Duration = Duration::from_millis(500);

#[derive(thiserror::Error, Debug)]
pub enum BirdError {
    #[error("{0} not found: install bird2 (apt-get install bird2) or pass --bird PATH")]
    NotFound(String),
    #[error("starting BIRD ({binary}): {message}")]
    Start { binary: String, message: String },
    #[error("BIRD's control socket {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("BIRD answered `{command}` with: {reply}")]
    Refused { command: String, reply: String },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("BIRD did not stop within {PATIENCE:?} (pid file {})", .0.display())]
    NotStopped(PathBuf),
}

/// The BIRD binary: `binary` itself when it names a path, else the first
/// match on `PATH`.
pub fn find_binary(binary: &Path) -> Result<PathBuf, BirdError> {
    let executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if binary.components().count() > 1 {
        executable(binary).then(|| binary.to_owned())
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(binary))
                .find(|candidate| executable(candidate))
        })
    };
    found.ok_or_else(|| BirdError::NotFound(binary.display().to_string()))
}

/// One agent's BIRD, found by its files.
pub struct Bird {
    dir: PathBuf,
}

impl Bird {
    /// The BIRD of the agent pinning under `bpffs`.
    pub fn of(bpffs: &Path) -> Self {
        Self {
            dir: rundir::dir(bpffs),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.file("bird.ctl")
    }

    /// While this file exists the agent announces nothing (`lb drain`).
    pub fn drain_marker(&self) -> PathBuf {
        self.file("drain")
    }

    pub fn draining(&self) -> bool {
        self.drain_marker().exists()
    }

    /// Whether a BIRD answers on the control socket.
    pub fn running(&self) -> bool {
        self.command("show status").is_ok()
    }

    /// Configures BIRD for `settings` announcing `exports`: reconfigures the
    /// running one (an earlier agent's, too), or starts one.
    pub fn apply(
        &self,
        binary: &Path,
        settings: &BgpSettings,
        exports: &Exports,
    ) -> Result<(), BirdError> {
        fs::create_dir_all(&self.dir).map_err(|source| BirdError::Write {
            path: self.dir.clone(),
            source,
        })?;
        self.write_routes(settings, exports)?;
        self.write("bird.conf", &bird_config::bird_config(settings, &self.dir))?;
        if self.running() {
            return self.configure();
        }
        self.start(binary)
    }

    /// Announces exactly `exports`, with the sessions of `settings` as they
    /// are.
    pub fn announce(&self, settings: &BgpSettings, exports: &Exports) -> Result<(), BirdError> {
        self.write_routes(settings, exports)?;
        self.configure()
    }

    /// Withdraws every route, whatever the sessions.
    pub fn withdraw(&self) -> Result<(), BirdError> {
        self.write("routes.conf", &bird_config::routes(&BTreeSet::new()))?;
        self.configure()
    }

    fn write_routes(&self, settings: &BgpSettings, exports: &Exports) -> Result<(), BirdError> {
        self.write("exports.conf", &bird_config::exports(settings, exports))?;
        self.write("routes.conf", &bird_config::routes(&exports.prefixes()))
    }

    /// Withdraws everything, then shuts BIRD down and removes its files.
    /// Returns whether a BIRD was running.
    pub fn stop(&self) -> Result<bool, BirdError> {
        if !self.running() {
            let _ = fs::remove_dir_all(&self.dir);
            return Ok(false);
        }
        self.withdraw()?;
        std::thread::sleep(WITHDRAW_GRACE);
        let pid = fs::read_to_string(self.file("bird.pid")).ok();
        self.command("down")?;
        let deadline = Instant::now() + PATIENCE;
        while let Some(pid) = pid.as_deref().map(str::trim)
            && Path::new("/proc").join(pid).exists()
        {
            if Instant::now() > deadline {
                return Err(BirdError::NotStopped(self.file("bird.pid")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir_all(&self.dir);
        Ok(true)
    }

    fn configure(&self) -> Result<(), BirdError> {
        self.command("configure").map(drop)
    }

    fn start(&self, binary: &Path) -> Result<(), BirdError> {
        let error = |message: String| BirdError::Start {
            binary: binary.display().to_string(),
            message,
        };
        // BIRD checks the configuration, then daemonizes: the command returns.
        let output = Command::new(binary)
            .arg("-c")
            .arg(self.file("bird.conf"))
            .arg("-s")
            .arg(self.socket())
            .arg("-P")
            .arg(self.file("bird.pid"))
            .output()
            .map_err(|e| error(e.to_string()))?;
        if !output.status.success() {
            return Err(error(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ));
        }
        let deadline = Instant::now() + PATIENCE;
        while !self.running() {
            if Instant::now() > deadline {
                return Err(error(format!(
                    "no control socket at {} after {PATIENCE:?}",
                    self.socket().display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn write(&self, name: &str, text: &str) -> Result<(), BirdError> {
        let path = self.file(name);
        let tmp = self.file(&format!(".{name}.tmp"));
        fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|source| BirdError::Write { path, source })
    }

    /// Runs one command on the control socket; returns the reply's text.
    pub fn command(&self, command: &str) -> Result<String, BirdError> {
        let path = self.socket();
        let socket_error = |source| BirdError::Socket {
            path: path.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&path).map_err(socket_error)?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(socket_error)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(socket_error)?);
        // The greeting ("0001 BIRD 2.0.12 ready."), then the reply.
        read_reply(&mut reader).map_err(socket_error)?;
        writeln!(stream, "{command}").map_err(socket_error)?;
        let (code, text) = read_reply(&mut reader).map_err(socket_error)?;
        // 8xxx: run-time errors, 9xxx: parse errors (BIRD's doc/prog).
        if code >= 8000 {
            return Err(BirdError::Refused {
                command: command.to_owned(),
                reply: text.trim().to_owned(),
            });
        }
        Ok(text)
    }

    /// Sessions, BFD and what is announced, for `lb bgp`.
    pub fn status(&self) -> Result<BgpStatus, BirdError> {
        let mut sessions = parse_sessions(&self.command("show protocols all")?);
        let bfd = self.command("show bfd sessions").unwrap_or_default();
        for session in &mut sessions {
            session.bfd = bfd_state(&bfd, &session.peer);
        }
        let mut announced = BTreeSet::new();
        for name in [bird_config::STATIC_V4, bird_config::STATIC_V6] {
            let routes = self.command(&format!("show route protocol {name}"))?;
            announced.extend(prefixes(&routes));
        }
        Ok(BgpStatus {
            sessions,
            announced: announced.into_iter().collect(),
            draining: self.draining(),
        })
    }
}

/// Reads one reply: lines `DDDD-text` (more follows), ` text` (more of the
/// same), until `DDDD text`. Returns the last code and the text.
fn read_reply(reader: &mut impl io::BufRead) -> io::Result<(u32, String)> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "BIRD closed the connection mid-reply",
            ));
        }
        let line = line.trim_end_matches('\n');
        let code = line.get(..4).and_then(|c| c.parse::<u32>().ok());
        match (code, line.as_bytes().get(4)) {
            (Some(code), Some(b' ')) => {
                text.push_str(&line[5..]);
                text.push('\n');
                return Ok((code, text));
            }
            (Some(_), Some(b'-')) => text.push_str(&line[5..]),
            _ => text.push_str(line.strip_prefix(' ').unwrap_or(line)),
        }
        text.push('\n');
    }
}

/// What `lb bgp --json` prints.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct BgpStatus {
    pub sessions: Vec<Session>,
    /// Prefixes announced: one per VIP whose Service has a healthy backend.
    pub announced: Vec<String>,
    /// `lb drain` asked for nothing to be announced.
    pub draining: bool,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Session {
    /// The session's name: the BGPPeer's, or `peerN` for the `N`th
    /// `--bgp-peer` (BIRD's protocol name without its `lb_`).
    pub name: String,
    pub peer: String,
    pub peer_as: String,
    /// BGP state: Established, Active, Connect...
    pub state: String,
    /// BFD session state (Up, Down, Init), when BFD runs.
    pub bfd: Option<String>,
}

/// The BGP sessions of `show protocols all`.
fn parse_sessions(text: &str) -> Vec<Session> {
    let mut sessions: Vec<Session> = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(' ') && words.get(1) == Some(&"BGP") {
            let protocol = words[0];
            sessions.push(Session {
                name: protocol
                    .strip_prefix(bird_config::SESSION_PREFIX)
                    .unwrap_or(protocol)
                    .to_owned(),
                ..Session::default()
            });
            continue;
        }
        let Some(session) = sessions.last_mut() else {
            continue;
        };
        let value = |key: &str| line.trim().strip_prefix(key).map(|v| v.trim().to_owned());
        if let Some(peer) = value("Neighbor address:") {
            session.peer = peer;
        } else if let Some(asn) = value("Neighbor AS:") {
            session.peer_as = asn;
        } else if let Some(state) = value("BGP state:") {
            session.state = state;
        }
    }
    sessions
}

/// The state of the BFD session with `peer` in `show bfd sessions`.
fn bfd_state(text: &str, peer: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        (words.first() == Some(&peer)).then(|| words.get(2).map(|s| (*s).to_owned()))?
    })
}

/// The prefixes of a `show route` listing.
fn prefixes(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines().filter_map(|line| {
        let first = line.split_whitespace().next()?;
        let (address, len) = first.split_once('/')?;
        (address.parse::<IpAddr>().is_ok() && len.parse::<u8>().is_ok()).then(|| first.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_to_their_last_line() {
        let wire = "0001 BIRD 2.0.12 ready.\n\
                    0002-Reading configuration from /run/lb/x/bird.conf\n\
                    0003 Reconfigured\n";
        let mut reader = io::Cursor::new(wire);
        assert_eq!(read_reply(&mut reader).unwrap().0, 1);
        let (code, text) = read_reply(&mut reader).unwrap();
        assert_eq!(code, 3);
        assert_eq!(
            text,
            "Reading configuration from /run/lb/x/bird.conf\nReconfigured\n"
        );
        let error = "9001 /run/lb/x/bird.conf:3:1 syntax error\n";
        assert_eq!(read_reply(&mut io::Cursor::new(error)).unwrap().0, 9001);
        assert!(read_reply(&mut io::Cursor::new("0002-half\n")).is_err());
    }

    #[test]
    fn sessions_bfd_and_routes_are_read_from_listings() {
        let protocols = "Name       Proto      Table      State  Since         Info\n\
                         device1    Device     ---        up     12:00:00.000  \n\
                         lb_peer1   BGP        ---        up     12:00:01.000  Established   \n  \
                         BGP state:          Established\n    \
                         Neighbor address: 10.1.0.1\n    \
                         Neighbor AS:      64500\n\
                         lb_vips4   Static     master4    up     12:00:00.000  \n";
        let bfd = "lb_bfd:\nIP address                Interface  State      Since         Interval  Timeout\n\
                   10.1.0.1                  eth0       Up         12:00:01.000    0.100    0.300\n";
        let mut sessions = parse_sessions(protocols);
        sessions[0].bfd = bfd_state(bfd, &sessions[0].peer);
        assert_eq!(
            sessions,
            [Session {
                name: "peer1".to_owned(),
                peer: "10.1.0.1".to_owned(),
                peer_as: "64500".to_owned(),
                state: "Established".to_owned(),
                bfd: Some("Up".to_owned()),
            }]
        );
        let routes =
            "Table master4:\n198.51.100.10/32     blackhole [lb_vips4 12:00:00.000] * (200)\n";
        assert_eq!(prefixes(routes).collect::<Vec<_>>(), ["198.51.100.10/32"]);
    }

    #[test]
    fn a_missing_binary_says_how_to_get_one() {
        let error = find_binary(Path::new("/nonexistent/bird"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("apt-get install bird2"), "{error}");
        assert!(find_binary(Path::new("no-such-bird-binary")).is_err());
        assert_eq!(
            find_binary(Path::new("sh")).unwrap().file_name().unwrap(),
            "sh"
        );
    }
}
