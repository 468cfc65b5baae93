//! A pair of maps split by address family (`lb_common::family`), read and
//! written through the family-neutral key as if it were one map.

use aya::{
    Pod,
    maps::{HashMap, Map, MapData, MapError},
};
use lb_common::ByFamily;

use super::{MapsError, batch, map_error, typed};

/// `SERVICES` or `FLOWS`: the IPv4 map with compact keys and
/// the IPv6 map with neutral ones.
pub struct FamilyMaps<K: ByFamily, V: ByFamily> {
    v4: HashMap<MapData, K::V4, V::V4>,
    v6: HashMap<MapData, K, V>,
    names: [&'static str; 2],
}

impl<K, V> FamilyMaps<K, V>
where
    K: ByFamily + Pod,
    K::V4: Pod,
    V: ByFamily + Pod,
    V::V4: Pod,
{
    /// The pair from its maps, named `names` (IPv4 first).
    pub(super) fn new(names: [&'static str; 2], [v4, v6]: [Map; 2]) -> Result<Self, MapsError> {
        Ok(Self {
            v4: typed(names[0], v4)?,
            v6: typed(names[1], v6)?,
            names,
        })
    }

    pub fn get(&self, key: &K) -> Result<Option<V>, MapsError> {
        let found = match key.to_v4() {
            Some(key4) => self.v4.get(&key4, 0).map(|value| V::from_v4(&value)),
            None => self.v6.get(key, 0),
        };
        match found {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error(self.name_of(key), source)),
        }
    }

    /// Adds or replaces the entry of `key`. A value of the other family (an
    /// IPv4 node's NodePort serving an IPv6 VIP) fits neither map.
    pub fn insert(&mut self, key: K, value: V) -> Result<(), MapsError> {
        let name = self.name_of(&key);
        let written = match key.to_v4() {
            Some(key4) => {
                let value4 = value.to_v4().ok_or(MapsError::MixedFamilies { name })?;
                self.v4.insert(key4, value4, 0)
            }
            None => self.v6.insert(key, value, 0),
        };
        written.map_err(|source| map_error(name, source))
    }

    /// Removes the entry of `key`; an absent one is no error.
    pub fn remove(&mut self, key: &K) -> Result<(), MapsError> {
        let removed = match key.to_v4() {
            Some(key4) => self.v4.remove(&key4),
            None => self.v6.remove(key),
        };
        match removed {
            Ok(()) => Ok(()),
            Err(error) if super::is_absent(&error) => Ok(()),
            Err(source) => Err(map_error(self.name_of(key), source)),
        }
    }

    /// Every entry of both maps, IPv4 first, keys in their neutral form,
    /// read in batches (see `batch::get_all_entries`).
    pub fn entries(&self) -> Result<Vec<(K, V)>, MapsError> {
        let v4 = batch::get_all_entries(&self.v4).map_err(|e| map_error(self.names[0], e))?;
        let mut entries: Vec<(K, V)> = v4
            .iter()
            .map(|(key, value)| (K::from_v4(key), V::from_v4(value)))
            .collect();
        entries.extend(batch::get_all_entries(&self.v6).map_err(|e| map_error(self.names[1], e))?);
        Ok(entries)
    }

    /// How many keys both maps hold, counted by walking them (a key that
    /// goes while they are walked is not counted).
    pub fn count(&self) -> usize {
        let v4 = self.v4.keys().filter(Result::is_ok).count();
        v4 + self.v6.keys().filter(Result::is_ok).count()
    }

    fn name_of(&self, key: &K) -> &'static str {
        self.names[usize::from(key.to_v4().is_none())]
    }
}
