//! `TICK_CLOCK`: how the data path turns jiffies into `CLOCK_MONOTONIC`
//! nanoseconds (see `lb_common::clock`). Set at every load, before the
//! program is attached, from a sample `lb_clock_sample` takes of both
//! clocks (run once on a dummy frame, never attached; it shares the map
//! with `lb_xdp`). Not pinned: every load sets it again.

use aya::{
    Ebpf, TestRun as _,
    maps::Array,
    programs::{TestRunOptions, Xdp},
};
use lb_common::{CLOCK_SAMPLE_PROGRAM, MAP_TICK_CLOCK, TickClock};

use super::DataplaneError;
use crate::maps::{MapsError, map_error};

/// Samples both clocks and sets the data path's clock from them.
pub(super) fn set(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let ns_per_tick = tick_length().map_err(DataplaneError::ClockResolution)?;
    let program: &mut Xdp = ebpf
        .program_mut(CLOCK_SAMPLE_PROGRAM)
        .ok_or(MapsError::Missing(CLOCK_SAMPLE_PROGRAM))?
        .try_into()
        .map_err(DataplaneError::Program)?;
    program.load().map_err(DataplaneError::Program)?;
    // An XDP run needs at least an Ethernet header's worth of packet.
    program
        .test_run(TestRunOptions {
            data_in: Some(&[0; 64]),
            ..Default::default()
        })
        .map_err(DataplaneError::Program)?;
    let map = ebpf
        .map_mut(MAP_TICK_CLOCK)
        .ok_or(MapsError::Missing(MAP_TICK_CLOCK))?;
    let mut map: Array<_, TickClock> =
        Array::try_from(map).map_err(|e| map_error(MAP_TICK_CLOCK, e))?;
    let sampled = map.get(&0, 0).map_err(|e| map_error(MAP_TICK_CLOCK, e))?;
    let clock = TickClock::from_sample(ns_per_tick, (sampled.sample_jiffies, sampled.sample_ns));
    map.set(0, clock, 0)
        .map_err(|e| map_error(MAP_TICK_CLOCK, e))?;
    Ok(())
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
