//! Upgrading pinned state of layout v3, in which `SERVICES`, `NODE_PORTS` and
//! `FLOWS` were one map each keyed by the family-neutral key, to this
//! layout's per-family pairs, keeping flows, rings and counters.
//!
//! Before the new program is loaded, every other pin (the maps whose layout
//! did not change, and the XDP links) moves to the new directory: bpffs
//! renames it, and the loader then reuses it as if an agent of this layout
//! had left it. Once the new maps exist, the entries of the old `SERVICES`
//! and `FLOWS` are copied into them and the old directory goes (`NODE_PORTS`
//! is not copied: its entries are now derived from the services at every
//! load). The old program keeps
//! serving from the old maps (it holds them, not their pins) until `attach`
//! swaps the program on each link; a flow it records in that window is not
//! copied, and its next packet gets the same Maglev choice from the new one.
//! An agent that stops half way finds the rest to do when it starts again.

use std::{fs, path::Path};

use aya::{
    Pod,
    maps::{HashMap, Map, MapData, MapError},
};
use lb_common::{ByFamily, Flow, FlowKey, MAP_MAGLEV, ServiceInfo, ServiceKey};

use super::{DataplaneConfig, DataplaneError};
use crate::{
    maps::{FamilyMaps, Maps, MapsError, map_error},
    pins::{PinDir, PinsError},
};

/// The v3 names of the maps this layout splits by family.
const SERVICES: &str = "SERVICES";
const NODE_PORTS: &str = "NODE_PORTS";
const FLOWS: &str = "FLOWS";

/// Moves the pins of v3 state that this layout keeps as they are into its
/// own directory. Returns whether there is v3 state to finish with
/// [`copy_split_maps`] after the load. Nothing moves unless the state's
/// Maglev map has the size this agent's settings need: an agent started
/// with other settings leaves the old state as it was.
pub(super) fn move_kept_pins(
    pins: &PinDir,
    config: &DataplaneConfig,
) -> Result<bool, DataplaneError> {
    let old = pins.upgradable_state();
    if !old.is_dir() {
        return Ok(false);
    }
    config.check_pinned_ring(&old.join(MAP_MAGLEV))?;
    let new = pins.state();
    fs::create_dir_all(&new).map_err(|source| io_error(&new, source))?;
    let entries = fs::read_dir(&old).map_err(|source| io_error(&old, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io_error(&old, source))?;
        let name = entry.file_name();
        if [SERVICES, NODE_PORTS, FLOWS]
            .map(Into::into)
            .contains(&name)
        {
            continue;
        }
        let to = new.join(&name);
        if !to.exists() {
            fs::rename(entry.path(), &to).map_err(|source| io_error(&to, source))?;
        }
    }
    Ok(true)
}

/// Copies the entries of v3's `SERVICES` and `FLOWS` into their per-family
/// pairs in `maps`, then removes the v3 directory, `NODE_PORTS` with it.
pub(super) fn copy_split_maps(pins: &PinDir, maps: &mut Maps) -> Result<(), DataplaneError> {
    let old = pins.upgradable_state();
    copy::<ServiceKey, ServiceInfo>(&old, SERVICES, &mut maps.services)?;
    copy::<FlowKey, Flow>(&old, FLOWS, &mut maps.flows)?;
    let kept = fs::read_dir(&old).map_err(|source| io_error(&old, source))?;
    for entry in kept {
        let path = entry.map_err(|source| io_error(&old, source))?.path();
        fs::remove_file(&path).map_err(|source| io_error(&path, source))?;
    }
    fs::remove_dir(&old).map_err(|source| io_error(&old, source))?;
    tracing::info!(
        "upgraded the pinned state of layout v{} to v{}",
        crate::pins::UPGRADES_FROM,
        lb_common::LAYOUT_VERSION
    );
    Ok(())
}

/// Copies the v3 map `name` under `dir`, if it is still there, into `pair`,
/// then unpins it. An entry that goes while the map is walked (a flow the
/// old program's LRU evicts) is skipped.
fn copy<K, V>(dir: &Path, name: &'static str, pair: &mut FamilyMaps<K, V>) -> Result<(), MapsError>
where
    K: ByFamily + Pod,
    K::V4: Pod,
    V: ByFamily + Pod,
    V::V4: Pod,
{
    let path = dir.join(name);
    if !path.exists() {
        return Ok(());
    }
    // A hash map, or for FLOWS an LRU one: both read as a `HashMap`.
    let old: HashMap<MapData, K, V> = MapData::from_pin(&path)
        .and_then(Map::from_map_data)
        .and_then(HashMap::try_from)
        .map_err(|e| map_error(name, e))?;
    for entry in old.iter() {
        match entry {
            Ok((key, value)) => pair.insert(key, value)?,
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_error(name, e)),
        }
    }
    fs::remove_file(&path).map_err(|source| {
        MapsError::from(PinsError::Io {
            path: path.clone(),
            source,
        })
    })
}

fn io_error(path: &Path, source: std::io::Error) -> DataplaneError {
    DataplaneError::Pins(PinsError::Io {
        path: path.to_owned(),
        source,
    })
}
