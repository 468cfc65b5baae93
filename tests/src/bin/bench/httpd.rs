//! A small HTTP server for the nodes: a fixed pool of threads accepting on one
//! listener, one request per connection, then close.
//!
//! lb_tests::servers::http_name_server starts a thread per connection, which at
//! thousands of connections per second would make the server, not the load
//! balancer, the thing being measured. This one answers the same way (the
//! node's name as the body) without that cost. It is still in-process and
//! shares the machine's CPUs with everything else, which the report says.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use lb_tests::{
    netns::NetNs,
    servers::{self, ServerGuard},
};

/// How often workers look at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Bound on a request head; wrk's is far smaller.
const MAX_REQUEST: usize = 8192;

/// Serves `0.0.0.0:port` inside `ns` with `workers` threads.
pub fn serve(ns: &NetNs, port: u16, name: &str, workers: usize) -> Result<ServerGuard> {
    let listener = ns
        .enter(move || -> std::io::Result<TcpListener> {
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
            // Non-blocking, so that a worker woken with the others for one
            // connection goes back to polling instead of blocking in accept.
            listener.set_nonblocking(true)?;
            Ok(listener)
        })?
        .with_context(|| format!("binding TCP port {port} in {}", ns.name()))?;
    let listener = Arc::new(listener);
    let response: Arc<[u8]> = servers::http_response(name).into_bytes().into();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (listener, response, stop) = (
            Arc::clone(&listener),
            Arc::clone(&response),
            Arc::clone(&stop),
        );
        // Accepted sockets belong to the listener's namespace whatever thread
        // accepts them, so plain threads will do.
        let worker = std::thread::Builder::new()
            .name(format!("httpd-{port}"))
            .spawn(move || accept_loop(&listener, &response, &stop))
            .context("spawning an HTTP worker")?;
        threads.push(worker);
    }
    Ok(ServerGuard::new(stop, threads))
}

fn accept_loop(listener: &TcpListener, response: &[u8], stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if !servers::readable(listener, POLL) {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = answer(stream, response);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            // E.g. out of descriptors: don't spin.
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Reads the request head and answers; the connection closes on return.
fn answer(mut stream: TcpStream, response: &[u8]) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_nodelay(true)?;
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return Ok(());
        }
        match stream.read(&mut buf[len..])? {
            0 => return Ok(()),
            n => len += n,
        }
    }
    stream.write_all(response)
}
