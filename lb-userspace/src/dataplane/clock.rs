//! `CLOCK`: how the data path turns jiffies into `CLOCK_MONOTONIC`
//! nanoseconds (see `lb_common::clock`), and the time by it of the latest
//! change of a `BACKENDS` slot. Set at every load, before the program is
//! attached, from a sample `lb_clock_sample` takes of both clocks (run on a
//! dummy frame, never attached; it shares the global with `lb_xdp`). Not
//! pinned: every load sets it again.
//!
//! The change's time lets a flow's cached copy dated later skip the look at
//! its slot (`lb_common::CachedFlow::checked_since`). It is written after
//! each change that can end a flow's backend (a slot retired, and so also
//! before its reuse), once per service programmed; at every load, so that
//! no copy an earlier program dated is trusted; and after every attach,
//! since the program replaced kept dating copies by its own rules until
//! then.

use aya::{Ebpf, TestRun as _, programs::TestRunOptions};
use lb_common::{CLOCK_SAMPLE_PROGRAM, DataPathClock, MAP_CLOCK, TickClock};

use super::{DataplaneError, global_data::GlobalData, programs};

pub(super) struct Clock {
    global: GlobalData<DataPathClock>,
}

impl Clock {
    /// Samples both clocks, sets the data path's clock from them, and
    /// records that backends changed now.
    pub fn set(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let ns_per_tick = tick_length().map_err(DataplaneError::ClockResolution)?;
        programs::xdp(ebpf, CLOCK_SAMPLE_PROGRAM)?
            .load()
            .map_err(DataplaneError::Program)?;
        let mut clock = Self {
            global: GlobalData::take(ebpf, MAP_CLOCK, DataPathClock::default())?,
        };
        let sample = clock.sample(ebpf)?;
        let tick = TickClock::from_sample(ns_per_tick, sample);
        *clock.global.value_mut() = DataPathClock {
            tick,
            backends_changed_ns: tick.ns(sample.0),
        };
        clock.global.write()?;
        Ok(clock)
    }

    /// Records that slots changed: every copy dated before now (or in this
    /// tick) is checked against its slot again.
    pub fn mark_backends_changed(&mut self, ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
        let (jiffies, _) = self.sample(ebpf)?;
        let clock = self.global.value_mut();
        clock.backends_changed_ns = clock.tick.ns(jiffies);
        Ok(self.global.write()?)
    }

    /// The global as the map holds it.
    pub fn read(&self) -> Result<DataPathClock, DataplaneError> {
        Ok(self.global.read()?)
    }

    /// One sample of (jiffies, coarse nanoseconds), read together by the
    /// loaded `lb_clock_sample`.
    fn sample(&self, ebpf: &mut Ebpf) -> Result<(u64, u64), DataplaneError> {
        // An XDP run needs at least an Ethernet header's worth of packet.
        programs::xdp(ebpf, CLOCK_SAMPLE_PROGRAM)?
            .test_run(TestRunOptions {
                data_in: Some(&[0; 64]),
                ..Default::default()
            })
            .map_err(DataplaneError::Program)?;
        let sampled = self.read()?.tick;
        Ok((sampled.sample_jiffies, sampled.sample_ns))
    }
}

/// The kernel's jiffy in nanoseconds: the resolution of the coarse clocks,
/// which advance once a tick.
fn tick_length() -> std::io::Result<u64> {
    let ns = crate::clock::nanoseconds(libc::clock_getres, libc::CLOCK_MONOTONIC_COARSE)?;
    if ns == 0 {
        return Err(std::io::Error::other(
            "CLOCK_MONOTONIC_COARSE reports no resolution",
        ));
    }
    Ok(ns)
}
