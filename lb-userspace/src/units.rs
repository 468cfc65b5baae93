//! Quantities as people write them on the command line.

use std::time::Duration;

/// Parses a flag's duration: as Go writes one (`500ms`, `2s`, `1m30s`:
/// Kubernetes objects, and so MetalLB's, carry them so) or a bare number of
/// seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    match text.parse::<f64>() {
        Ok(seconds) if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
            Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
        }
        _ => parse_go_duration(text),
    }
}

/// [`parse_duration`], more than zero: for a time something may take.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("{:?} must be more than 0", text.trim())),
        duration => Ok(duration),
    }
}

/// [`parse_duration`], from 0.1 s to an hour: the time between two samples
/// of the counters (shorter, and the rates are noise).
pub fn parse_sample_interval(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&duration) {
        return Err(format!("{:?} is not between 0.1s and 1h", text.trim()));
    }
    Ok(duration)
}

/// [`parse_duration`] in whole seconds from 2 s to a day: a Lease's duration
/// (`spec.leaseDurationSeconds` holds seconds; its holder renews it every
/// sixth of it).
pub fn parse_lease_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.subsec_nanos() != 0 || !(2..=86_400).contains(&duration.as_secs()) {
        return Err(format!(
            "{:?} is not a whole number of seconds from 2s to 24h",
            text.trim()
        ));
    }
    Ok(duration)
}

/// Parses a duration as Go writes it, which Kubernetes objects carry:
/// `90s`, `1m30s`, `1.5h`, `300ms`, or `0`.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 90s, 1m30s or 500ms");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut seconds = 0.0;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let split = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(split);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        seconds += number * scale;
        rest = tail;
    }
    if text.is_empty() {
        return Err(bad());
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "2d", "-1s", "1e3", "inf", "NaN"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bounded_durations() {
        assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
        assert!(parse_positive_duration("0").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_sample_interval("0.1"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_sample_interval("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["0.05", "0", "61m", "NaN", "-1"] {
            assert!(parse_sample_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "90", "s", "-1s", "1d", "1m 30s", "ten s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }
}
