//! Summaries of repeated runs, and the machine's CPU time counters.

use std::{fmt, time::Duration};

use anyhow::{Context, Result};

/// One figure measured over several runs: the median is the figure, the range
/// shows how much the runs disagreed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figure {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Figure {
    /// Summarises the runs; `None` when there are none (nothing was measured).
    pub fn of(runs: &[f64]) -> Option<Figure> {
        let mut sorted: Vec<f64> = runs.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        Some(Figure {
            median: median_of_sorted(&sorted),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }

    /// `median (min–max)` with `decimals` digits, e.g. `83.1 (82.7–84.0)`.
    pub fn with_range(&self, decimals: usize) -> String {
        format!(
            "{:.decimals$} ({:.decimals$}–{:.decimals$})",
            self.median, self.min, self.max
        )
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", human(self.median))
    }
}

/// The median of an already sorted, non-empty slice.
fn median_of_sorted(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Online CPUs. Not `available_parallelism`, which shrinks to one once the
/// calling thread is pinned to a CPU.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).max(1)
}

/// CPU time the calling thread has used: unlike the wall clock, it does not
/// advance while other tasks run on the CPU.
pub fn thread_cpu_time() -> Duration {
    // SAFETY: all-zero is a valid timespec; clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The median of `values` (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        f64::NAN
    } else {
        median_of_sorted(&sorted)
    }
}

/// Large rates with a k/M suffix, small ones with enough digits to compare.
pub fn human(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if abs >= 1e4 {
        format!("{:.1}k", value / 1e3)
    } else if abs >= 100.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// `a / b` as `1.23x`, or `n/a` when either side is missing or zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => {
            format!("{:.2}x", a / b)
        }
        _ => "n/a".to_owned(),
    }
}

/// Busy CPU time of the whole machine from `/proc/stat`, in seconds.
///
/// Softirq time cannot be attributed to a network namespace (packets are
/// processed on whatever CPU raised the softirq, in whatever task happened to
/// run there), so every contestant is charged the same way: all busy time of
/// the machine during its run.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub user: f64,
    pub system: f64,
    pub softirq: f64,
    /// Hard irq time: small, but busy time all the same. (Steal time is not
    /// ours: the hypervisor ran something else.)
    pub other: f64,
}

impl CpuTimes {
    pub fn now() -> Result<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        parse_proc_stat(&stat)
    }

    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
            softirq: self.softirq - earlier.softirq,
            other: self.other - earlier.other,
        }
    }

    pub fn busy(&self) -> f64 {
        self.user + self.system + self.softirq + self.other
    }

    /// Kernel time only: what a packet forwarder costs (XDP, netfilter, the
    /// veths all run as system or softirq time), and what other users' work on
    /// a shared machine (compilers, mostly user time) adds least to.
    pub fn kernel(&self) -> f64 {
        self.system + self.softirq + self.other
    }
}

fn parse_proc_stat(stat: &str) -> Result<CpuTimes> {
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .context("no aggregate cpu line in /proc/stat")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {line:?}"))?;
    // user nice system idle iowait irq softirq steal ...
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok(CpuTimes {
        user: (field(0) + field(1)) / hz,
        system: field(2) / hz,
        softirq: field(6) / hz,
        other: field(5) / hz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_and_formats() {
        let figure = Figure::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(figure.median, 2.5);
        assert_eq!((figure.min, figure.max), (1.0, 10.0));
        assert_eq!(figure.with_range(1), "2.5 (1.0–10.0)");
        assert!(Figure::of(&[]).is_none());
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(human(45_678.0), "45.7k");
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50x");
        assert_eq!(ratio(Some(3.0), None), "n/a");
    }

    #[test]
    fn proc_stat_fields() {
        let times = parse_proc_stat("cpu  100 0 50 1000 0 10 20 5 0 0\ncpu0 1 2 3\n").unwrap();
        assert!(times.busy() > 0.0);
        assert!(times.softirq > 0.0 && times.system > times.softirq);
    }
}
