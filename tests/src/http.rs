//! A plain HTTP/1.1 GET from inside a namespace, for the agent's metrics and
//! health endpoints.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::netns::NetNs;

const TIMEOUT: Duration = Duration::from_secs(3);

/// `GET path` from `address` inside `ns`: the status and the body.
pub fn get(ns: &NetNs, address: SocketAddr, path: &str) -> Result<(u16, String)> {
    get_within(ns, address, path, TIMEOUT)
}

/// [`get`], waiting up to `timeout` for the answer to begin and for each
/// read after.
pub fn get_within(
    ns: &NetNs,
    address: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n");
    let response = ns.enter(move || -> Result<String> {
        let mut stream = TcpStream::connect_timeout(&address, TIMEOUT)
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })??;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
