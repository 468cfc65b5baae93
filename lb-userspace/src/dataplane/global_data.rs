//! The program's global data as userspace keeps it: each global is a
//! one-entry array map named after its section, written whole, and kept
//! here too, so that a change is made to this copy and then written.

use aya::{
    Ebpf, Pod,
    maps::{Array, MapData},
};

use crate::maps::{MapsError, map_error, take_typed};

pub(super) struct GlobalData<V: Pod> {
    name: &'static str,
    map: Array<MapData, V>,
    /// What the map holds, unless its last write failed (or the program
    /// wrote the global since: see [`Self::read`]).
    value: Box<V>,
}

impl<V: Pod> GlobalData<V> {
    /// Takes the global `name` out of a loaded program, which starts it as
    /// `initial` (zeros: the globals are `.bss`).
    pub fn take(ebpf: &mut Ebpf, name: &'static str, initial: V) -> Result<Self, MapsError> {
        Ok(Self {
            name,
            map: take_typed(ebpf, name)?,
            value: Box::new(initial),
        })
    }

    /// The copy, to change before [`Self::write`].
    pub fn value_mut(&mut self) -> &mut V {
        &mut self.value
    }

    /// What the map holds now, which differs from the copy where the
    /// program writes its global too.
    pub fn read(&self) -> Result<V, MapsError> {
        self.map.get(&0, 0).map_err(|e| map_error(self.name, e))
    }

    /// Writes the copy into the map, whole.
    pub fn write(&mut self) -> Result<(), MapsError> {
        self.map
            .set(0, self.value.as_ref(), 0)
            .map_err(|e| map_error(self.name, e))
    }
}
