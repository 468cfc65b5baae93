//! Which plan the agent follows at each sync: MetalLB's advertisements when
//! there are any, the `--announce` flag otherwise. What is wrong with the
//! advertisements, and a flag they overrule, is logged when it changes, not
//! at every sync.

use tracing::{info, warn};

use super::{Announce, plan::AnnouncementPlan};
use crate::k8s::{
    ClusterObjects, Translation, metallb::advertisements, pools::Pool, translate::Skipped,
};

pub struct Planner {
    mode: Announce,
    /// `--announce` was given, so advertisements overrule an explicit choice.
    explicit: bool,
    /// What was logged last time.
    skipped: Vec<Skipped>,
    from_advertisements: bool,
}

impl Planner {
    pub fn new(mode: Announce, explicit: bool) -> Self {
        Self {
            mode,
            explicit,
            skipped: Vec::new(),
            from_advertisements: false,
        }
    }

    /// `pools`: those the translation allocated from.
    pub fn plan(
        &mut self,
        objects: &ClusterObjects,
        pools: &[Pool],
        translation: &Translation,
    ) -> AnnouncementPlan {
        let advertised = advertisements::plan(&objects.metallb, pools, &translation.vip_pools);
        for skipped in advertised
            .skipped
            .iter()
            .filter(|s| !self.skipped.contains(s))
        {
            warn!("skipping {skipped}");
        }
        self.skipped = advertised.skipped;
        let from_advertisements = advertised.plan.is_some();
        if from_advertisements && !self.from_advertisements {
            let (l2, bgp) = (
                objects.metallb.l2_advertisements.len(),
                objects.metallb.bgp_advertisements.len(),
            );
            if self.explicit {
                warn!(
                    l2_advertisements = l2,
                    bgp_advertisements = bgp,
                    "--announce {} is overruled: MetalLB's advertisements exist, and VIPs are \
                     announced as they say (a VIP of a pool no advertisement selects is not \
                     announced); remove --announce, or the advertisements",
                    self.mode_name()
                );
            } else {
                info!(
                    l2_advertisements = l2,
                    bgp_advertisements = bgp,
                    "announcing VIPs as MetalLB's advertisements say"
                );
            }
        } else if !from_advertisements && self.from_advertisements {
            info!(
                "no MetalLB advertisement left: announcing every VIP as --announce {} says",
                self.mode_name()
            );
        }
        self.from_advertisements = from_advertisements;
        advertised.plan.unwrap_or_else(|| {
            let vips = translation.vips.values().flatten().copied();
            AnnouncementPlan::of_flag(self.mode, vips)
        })
    }

    fn mode_name(&self) -> String {
        let value = clap::ValueEnum::to_possible_value(&self.mode);
        value.map(|v| v.get_name().to_owned()).unwrap_or_default()
    }
}
