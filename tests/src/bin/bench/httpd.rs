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
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use lb_tests::netns::NetNs;

/// How often workers look at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Bound on a request head; wrk's is far smaller.
const MAX_REQUEST: usize = 8192;

/// Running server; dropping it stops the workers within about [`POLL`].
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Serves `0.0.0.0:port` inside `ns` with `workers` threads.
pub fn serve(ns: &NetNs, port: u16, name: &str, workers: usize) -> Result<HttpServer> {
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
    let body = format!("{name}\n");
    let response: Arc<[u8]> = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into();
    let stop = Arc::new(AtomicBool::new(false));
    let mut server = HttpServer {
        stop: Arc::clone(&stop),
        workers: Vec::with_capacity(workers),
    };
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
        server.workers.push(worker);
    }
    Ok(server)
}

fn accept_loop(listener: &TcpListener, response: &[u8], stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if !readable(listener, POLL) {
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

/// Waits up to `timeout` for a connection to accept.
fn readable(socket: &impl AsRawFd, timeout: Duration) -> bool {
    let mut poll_fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut poll_fd, 1, millis) > 0 }
}
