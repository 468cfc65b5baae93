//! Long-lived TCP streams that talk all the time, to see whether an event (an
//! lb host dying, an agent restarting) breaks a connection or holds it up.
//!
//! Each stream is a [`LineClient`] on its own thread that sends a numbered line
//! every interval and checks the echo; it records the longest time it went
//! without an answer.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use crate::{netns::NetNs, servers::LineClient};

/// How long one answer may take before the stream counts as broken: far
/// longer than any stall a test accepts, so a stall is measured, not cut short.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What one stream saw.
#[derive(Clone, Debug)]
pub struct StreamReport {
    /// The client's port, which tells the stream apart in messages.
    pub local_port: u16,
    /// The node that answered (the server's greeting).
    pub node: String,
    pub answers: u64,
    /// The longest time between two answers (or from the greeting to the first).
    pub longest_stall: Duration,
    /// Why the stream ended before it was stopped, if it did.
    pub error: Option<String>,
}

/// Streams running on their own threads; [`stop`](Self::stop) ends them and
/// hands back their reports.
#[derive(Debug)]
pub struct Streams {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<StreamReport>>,
}

impl Streams {
    /// Opens `count` connections from `client` to `addr` (each from its own
    /// ephemeral port, so a router hashing on ports spreads them), every one
    /// sending a line each `interval`. Fails if a connection cannot be made.
    pub fn start(
        client: &NetNs,
        addr: SocketAddr,
        count: usize,
        interval: Duration,
    ) -> Result<Streams> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(count);
        for _ in 0..count {
            let line_client = client
                .enter(move || LineClient::connect(addr, ANSWER_TIMEOUT))?
                .with_context(|| format!("opening a stream to {addr}"))?;
            let stop = Arc::clone(&stop);
            threads.push(
                std::thread::Builder::new()
                    .name("stream".to_owned())
                    .spawn(move || talk(line_client, interval, &stop))
                    .context("spawning a stream thread")?,
            );
        }
        Ok(Streams { stop, threads })
    }

    /// Stops every stream and returns what each saw.
    pub fn stop(self) -> Vec<StreamReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|thread| thread.join().expect("stream thread panicked"))
            .collect()
    }
}

/// Sends `"<n>"` every `interval` and expects `"<node> <n>"` back until `stop`.
fn talk(mut client: LineClient, interval: Duration, stop: &AtomicBool) -> StreamReport {
    let mut report = StreamReport {
        local_port: client.local_port(),
        node: client.greeting().to_owned(),
        answers: 0,
        longest_stall: Duration::ZERO,
        error: None,
    };
    let mut last_answer = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(interval);
        let line = report.answers.to_string();
        match client.ask(&line) {
            Ok(answer) if answer == format!("{} {line}", report.node) => {
                report.longest_stall = report.longest_stall.max(last_answer.elapsed());
                last_answer = Instant::now();
                report.answers += 1;
            }
            Ok(answer) => {
                report.error = Some(format!("sent {line:?}, got {answer:?}"));
                break;
            }
            Err(err) => {
                report.error = Some(format!("after {} answers: {err:#}", report.answers));
                break;
            }
        }
    }
    client.close();
    report
}

/// Checks that no stream broke, none stalled for `max_stall` or longer and
/// every one kept talking; returns the longest stall of all.
pub fn check(reports: &[StreamReport], max_stall: Duration) -> Result<Duration> {
    // With no stream every check below would hold.
    ensure!(!reports.is_empty(), "no stream to check");
    let broken: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            r.error
                .as_ref()
                .map(|e| format!("port {} ({}): {e}", r.local_port, r.node))
        })
        .collect();
    ensure!(
        broken.is_empty(),
        "{} of {} streams broke:\n{}",
        broken.len(),
        reports.len(),
        broken.join("\n")
    );
    let longest = reports
        .iter()
        .map(|r| r.longest_stall)
        .max()
        .unwrap_or_default();
    ensure!(
        longest < max_stall,
        "a stream stalled for {longest:?} (at most {max_stall:?} allowed)"
    );
    ensure!(
        reports.iter().all(|r| r.answers > 0),
        "a stream never got an answer"
    );
    Ok(longest)
}
