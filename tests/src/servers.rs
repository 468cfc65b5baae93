//! Servers that answer with the name of the node they run on, so a test can see
//! which backend the load balancer picked, and the clients that talk to them.
//!
//! Servers listen on `[::]` as dual-stack sockets, so they answer IPv4 and
//! IPv6 alike; clients take either family's address.
//!
//! Servers run on threads of the test process with their sockets created inside
//! a namespace; clients are plain functions meant to run inside the client's
//! namespace through [`NetNs::enter`]. A socket keeps the namespace it was
//! created in, so a [`LineClient`] made inside `enter` can be used afterwards
//! from any thread.
//!
//! Three protocols, each on its own port for clarity:
//! - name protocol (TCP, [`tcp_name_server`]): the server sends `"{name}\n"` on
//!   connect, then answers every line with `"{name} {line}\n"`, so long-lived
//!   connections can check that they stay on one node;
//! - HTTP ([`http_name_server`]): any request gets `"{name}\n"` as body, for curl
//!   in the demo;
//! - UDP echo ([`udp_echo_server`]): each datagram is answered with
//!   `"{name} {payload}"`.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, ErrorKind, Read, Write},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener,
        TcpStream, UdpSocket,
    },
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use socket2::{Domain, Socket, Type};

use crate::netns::NetNs;

/// How often server threads look at their stop flag; it bounds how long
/// dropping a [`ServerGuard`] takes.
const POLL: Duration = Duration::from_millis(50);

/// Handles one accepted connection until the client leaves or the server stops.
type Handler = fn(TcpStream, &str, &AtomicBool) -> io::Result<()>;

/// Running servers; dropping the guard stops them and their connection
/// handlers within about [`POLL`], open connections included.
#[derive(Debug)]
pub struct ServerGuard {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl ServerGuard {
    /// Guards `threads`, which must return soon after `stop` is set.
    pub fn new(stop: Arc<AtomicBool>, threads: Vec<JoinHandle<()>>) -> ServerGuard {
        ServerGuard { stop, threads }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Serves the name protocol on `[::]:port` inside `ns`.
pub fn tcp_name_server(ns: &NetNs, port: u16, name: &str) -> Result<ServerGuard> {
    serve_tcp(ns, port, name, name_connection)
}

/// Answers HTTP requests on `[::]:port` inside `ns` with `"{name}\n"`.
pub fn http_name_server(ns: &NetNs, port: u16, name: &str) -> Result<ServerGuard> {
    serve_tcp(ns, port, name, http_connection)
}

/// Answers each datagram to `[::]:port` inside `ns` with `"{name} {payload}"`.
pub fn udp_echo_server(ns: &NetNs, port: u16, name: &str) -> Result<ServerGuard> {
    let socket = ns
        .enter(move || dual_stack_socket(Type::DGRAM, port))?
        .with_context(|| format!("binding UDP port {port} in {}", ns.name()))?;
    let socket = UdpSocket::from(socket);
    socket.set_read_timeout(Some(POLL))?;
    let prefix = format!("{name} ").into_bytes();
    start(ns, move |stop| {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            // Errors are timeouts (look at the flag again) or transient.
            if let Ok((len, peer)) = socket.recv_from(&mut buf) {
                let reply = [prefix.as_slice(), &buf[..len]].concat();
                let _ = socket.send_to(&reply, peer);
            }
        }
    })
}

/// Listens inside `ns` and accepts on a thread.
fn serve_tcp(ns: &NetNs, port: u16, name: &str, handler: Handler) -> Result<ServerGuard> {
    let listener = ns
        .enter(move || -> io::Result<TcpListener> {
            let socket = dual_stack_socket(Type::STREAM, port)?;
            socket.listen(LISTEN_BACKLOG)?;
            Ok(socket.into())
        })?
        .with_context(|| format!("listening on TCP port {port} in {}", ns.name()))?;
    let name: Arc<str> = name.into();
    start(ns, move |stop| accept_loop(&listener, &name, handler, stop))
}

/// Pending connections a listener queues: enough for clients that connect
/// in bursts.
const LISTEN_BACKLOG: i32 = 1024;

/// A socket bound to `[::]:port` that takes IPv4 too (as v4-mapped
/// addresses), whatever `net.ipv6.bindv6only` says. SO_REUSEADDR, as std sets
/// it on listeners, lets a port be reused right after a previous server stopped.
fn dual_stack_socket(kind: Type, port: u16) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, kind, None)?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0).into())?;
    Ok(socket)
}

fn start(ns: &NetNs, serve: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Result<ServerGuard> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = ns.spawn_thread(move || serve(flag))?;
    Ok(ServerGuard::new(stop, vec![thread]))
}

fn accept_loop(listener: &TcpListener, name: &Arc<str>, handler: Handler, stop: Arc<AtomicBool>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if !readable(listener, POLL) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) => {
                // E.g. out of descriptors: don't spin.
                std::thread::sleep(POLL);
                continue;
            }
        };
        // Accepted sockets are blocking (Linux does not inherit O_NONBLOCK);
        // the timeout lets handlers notice the stop flag.
        if stream.set_read_timeout(Some(POLL)).is_err() {
            continue;
        }
        handlers.retain(|handler| !handler.is_finished());
        let (name, stop) = (Arc::clone(name), Arc::clone(&stop));
        if let Ok(thread) = std::thread::Builder::new()
            .name(format!("conn-{name}"))
            .spawn(move || {
                let _ = handler(stream, &name, &stop);
            })
        {
            handlers.push(thread);
        }
    }
    for handler in handlers {
        let _ = handler.join();
    }
}

/// Waits up to `timeout` for `socket` to become readable (poll(2); for a
/// listener: a connection to accept), so that loops can look at their stop flag
/// in between without adding latency.
pub fn readable(socket: &impl AsRawFd, timeout: Duration) -> bool {
    let mut poll_fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid `pollfd` for the duration of the call.
    unsafe { libc::poll(&mut poll_fd, 1, millis) > 0 }
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Reads one line (with its `\n`) into `line`, retrying read timeouts until the
/// stop flag is set. `Ok(false)` means the peer closed or the server stops.
fn read_line(
    reader: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    stop: &AtomicBool,
) -> io::Result<bool> {
    line.clear();
    while !stop.load(Ordering::Relaxed) {
        // On a timeout the bytes read so far stay in `line`.
        match reader.read_until(b'\n', line) {
            Ok(_) => return Ok(line.ends_with(b"\n")),
            Err(err) if is_timeout(&err) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(false)
}

fn name_connection(stream: TcpStream, name: &str, stop: &AtomicBool) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    writer.write_all(format!("{name}\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while read_line(&mut reader, &mut line, stop)? {
        let text = String::from_utf8_lossy(&line);
        writer.write_all(format!("{name} {}\n", text.trim_end()).as_bytes())?;
    }
    Ok(())
}

/// Reads the request head (up to the blank line), whatever the method or path,
/// then answers and closes.
fn http_connection(stream: TcpStream, name: &str, stop: &AtomicBool) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        if !read_line(&mut reader, &mut line, stop)? {
            return Ok(());
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    writer.write_all(http_response(name).as_bytes())
}

/// The whole HTTP response of a name server: `"{name}\n"`, then close.
pub fn http_response(name: &str) -> String {
    let body = format!("{name}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Connects to a name server and returns the name it greets with.
pub fn tcp_ask_name(addr: impl Into<SocketAddr>, timeout: Duration) -> Result<String> {
    Ok(LineClient::connect(addr, timeout)?.greeting)
}

/// Opens `count` TCP connections from `client` to `addr`, each asking the
/// name of the node that answers; returns how many each node answered. Every
/// connection must succeed: panics otherwise.
pub fn connect_many(
    client: &NetNs,
    addr: impl Into<SocketAddr>,
    count: usize,
    timeout: Duration,
) -> BTreeMap<String, usize> {
    let addr = addr.into();
    client
        .enter(move || {
            let mut tally = BTreeMap::new();
            for i in 0..count {
                let name = tcp_ask_name(addr, timeout)
                    .unwrap_or_else(|e| panic!("connection {i} to {addr} failed: {e:#}"));
                *tally.entry(name).or_insert(0) += 1;
            }
            tally
        })
        .expect("client namespace")
}

/// A long-lived name-protocol connection.
#[derive(Debug)]
pub struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    greeting: String,
}

impl LineClient {
    /// Connects and reads the greeting; `timeout` also bounds every answer.
    pub fn connect(addr: impl Into<SocketAddr>, timeout: Duration) -> Result<LineClient> {
        let addr = addr.into();
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        Self::greeted(stream, addr, timeout)
    }

    /// Like `connect`, from a chosen local port: the 5-tuple is then known in
    /// advance, so a test can ask `lb trace` about it first.
    pub fn connect_from(
        local_port: u16,
        addr: impl Into<SocketAddr>,
        timeout: Duration,
    ) -> Result<LineClient> {
        let addr = addr.into();
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket
            .bind(&SocketAddr::new(unspecified_like(addr), local_port).into())
            .with_context(|| format!("binding local port {local_port}"))?;
        socket
            .connect_timeout(&addr.into(), timeout)
            .with_context(|| format!("connecting to {addr} from port {local_port}"))?;
        Self::greeted(socket.into(), addr, timeout)
    }

    fn greeted(stream: TcpStream, addr: SocketAddr, timeout: Duration) -> Result<LineClient> {
        stream.set_read_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        let mut client = LineClient {
            reader: BufReader::new(stream),
            writer,
            greeting: String::new(),
        };
        client.greeting = client
            .read_line()
            .with_context(|| format!("greeting from {addr}"))?;
        Ok(client)
    }

    /// What the server said on connect: the name of the node that answered.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// The client's own port: which connection this is, for messages.
    pub fn local_port(&self) -> u16 {
        self.writer.local_addr().map_or(0, |addr| addr.port())
    }

    /// Sends `line` and returns the answer (`"{name} {line}"`).
    pub fn ask(&mut self, line: &str) -> Result<String> {
        ensure!(!line.contains('\n'), "one line at a time: {line:?}");
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .context("sending")?;
        self.read_line()
    }

    /// Shuts the connection down in both directions now, so the server sees the
    /// end of it at a point the test chooses; later asks fail.
    pub fn close(&mut self) {
        // Fails only if the connection is already gone, which is what we want.
        let _ = self.writer.shutdown(Shutdown::Both);
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line).context("receiving")?;
        if !line.ends_with('\n') {
            bail!("connection closed (got {line:?})");
        }
        Ok(line.trim_end().to_owned())
    }
}

/// The wildcard address of `addr`'s family, for binding a client socket.
fn unspecified_like(addr: SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// Sends one datagram and returns the answer.
pub fn udp_ask(addr: impl Into<SocketAddr>, payload: &[u8], timeout: Duration) -> Result<String> {
    let addr = addr.into();
    ask_over(udp_socket(addr)?, addr, payload, timeout)
}

/// As [`udp_ask`], with IPv4's Don't Fragment clear (`IP_PMTUDISC_DONT`), so
/// that a router on the way may fragment the datagram.
pub fn udp_ask_fragmentable(
    addr: SocketAddrV4,
    payload: &[u8],
    timeout: Duration,
) -> Result<String> {
    let socket = udp_socket(addr.into())?;
    let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: a socket this function owns, and an `int` option of its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw const dont).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "IP_MTU_DISCOVER: {}",
        std::io::Error::last_os_error()
    );
    ask_over(socket, addr.into(), payload, timeout)
}

fn udp_socket(addr: SocketAddr) -> Result<UdpSocket> {
    let socket = UdpSocket::bind((unspecified_like(addr), 0)).context("binding")?;
    socket.connect(addr)?;
    Ok(socket)
}

fn ask_over(
    socket: UdpSocket,
    addr: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<String> {
    socket.set_read_timeout(Some(timeout))?;
    socket.send(payload).context("sending")?;
    let mut buf = vec![0u8; 65536];
    let len = socket
        .recv(&mut buf)
        .with_context(|| format!("no answer from {addr} within {timeout:?}"))?;
    buf.truncate(len);
    String::from_utf8(buf).context("answer is not UTF-8")
}

/// `GET /` over HTTP/1.0; returns the body of a 200 answer.
pub fn http_get(addr: impl Into<SocketAddr>, timeout: Duration) -> Result<String> {
    let addr = addr.into();
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").context("sending")?;
    let mut response = String::new();
    stream.read_to_string(&mut response).context("receiving")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of headers in {response:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "HTTP status {status:?}"
    );
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// The servers are dual-stack: both loopback addresses reach them.
    const LOOPBACKS: [IpAddr; 2] = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];

    fn lo(port: u16) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)
    }

    #[test]
    fn servers_answer_with_their_name() -> Result<()> {
        let ns = NetNs::new("t-srv")?;
        let _tcp = tcp_name_server(&ns, 7000, "node-x")?;
        let _http = http_name_server(&ns, 8080, "node-x")?;
        let _udp = udp_echo_server(&ns, 7001, "node-x")?;
        ns.enter(|| -> Result<()> {
            for ip in LOOPBACKS {
                let at = |port| SocketAddr::new(ip, port);
                assert_eq!(tcp_ask_name(at(7000), TIMEOUT)?, "node-x");
                let mut client = LineClient::connect(at(7000), TIMEOUT)?;
                assert_eq!(client.greeting(), "node-x");
                assert_eq!(client.ask("hello")?, "node-x hello");
                assert_eq!(client.ask("again")?, "node-x again");
                client.close();
                assert!(client.ask("closed").is_err());
                assert_eq!(udp_ask(at(7001), b"ping", TIMEOUT)?, "node-x ping");
                assert_eq!(http_get(at(8080), TIMEOUT)?, "node-x\n");
            }
            Ok(())
        })??;
        // Outside the namespace nothing listens on these ports.
        assert!(tcp_ask_name(lo(7000), TIMEOUT).is_err());
        Ok(())
    }

    #[test]
    fn drop_stops_servers_with_open_connections() -> Result<()> {
        let ns = NetNs::new("t-srv-stop")?;
        let server = tcp_name_server(&ns, 7000, "node-y")?;
        // Made inside the namespace, used outside: the socket stays there.
        let mut client = ns.enter(|| LineClient::connect(lo(7000), TIMEOUT))??;
        assert_eq!(client.ask("still here")?, "node-y still here");
        let started = Instant::now();
        drop(server);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(client.ask("gone?").is_err());
        assert!(ns.enter(|| tcp_ask_name(lo(7000), TIMEOUT))?.is_err());
        // The port is free again right away.
        let _again = tcp_name_server(&ns, 7000, "node-z")?;
        assert_eq!(ns.enter(|| tcp_ask_name(lo(7000), TIMEOUT))??, "node-z");
        Ok(())
    }
}
