//! Services' traffic: the data path counts each forwarded packet once, for
//! its backend (`BACKEND_STATS`, per CPU), and a service's traffic is what
//! its backends count plus what the backends it no longer has counted,
//! which the agent keeps when it retires them (`RETIRED_TRAFFIC`).
//!
//! A packet that a CPU counts for a backend in the instant after the agent
//! took its count (it looked the slot up before the retirement) is lost
//! when the slot is reused. A reader between a slot's retirement and the
//! keeping of its count sees the service short of it for that instant.

use aya::maps::PerCpuValues;
use lb_common::{MAP_BACKEND_STATS, Traffic};

use super::{Dataplane, DataplaneError};
use crate::{
    maps::{MapsError, SERVICE_STATS, former_service_stats, map_error, sum_traffic},
    model::Frontend,
};

impl Dataplane {
    /// The traffic of the service at `frontend`, if it is programmed.
    pub fn service_traffic(&self, frontend: &Frontend) -> Result<Option<Traffic>, MapsError> {
        let Some(service) = self.services.get(frontend) else {
            return Ok(None);
        };
        let backends = service.backends.iter().map(|backend| backend.id);
        self.maps.service_traffic(service.id, backends).map(Some)
    }

    /// Zeroes the counters of a backend slot being handed out, unless they
    /// are known to be zero: its new owner starts from zero.
    pub(super) fn reset_backend_traffic(&mut self, id: u32) -> Result<(), DataplaneError> {
        if !self.counted_backends.hand_out(id) {
            return Ok(());
        }
        let zeros = PerCpuValues::try_from(vec![Traffic::default(); self.nr_cpus])
            .map_err(DataplaneError::Cpus)?;
        self.maps
            .backend_stats
            .set(id, zeros, 0)
            .map_err(|e| map_error(MAP_BACKEND_STATS, e))?;
        Ok(())
    }

    /// Zeroes what the retired backends of a service id being handed out
    /// counted, unless that is known to be zero.
    pub(super) fn reset_retired_traffic(&mut self, service: u32) -> Result<(), DataplaneError> {
        if !self.counted_services.hand_out(service) {
            return Ok(());
        }
        Ok(self.maps.set_retired_traffic(service, Traffic::default())?)
    }

    /// Adds what the retired slots `backends` counted to `service`'s.
    pub(super) fn keep_retired_traffic(
        &mut self,
        service: u32,
        backends: &[u32],
    ) -> Result<(), DataplaneError> {
        // The service's retired traffic with the slots as its backends.
        let total = self
            .maps
            .service_traffic(service, backends.iter().copied())?;
        Ok(self.maps.set_retired_traffic(service, total)?)
    }

    /// Derives `RETIRED_TRAFFIC` from an earlier agent's `SERVICE_STATS`,
    /// which counted each service whole, then unpins that: a service's
    /// retired traffic is its whole less what its recovered backends count.
    /// An agent that stops half way derives it again at its next load.
    pub(super) fn retired_from_service_stats(&mut self) -> Result<(), DataplaneError> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        let Some(former) = former_service_stats(pins)? else {
            return Ok(());
        };
        for service in self.services.values() {
            let whole = sum_traffic(&former, service.id, SERVICE_STATS)?;
            let counted = self
                .maps
                .backends_traffic(service.backends.iter().map(|backend| backend.id))?;
            self.maps.set_retired_traffic(
                service.id,
                Traffic {
                    packets: whole.packets.saturating_sub(counted.packets),
                    bytes: whole.bytes.saturating_sub(counted.bytes),
                },
            )?;
        }
        pins.remove_maps(&[SERVICE_STATS])?;
        Ok(())
    }
}

/// Which ids of a counter map may hold counts: all of them in state an
/// earlier agent left; else those handed out since this load created the
/// map, whose slots start at zero. Zeroing each id at its first use cost
/// a start that programs 10,000 services 40,000 system calls for nothing.
pub(super) struct MaybeCounted(Vec<bool>);

impl MaybeCounted {
    pub(super) fn new(ids: usize, inherited: bool) -> Self {
        Self(vec![inherited; ids])
    }

    /// Whether `id` may hold counts (an id out of range may); from now on
    /// it may.
    fn hand_out(&mut self, id: u32) -> bool {
        self.0
            .get_mut(id as usize)
            .is_none_or(|counted| std::mem::replace(counted, true))
    }
}
