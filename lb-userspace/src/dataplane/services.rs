//! Programming services: backend slots, and each service's Maglev ring
//! written into its idle half and swapped in with one map update.

use std::{collections::HashMap, net::IpAddr};

use lb_common::{BACKEND_ACTIVE, Backend, MAP_MAGLEV, ServiceInfo, ServiceKey};

use super::{Dataplane, DataplaneError, ProgrammedBackend, ProgrammedService, filter};
use crate::{
    maglev::{self, MaglevBackend},
    maps::{self, map_error},
    model::{BackendSpec, Frontend, Protocol, ServiceSpec},
};

impl Dataplane {
    /// Adds a service or updates its backends. Live flows keep their backend
    /// unless it was removed; the new Maglev table replaces the old one at once.
    pub fn set_service(&mut self, spec: &ServiceSpec) -> Result<(), DataplaneError> {
        if let Some(backend) = spec
            .backends
            .iter()
            .find(|backend| backend.ip.is_ipv4() != spec.frontend.vip.is_ipv4())
        {
            return Err(DataplaneError::MixedFamilies {
                frontend: spec.frontend.to_string(),
                backend: backend.ip,
            });
        }
        let (mut service, old_keys) = match self.services.remove(&spec.frontend) {
            Some(service) => {
                let keys = filter::keys_of(&service.spec);
                (service, Some(keys))
            }
            None => {
                let id = self
                    .free_service_ids
                    .pop()
                    .ok_or(DataplaneError::ServicesFull(self.config.max_services))?;
                self.reset_retired_traffic(id)?;
                let service = ProgrammedService {
                    spec: spec.clone(),
                    id,
                    slot: 1,
                    backends: Vec::new(),
                };
                (service, None)
            }
        };
        // Should an update fail, the new keys keep their bits: a bit too
        // many only costs a lookup, one too few would hide an entry.
        let added = self.key_filter.add(&filter::keys_of(spec));
        let result = added
            .map_err(DataplaneError::from)
            .and_then(|()| self.program_service(&mut service, spec));
        self.services.insert(spec.frontend, service);
        let Some(old_keys) = old_keys else {
            // A new service is served whole or not at all: a failed one is
            // removed again (its slots, id and key bits freed), so that no
            // one takes it for programmed and the next round tries anew.
            if let Err(error) = result {
                self.remove_service(&spec.frontend)?;
                return Err(error);
            }
            return self.write_neighbor_mask(spec.frontend.vip);
        };
        result?;
        self.key_filter.remove(&old_keys)?;
        self.write_neighbor_mask(spec.frontend.vip)
    }

    pub(super) fn program_service(
        &mut self,
        service: &mut ProgrammedService,
        spec: &ServiceSpec,
    ) -> Result<(), DataplaneError> {
        let mut old: HashMap<(IpAddr, u16), ProgrammedBackend> = service
            .backends
            .iter()
            .map(|b| ((b.spec.ip, b.spec.port), b.clone()))
            .collect();
        let mut backends = Vec::with_capacity(spec.backends.len());
        // The slots this call takes, freed again should the ring not be
        // swapped in.
        let mut taken = Vec::new();
        let swapped = self.swap_in_ring(service, spec, &mut old, &mut backends, &mut taken);
        if let Err(error) = swapped {
            self.retire_slots(taken, None)?;
            return Err(error);
        }
        // Only now retire removed backends, so their flows re-hash onto the new ring.
        self.retire_slots(
            old.into_values().map(|removed| removed.id),
            Some(service.id),
        )?;
        self.node_ports
            .release_unused(&spec.frontend, &spec.backends)?;
        service.slot = 1 - service.slot;
        service.spec = spec.clone();
        service.backends = backends;
        Ok(())
    }

    /// Takes a slot for each backend of `spec` not in `old` (removing those
    /// that stay from `old`), writes the ring into the service's idle half
    /// and swaps it in.
    fn swap_in_ring(
        &mut self,
        service: &ProgrammedService,
        spec: &ServiceSpec,
        old: &mut HashMap<(IpAddr, u16), ProgrammedBackend>,
        backends: &mut Vec<ProgrammedBackend>,
        taken: &mut Vec<u32>,
    ) -> Result<(), DataplaneError> {
        for backend in &spec.backends {
            let id = match old.remove(&(backend.ip, backend.port)) {
                Some(existing) => existing.id,
                None => {
                    let id = self.allocate_backend(backend)?;
                    taken.push(id);
                    id
                }
            };
            backends.push(ProgrammedBackend {
                spec: backend.clone(),
                id,
                ring_entries: 0,
            });
        }
        let slot = 1 - service.slot;
        let ring_base = (service.id * 2 + slot) * self.config.ring_size;
        let weighted: Vec<(String, u32)> = backends
            .iter()
            .map(|b| (b.spec.node.clone(), b.spec.weight))
            .collect();
        let live = weighted.iter().any(|(_, w)| *w > 0);
        if live {
            let table = maglev::build_table(
                &weighted
                    .iter()
                    .map(|(name, weight)| MaglevBackend {
                        name,
                        weight: *weight,
                    })
                    .collect::<Vec<_>>(),
                self.config.ring_size,
            )?;
            let ring: Vec<u32> = table
                .iter()
                .map(|&index| {
                    let backend = &mut backends[index as usize];
                    backend.ring_entries += 1;
                    backend.id
                })
                .collect();
            self.write_ring(ring_base, &ring)?;
        }
        let key = service_key(&spec.frontend);
        let info = ServiceInfo {
            id: service.id,
            ring_base,
            ring_size: self.config.ring_size,
            backend_count: if live { backends.len() as u32 } else { 0 },
        };
        self.node_ports.claim(&spec.frontend, &spec.backends)?;
        // The swap: from here on new flows use the new ring.
        Ok(self.maps.services.insert(key, info)?)
    }

    /// Writes `ring` into `MAGLEV` from `ring_base` on.
    fn write_ring(&mut self, ring_base: u32, ring: &[u32]) -> Result<(), DataplaneError> {
        match &mut self.maglev_memory {
            Some(memory) => memory.set_range(ring_base, ring),
            None => maps::set_range(&mut self.maps.maglev, ring_base, ring),
        }
        .map_err(|e| map_error(MAP_MAGLEV, e).into())
    }

    /// Stops serving a frontend; its flows are left to expire from the LRU.
    pub fn remove_service(&mut self, frontend: &Frontend) -> Result<(), DataplaneError> {
        let Some(service) = self.services.remove(frontend) else {
            return Ok(());
        };
        self.maps.services.remove(&service_key(frontend))?;
        self.retire_slots(service.backends.iter().map(|backend| backend.id), None)?;
        self.node_ports.release_unused(frontend, &[])?;
        self.key_filter.remove(&filter::keys_of(&service.spec))?;
        self.free_service_ids.push(service.id);
        if !self.services.keys().any(|f| f.vip == frontend.vip) {
            match self.maps.vips.remove(&lb_common::addr_of(frontend.vip)) {
                Ok(()) => {}
                Err(e) if maps::is_absent(&e) => {}
                Err(e) => return Err(map_error(lb_common::MAP_VIPS, e).into()),
            }
        }
        Ok(())
    }

    pub(super) fn allocate_backend(&mut self, spec: &BackendSpec) -> Result<u32, DataplaneError> {
        let id = self
            .free_backend_ids
            .pop()
            .ok_or(DataplaneError::BackendsFull)?;
        self.reset_backend_traffic(id)?;
        let generation = &mut self.backend_generations[id as usize];
        *generation = generation.wrapping_add(1);
        let backend = Backend {
            ip: lb_common::addr_of(spec.ip),
            port: spec.port.to_be(),
            flags: BACKEND_ACTIVE,
            generation: *generation,
        };
        self.maps
            .backends
            .set(id, backend, 0)
            .map_err(|e| map_error(lb_common::MAP_BACKENDS, e))?;
        Ok(id)
    }

    /// Frees backend slots: flows pinned to them re-hash, from their next
    /// packet on, on every CPU. What they counted stays `owner`'s, the
    /// service they leave (none when it goes too).
    pub(super) fn retire_slots(
        &mut self,
        ids: impl IntoIterator<Item = u32>,
        owner: Option<u32>,
    ) -> Result<(), DataplaneError> {
        let ids: Vec<u32> = ids.into_iter().collect();
        if ids.is_empty() {
            return Ok(());
        }
        for &id in &ids {
            self.retire_slot(id)?;
        }
        if let Some(service) = owner {
            self.keep_retired_traffic(service, &ids)?;
        }
        self.clock.mark_backends_changed(&mut self.ebpf)?;
        Ok(())
    }

    /// Frees a backend slot. The slot keeps its generation, which its next
    /// owner bumps. The caller marks backends changed (`Clock::mark_backends_changed`).
    pub(super) fn retire_slot(&mut self, id: u32) -> Result<(), DataplaneError> {
        let free = Backend {
            generation: self.backend_generations[id as usize],
            ..Backend::default()
        };
        self.maps
            .backends
            .set(id, free, 0)
            .map_err(|e| map_error(lb_common::MAP_BACKENDS, e))?;
        self.free_backend_ids.push(id);
        Ok(())
    }
}

/// The map key of a frontend: network byte order, as packets carry it.
pub fn service_key(frontend: &Frontend) -> ServiceKey {
    ServiceKey::new(
        lb_common::addr_of(frontend.vip),
        frontend.port.to_be(),
        frontend.protocol.number(),
    )
}

/// The key of a backend's NodePort in `KEY_FILTER`: where its replies come from.
pub(super) fn node_port_key(backend: &BackendSpec, protocol: Protocol) -> ServiceKey {
    service_key(&Frontend {
        vip: backend.ip,
        port: backend.port,
        protocol,
    })
}
