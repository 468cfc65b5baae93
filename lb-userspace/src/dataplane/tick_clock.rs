//! `TICK_CLOCK`: how the data path turns jiffies into `CLOCK_MONOTONIC`
//! nanoseconds (see `lb_common::clock`). Set at every load, before the
//! program is attached, from a sample `lb_clock_sample` takes of both
//! clocks (run on a dummy frame, never attached; it shares the map with
//! `lb_xdp`). Not pinned: every load sets it again.

use aya::{
    Ebpf, TestRun as _,
    maps::Array,
    programs::{TestRunOptions, Xdp},
};
use lb_common::{CLOCK_SAMPLE_PROGRAM, MAP_TICK_CLOCK, TickClock};

use super::DataplaneError;
use crate::maps::{MapsError, map_error};

/// Samples both clocks and sets the data path's clock from them; returns
/// the clock set.
pub(super) fn set(ebpf: &mut Ebpf) -> Result<TickClock, DataplaneError> {
    let ns_per_tick = tick_length().map_err(DataplaneError::ClockResolution)?;
    sample_program(ebpf)?
        .load()
        .map_err(DataplaneError::Program)?;
    let clock = TickClock::from_sample(ns_per_tick, sample(ebpf)?);
    tick_clock_map(ebpf)?
        .set(0, clock, 0)
        .map_err(|e| map_error(MAP_TICK_CLOCK, e))?;
    Ok(clock)
}

/// The data path's clock now, as [`set`]'s `clock` tells it.
pub(super) fn now(ebpf: &mut Ebpf, clock: &TickClock) -> Result<u64, DataplaneError> {
    let (jiffies, _) = sample(ebpf)?;
    Ok(clock.ns(jiffies))
}

/// One sample of (jiffies, coarse nanoseconds), read together by the
/// loaded `lb_clock_sample`.
fn sample(ebpf: &mut Ebpf) -> Result<(u64, u64), DataplaneError> {
    // An XDP run needs at least an Ethernet header's worth of packet.
    sample_program(ebpf)?
        .test_run(TestRunOptions {
            data_in: Some(&[0; 64]),
            ..Default::default()
        })
        .map_err(DataplaneError::Program)?;
    let sampled = tick_clock_map(ebpf)?
        .get(&0, 0)
        .map_err(|e| map_error(MAP_TICK_CLOCK, e))?;
    Ok((sampled.sample_jiffies, sampled.sample_ns))
}

fn sample_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    ebpf.program_mut(CLOCK_SAMPLE_PROGRAM)
        .ok_or(MapsError::Missing(CLOCK_SAMPLE_PROGRAM))?
        .try_into()
        .map_err(DataplaneError::Program)
}

fn tick_clock_map(
    ebpf: &mut Ebpf,
) -> Result<Array<&mut aya::maps::MapData, TickClock>, DataplaneError> {
    let map = ebpf
        .map_mut(MAP_TICK_CLOCK)
        .ok_or(MapsError::Missing(MAP_TICK_CLOCK))?;
    Ok(Array::try_from(map).map_err(|e| map_error(MAP_TICK_CLOCK, e))?)
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
