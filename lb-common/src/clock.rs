//! The data path's clock: jiffies, which the verifier turns into one load,
//! in the nanoseconds of `CLOCK_MONOTONIC` that flows record and userspace
//! compares with. `bpf_ktime_get_coarse_ns` tells the same time at the same
//! resolution (one tick) but is a helper call on every forwarded packet.

/// The global `CLOCK` (`MAP_CLOCK`): the data path's clock and the time of
/// the agent's latest change of a backend by it. Every forwarded packet
/// reads both, and together they are one cache line, not one cold line
/// each. Set by the agent at every load, before the program is attached;
/// not pinned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataPathClock {
    pub tick: TickClock,
    /// The data path's clock after the agent's latest change of a
    /// `BACKENDS` slot: a flow's cached copy dated later needs no look at
    /// its slot (`CachedFlow::checked_since`).
    pub backends_changed_ns: u64,
}

/// Jiffies to nanoseconds, `ns = jiffies * ns_per_tick + offset_ns`
/// (wrapping). Set by the agent from one sample of both clocks that
/// `lb_clock_sample` takes; while it is not set the data path reads
/// `bpf_ktime_get_coarse_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickClock {
    /// The length of a jiffy (the kernel's `TICK_NSEC`, which
    /// `clock_getres(CLOCK_MONOTONIC_COARSE)` reports); 0 until set.
    pub ns_per_tick: u64,
    /// `CLOCK_MONOTONIC` at jiffy 0, wrapping.
    pub offset_ns: u64,
    /// The last sample of `lb_clock_sample`: jiffies and
    /// `bpf_ktime_get_coarse_ns`, read together.
    pub sample_jiffies: u64,
    pub sample_ns: u64,
}

impl TickClock {
    /// The clock of a kernel whose jiffy lasts `ns_per_tick`, from a
    /// `sample` of (jiffies, coarse nanoseconds) read together.
    pub fn from_sample(ns_per_tick: u64, (jiffies, ns): (u64, u64)) -> Self {
        Self {
            ns_per_tick,
            offset_ns: ns.wrapping_sub(jiffies.wrapping_mul(ns_per_tick)),
            sample_jiffies: jiffies,
            sample_ns: ns,
        }
    }

    /// Whether the agent set this clock. A half-written one (the map's value
    /// is copied in, not swapped) has one of the two still zero.
    #[inline(always)]
    pub fn is_set(&self) -> bool {
        self.ns_per_tick != 0 && self.offset_ns != 0
    }

    /// `CLOCK_MONOTONIC` in nanoseconds at `jiffies`, to a tick.
    #[inline(always)]
    pub fn ns(&self, jiffies: u64) -> u64 {
        jiffies
            .wrapping_mul(self.ns_per_tick)
            .wrapping_add(self.offset_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_from_a_sample_tells_its_time_and_counts_ticks_on() {
        // HZ = 250 and jiffies' start value, 300 s before wrapping 32 bits.
        let start = u64::from(u32::MAX) + 1 - 300 * 250;
        let clock = TickClock::from_sample(4_000_000, (start + 1_000, 42_000_000_000));
        assert!(clock.is_set());
        assert_eq!(clock.ns(start + 1_000), 42_000_000_000);
        assert_eq!(clock.ns(start + 1_250), 43_000_000_000);
        assert!(!TickClock::default().is_set());
    }
}
