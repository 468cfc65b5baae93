//! HTTP load with wrk from the client namespace, and its report parsed.
//!
//! The node servers close every connection after one answer, so each wrk
//! request is a new TCP connection through the load balancer: requests per
//! second are new connections per second.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use lb_tests::netns::NetNs;

/// What one wrk run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Connect, read, write errors and timeouts, plus non-2xx answers.
    pub errors: u64,
}

/// Runs `wrk` in `ns` against `url` with `connections` over `threads` threads.
pub fn run(
    ns: &NetNs,
    url: &str,
    threads: usize,
    connections: usize,
    duration: Duration,
) -> Result<WrkResult> {
    let seconds = duration.as_secs().max(1).to_string();
    let (threads, connections) = (threads.to_string(), connections.to_string());
    let output = ns
        .run(&[
            "wrk",
            "--latency",
            "-t",
            &threads,
            "-c",
            &connections,
            "-d",
            &seconds,
            "--timeout",
            "2s",
            url,
        ])
        .with_context(|| format!("wrk {url}"))?;
    parse(&output).with_context(|| format!("parsing wrk's report:\n{output}"))
}

fn parse(output: &str) -> Result<WrkResult> {
    let mut result = WrkResult {
        requests: 0,
        per_second: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: 0,
    };
    for line in output.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["50%", value] => result.p50_ms = millis(value)?,
            ["99%", value] => result.p99_ms = millis(value)?,
            ["Requests/sec:", value] => result.per_second = value.parse()?,
            [count, "requests", "in", ..] => result.requests = count.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                for pair in rest.chunks(2) {
                    if let [_, n] = pair {
                        result.errors += n.trim_end_matches(',').parse::<u64>()?;
                    }
                }
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => result.errors += n.parse::<u64>()?,
            _ => {}
        }
    }
    ensure!(result.per_second.is_finite(), "no Requests/sec line");
    ensure!(
        result.p50_ms.is_finite() && result.p99_ms.is_finite(),
        "no latency distribution"
    );
    Ok(result)
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.00s`.
fn millis(value: &str) -> Result<f64> {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {value:?}"))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("number in {value:?}"))?;
    Ok(match unit {
        "us" => number / 1e3,
        "ms" => number,
        "s" => number * 1e3,
        "m" => number * 60e3,
        _ => bail!("unknown unit in {value:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 3s test @ http://198.51.100.10:80/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.10ms    1.20ms  20.00ms   80.00%
    Req/Sec     5.00k   300.00     6.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    3.00ms
     90%    4.00ms
     99%    1.50s
  30000 requests in 3.00s, 3.00MB read
  Socket errors: connect 2, read 3, write 0, timeout 1
Requests/sec:  10000.50
Transfer/sec:      1.00MB
";

    #[test]
    fn parses_a_report() {
        let result = parse(REPORT).unwrap();
        assert_eq!(result.requests, 30000);
        assert_eq!(result.per_second, 10000.5);
        assert!((result.p50_ms - 0.812).abs() < 1e-9);
        assert_eq!(result.p99_ms, 1500.0);
        assert_eq!(result.errors, 6);
    }
}
