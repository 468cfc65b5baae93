//! The data path's per-CPU caches of flow entries (`FLOW_CACHE4`,
//! `FLOW_CACHE6`; see `lb-ebpf/src/flows.rs`). A cached copy counts its
//! flow's packets until it gives them back to the flow's entry (at its
//! refresh, at most a second later, or when another flow takes its slot),
//! and an idle flow's copy may hold them for good: readers of the flow table
//! add what the copies hold.

use std::collections::HashMap;

use aya::{
    Pod,
    maps::{MapData, PerCpuArray},
    util::nr_cpus,
};
use lb_common::{ByFamily, CachedFlow, Flow, FlowKey, FlowKey4, MAP_FLOW_CACHE4, MAP_FLOW_CACHE6};

use super::{MapsError, batch::get_all_per_cpu, map_error};

pub struct FlowCaches {
    pub v4: PerCpuArray<MapData, CachedFlow<FlowKey4>>,
    pub v6: PerCpuArray<MapData, CachedFlow<FlowKey>>,
}

impl FlowCaches {
    /// What every CPU's copies hold, added up by flow.
    fn counts(&self) -> Result<HashMap<FlowKey, Flow>, MapsError> {
        let cpus = nr_cpus().map_err(|(_, e)| MapsError::Cpus(e))?;
        let mut counts = HashMap::new();
        add_counts(
            &self.v4,
            MAP_FLOW_CACHE4,
            cpus,
            FlowKey::from_v4,
            &mut counts,
        )?;
        add_counts(&self.v6, MAP_FLOW_CACHE6, cpus, |key| *key, &mut counts)?;
        Ok(counts)
    }

    /// `flows` with what the copies hold added to each.
    pub fn add_to(&self, flows: &mut [(FlowKey, Flow)]) -> Result<(), MapsError> {
        let counts = self.counts()?;
        for (key, flow) in flows {
            if let Some(copies) = counts.get(key) {
                flow.add_cached(copies);
            }
        }
        Ok(())
    }
}

fn add_counts<K: Pod>(
    cache: &PerCpuArray<MapData, CachedFlow<K>>,
    name: &'static str,
    cpus: usize,
    neutral: impl Fn(&K) -> FlowKey,
    counts: &mut HashMap<FlowKey, Flow>,
) -> Result<(), MapsError>
where
    CachedFlow<K>: Pod,
{
    let copies = get_all_per_cpu(cache, cpus).map_err(|e| map_error(name, e))?;
    for copy in copies.iter().filter(|copy| copy.flow.packets != 0) {
        counts
            .entry(neutral(&copy.key))
            .or_default()
            .add_cached(&copy.flow);
    }
    Ok(())
}
