//! `KEY_FILTER`: the bits that let the data path skip the `SERVICES`
//! lookup, and the reply path, for packets that are not ours. Derived from what is
//! programmed, so not pinned: every load starts it empty and `recover`
//! fills it before the program is attached. The program's global data, so
//! one map value: a change writes the whole filter (32 KiB), copied in while
//! packets read it. That is safe however the copy goes: an unchanged word
//! gets the bytes it holds, and a changing one changes only bits whose
//! entries are not written yet (added) or gone already (removed).

use aya::Ebpf;
use lb_common::{KEY_FILTER_WORDS, KeyFilter, KeyFilterWords, MAP_KEY_FILTER, ServiceKey};

use super::{global_data::GlobalData, service_key, services::node_port_key};
use crate::{maps::MapsError, model::ServiceSpec};

/// The filter and, per bit, how many programmed keys need it: keys may share
/// a bit, and a bit is cleared only when none does.
pub(super) struct KeyFilterBits {
    words: GlobalData<KeyFilterWords>,
    users: Vec<u32>,
}

impl KeyFilterBits {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Ok(Self {
            words: GlobalData::take(ebpf, MAP_KEY_FILTER, [0; KEY_FILTER_WORDS as usize])?,
            users: vec![0; KEY_FILTER_WORDS as usize * 64],
        })
    }

    /// Sets the bits of `keys`; before their entries are written, so that no
    /// packet finds an entry's bit clear.
    pub fn add(&mut self, keys: &[(KeyFilter, ServiceKey)]) -> Result<(), MapsError> {
        self.change(keys, true)
    }

    /// Releases the bits of `keys`, once their entries are gone.
    pub fn remove(&mut self, keys: &[(KeyFilter, ServiceKey)]) -> Result<(), MapsError> {
        self.change(keys, false)
    }

    fn change(&mut self, keys: &[(KeyFilter, ServiceKey)], add: bool) -> Result<(), MapsError> {
        let words = self.words.value_mut();
        let mut changed = false;
        for (map, key) in keys {
            let (word, bit) = map.position(key);
            let user = &mut self.users[(word * 64 + bit.trailing_zeros()) as usize];
            let old = words[word as usize];
            let new = if add {
                *user += 1;
                old | bit
            } else {
                *user = user.saturating_sub(1);
                if *user == 0 { old & !bit } else { old }
            };
            changed |= new != old;
            words[word as usize] = new;
        }
        if changed {
            self.words.write()?;
        }
        Ok(())
    }
}

/// The keys a service is programmed under: its frontend in `SERVICES`, and
/// each backend's (node IP, NodePort), where its replies come from; and
/// their addresses alone.
pub(super) fn keys_of(spec: &ServiceSpec) -> Vec<(KeyFilter, ServiceKey)> {
    let frontend = service_key(&spec.frontend);
    let mut keys = vec![
        (KeyFilter::Services, frontend),
        (KeyFilter::Vips, address_key(&frontend)),
    ];
    for backend in &spec.backends {
        let node_port = node_port_key(backend, spec.frontend.protocol);
        keys.push((KeyFilter::NodePorts, node_port));
        keys.push((KeyFilter::Nodes, address_key(&node_port)));
    }
    keys
}

/// The key of `key`'s address alone, as the data path checks it.
fn address_key(key: &ServiceKey) -> ServiceKey {
    ServiceKey::new(key.vip, 0, 0)
}
