//! Brings the data path to the desired state, touching only what differs.

use tracing::info;

use crate::{
    dataplane::Dataplane,
    model::{DesiredState, Frontend},
};

/// What one reconciliation changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: Vec<Frontend>,
    pub updated: Vec<Frontend>,
    pub removed: Vec<Frontend>,
    /// Services that could not be programmed, with the reason; the rest still were.
    pub failed: Vec<(Frontend, String)>,
}

impl ApplyReport {
    pub fn is_noop(&self) -> bool {
        self.added.is_empty()
            && self.updated.is_empty()
            && self.removed.is_empty()
            && self.failed.is_empty()
    }
}

/// Applies `desired` to `dataplane`: removes services no longer wanted, adds new
/// ones and updates those whose backends changed. Unchanged services are not
/// touched, so their Maglev tables and flows stay exactly as they are.
pub fn apply(dataplane: &mut Dataplane, desired: &DesiredState) -> ApplyReport {
    let mut report = ApplyReport::default();
    let stale: Vec<Frontend> = dataplane
        .services()
        .map(|s| s.spec.frontend)
        .filter(|frontend| !desired.services.contains_key(frontend))
        .collect();
    for frontend in stale {
        match dataplane.remove_service(&frontend) {
            Ok(()) => report.removed.push(frontend),
            Err(e) => report.failed.push((frontend, e.to_string())),
        }
    }
    for (frontend, spec) in &desired.services {
        let existed = match dataplane.service(frontend) {
            Some(current) if current.spec == *spec => continue,
            Some(_) => true,
            None => false,
        };
        match dataplane.set_service(spec) {
            Ok(()) if existed => report.updated.push(*frontend),
            Ok(()) => report.added.push(*frontend),
            Err(e) => report.failed.push((*frontend, e.to_string())),
        }
    }
    for frontend in &report.added {
        info!(%frontend, "service added");
    }
    for frontend in &report.updated {
        info!(%frontend, "service updated");
    }
    for frontend in &report.removed {
        info!(%frontend, "service removed");
    }
    report
}
