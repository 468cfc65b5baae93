//! Taking over the pinned state an earlier agent left: what is programmed,
//! rebuilt from the maps.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{BACKEND_ACTIVE, Backend, MAX_BACKENDS};

use super::{Dataplane, DataplaneError, ProgrammedBackend, ProgrammedService, filter};
use crate::{
    catalog::Catalog,
    model::{BackendSpec, Frontend, Protocol, ServiceSpec},
};

impl Dataplane {
    /// Rebuilds what is programmed from the maps (empty unless pinned state was
    /// reused). Names and weights are not in the maps: the first reconcile
    /// rewrites every service, keeping each backend's id, so flows stay put.
    /// A backend a service drained (no ring points at it) is its own by the
    /// earlier agent's catalog, and kept as draining.
    pub(super) fn recover(&mut self) -> Result<(), DataplaneError> {
        let entries = self.maps.services.entries()?;
        // One read of all 65,536 slots: one call per slot took a tenth of a
        // second of every start.
        let slots = self.maps.backend_slots()?;
        let catalog = self
            .config
            .pin_dir
            .as_deref()
            .map(Catalog::read)
            .unwrap_or_default();
        let ring_size = self.config.ring_size;
        let mut used_backends = BTreeSet::new();
        for (key, info) in entries {
            let Some(protocol) = Protocol::from_number(key.proto) else {
                continue;
            };
            let frontend = Frontend {
                vip: lb_common::ip_of(key.vip),
                port: u16::from_be(key.port),
                protocol,
            };
            // A ring of another size cannot be walked with this map's layout.
            let entries = if info.ring_size == ring_size {
                self.maps.ring_entries(&info)?
            } else {
                BTreeMap::new()
            };
            let mut backends = Vec::new();
            for (id, ring_entries) in entries {
                let Some(backend) = slots.get(id as usize) else {
                    continue;
                };
                self.backend_generations[id as usize] = backend.generation;
                if backend.flags & BACKEND_ACTIVE == 0 {
                    continue;
                }
                used_backends.insert(id);
                backends.push(programmed(id, backend, ring_entries));
            }
            self.services.insert(
                frontend,
                ProgrammedService {
                    spec: ServiceSpec {
                        name: String::new(),
                        frontend,
                        backends: Vec::new(),
                    },
                    id: info.id,
                    slot: (info.ring_base / ring_size.max(1)) % 2,
                    backends,
                },
            );
        }
        // Then the slots the catalog gives each service besides (a stale
        // catalog, of an agent killed mid-sync, may name one a ring now
        // points at, or one another backend took): only an active one no
        // ring has, holding a backend the catalog lists for the service.
        for (frontend, service) in &mut self.services {
            let listed = catalog.service(frontend);
            for &id in catalog.slots(frontend).unwrap_or_default() {
                let Some(backend) = slots.get(id as usize) else {
                    continue;
                };
                let (ip, port) = (lb_common::ip_of(backend.ip), u16::from_be(backend.port));
                if backend.flags & BACKEND_ACTIVE == 0
                    || listed.and_then(|spec| spec.backend(ip, port)).is_none()
                    || !used_backends.insert(id)
                {
                    continue;
                }
                self.backend_generations[id as usize] = backend.generation;
                service.backends.push(programmed(id, backend, 0));
            }
            service.spec.backends = service.backends.iter().map(|b| b.spec.clone()).collect();
        }
        let used_services: BTreeSet<u32> = self.services.values().map(|s| s.id).collect();
        self.free_service_ids = (0..self.config.max_services)
            .rev()
            .filter(|id| !used_services.contains(id))
            .collect();
        self.free_backend_ids = Vec::new();
        let mut retired = false;
        for (id, backend) in (0..MAX_BACKENDS).zip(&slots).rev() {
            if used_backends.contains(&id) {
                continue;
            }
            // An active slot neither a ring nor the catalog gives a service
            // (a draining backend of an agent that wrote no catalog) cannot
            // be attributed: retire it, its flows re-hash.
            self.backend_generations[id as usize] = backend.generation;
            if backend.flags & BACKEND_ACTIVE != 0 {
                self.retire_slot(id)?;
                retired = true;
            } else {
                self.free_backend_ids.push(id);
            }
        }
        if retired {
            self.clock.mark_backends_changed(&mut self.ebpf)?;
        }
        for service in self.services.values() {
            self.node_ports
                .claim(&service.spec.frontend, &service.spec.backends)?;
        }
        let keys: Vec<_> = self
            .services
            .values()
            .flat_map(|service| filter::keys_of(&service.spec))
            .collect();
        Ok(self.key_filter.add(&keys)?)
    }
}

/// A recovered backend: its address from its slot; the rest the first sync
/// writes.
fn programmed(id: u32, backend: &Backend, ring_entries: u32) -> ProgrammedBackend {
    ProgrammedBackend {
        spec: BackendSpec {
            node: String::new(),
            ip: lb_common::ip_of(backend.ip),
            port: u16::from_be(backend.port),
            weight: 0,
        },
        id,
        ring_entries,
    }
}
