//! Brings the data path to the desired state, touching only what differs.

use std::fmt::Display;

use tracing::info;

use crate::{
    dataplane::{Dataplane, DataplaneError},
    model::{DesiredState, Frontend, ServiceSpec},
};

/// What reconciliation needs of a data path: what it serves now, and the two
/// changes it can make. The [`Dataplane`] is one; tests use a table in memory.
pub trait ServiceTable {
    type Error: Display;
    /// Every frontend programmed now.
    fn frontends(&self) -> Vec<Frontend>;
    /// What `frontend` is programmed with, if it is.
    fn spec(&self, frontend: &Frontend) -> Option<&ServiceSpec>;
    fn set_service(&mut self, spec: &ServiceSpec) -> Result<(), Self::Error>;
    fn remove_service(&mut self, frontend: &Frontend) -> Result<(), Self::Error>;
}

impl ServiceTable for Dataplane {
    type Error = DataplaneError;

    fn frontends(&self) -> Vec<Frontend> {
        self.services().map(|s| s.spec.frontend).collect()
    }

    fn spec(&self, frontend: &Frontend) -> Option<&ServiceSpec> {
        self.service(frontend).map(|s| &s.spec)
    }

    fn set_service(&mut self, spec: &ServiceSpec) -> Result<(), DataplaneError> {
        Dataplane::set_service(self, spec)
    }

    fn remove_service(&mut self, frontend: &Frontend) -> Result<(), DataplaneError> {
        Dataplane::remove_service(self, frontend)
    }
}

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

/// Applies `desired` to `table`: removes services no longer wanted, adds new
/// ones and updates those whose backends changed. Unchanged services are not
/// touched, so their Maglev tables and flows stay exactly as they are.
pub fn apply(table: &mut impl ServiceTable, desired: &DesiredState) -> ApplyReport {
    let mut report = ApplyReport::default();
    let stale: Vec<Frontend> = table
        .frontends()
        .into_iter()
        .filter(|frontend| !desired.services.contains_key(frontend))
        .collect();
    for frontend in stale {
        match table.remove_service(&frontend) {
            Ok(()) => report.removed.push(frontend),
            Err(e) => report.failed.push((frontend, e.to_string())),
        }
    }
    for (frontend, spec) in &desired.services {
        let existed = match table.spec(frontend) {
            Some(current) if current == spec => continue,
            Some(_) => true,
            None => false,
        };
        match table.set_service(spec) {
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::IpAddr};

    use super::*;
    use crate::model::{BackendSpec, Protocol};

    /// A data path in memory that records every change and refuses the
    /// frontends it is told to.
    #[derive(Default)]
    struct Table {
        services: BTreeMap<Frontend, ServiceSpec>,
        refuse: Vec<Frontend>,
        changes: Vec<String>,
    }

    impl ServiceTable for Table {
        type Error = String;

        fn frontends(&self) -> Vec<Frontend> {
            self.services.keys().copied().collect()
        }

        fn spec(&self, frontend: &Frontend) -> Option<&ServiceSpec> {
            self.services.get(frontend)
        }

        fn set_service(&mut self, spec: &ServiceSpec) -> Result<(), String> {
            if self.refuse.contains(&spec.frontend) {
                return Err("no room".to_owned());
            }
            self.changes.push(format!("set {}", spec.frontend));
            self.services.insert(spec.frontend, spec.clone());
            Ok(())
        }

        fn remove_service(&mut self, frontend: &Frontend) -> Result<(), String> {
            if self.refuse.contains(frontend) {
                return Err("busy".to_owned());
            }
            self.changes.push(format!("remove {frontend}"));
            self.services.remove(frontend);
            Ok(())
        }
    }

    fn frontend(last: u8) -> Frontend {
        Frontend {
            vip: IpAddr::from([198, 51, 100, last]),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    fn spec(last: u8, nodes: &[u8]) -> ServiceSpec {
        ServiceSpec {
            name: format!("demo/web-{last}:http"),
            frontend: frontend(last),
            backends: nodes
                .iter()
                .map(|&n| BackendSpec {
                    node: format!("node-{n}"),
                    ip: IpAddr::from([10, 1, 0, 10 + n]),
                    port: 31000,
                    weight: 1,
                })
                .collect(),
        }
    }

    fn desired(specs: &[ServiceSpec]) -> DesiredState {
        DesiredState {
            services: specs.iter().map(|s| (s.frontend, s.clone())).collect(),
            ..DesiredState::default()
        }
    }

    #[test]
    fn only_what_differs_is_touched() {
        let mut table = Table::default();
        let first = desired(&[spec(1, &[1, 2]), spec(2, &[1])]);
        let report = apply(&mut table, &first);
        assert_eq!(report.added, [frontend(1), frontend(2)]);
        assert!(
            apply(&mut table, &first).is_noop(),
            "a second apply changes nothing"
        );
        table.changes.clear();
        let report = apply(&mut table, &desired(&[spec(1, &[1, 2, 3]), spec(3, &[2])]));
        assert_eq!(
            report,
            ApplyReport {
                added: vec![frontend(3)],
                updated: vec![frontend(1)],
                removed: vec![frontend(2)],
                failed: vec![],
            }
        );
        assert_eq!(
            table.changes,
            [
                "remove 198.51.100.2:80/tcp",
                "set 198.51.100.1:80/tcp",
                "set 198.51.100.3:80/tcp"
            ]
        );
    }

    #[test]
    fn a_refused_service_is_reported_and_the_rest_still_programmed() {
        let mut table = Table {
            refuse: vec![frontend(2)],
            ..Table::default()
        };
        let report = apply(
            &mut table,
            &desired(&[spec(1, &[1]), spec(2, &[1]), spec(3, &[1])]),
        );
        assert_eq!(report.added, [frontend(1), frontend(3)]);
        assert_eq!(report.failed, [(frontend(2), "no room".to_owned())]);
        // Refused next time too: reported again, not taken for programmed.
        let report = apply(
            &mut table,
            &desired(&[spec(1, &[1]), spec(2, &[1]), spec(3, &[1])]),
        );
        assert_eq!(report.failed.len(), 1);
        assert!(report.added.is_empty() && report.updated.is_empty());
    }

    #[test]
    fn a_failed_removal_is_reported() {
        let mut table = Table::default();
        apply(&mut table, &desired(&[spec(1, &[1]), spec(2, &[1])]));
        table.refuse = vec![frontend(2)];
        let report = apply(&mut table, &desired(&[spec(1, &[1])]));
        assert_eq!(report.failed, [(frontend(2), "busy".to_owned())]);
        assert!(report.removed.is_empty());
        assert_eq!(table.frontends(), [frontend(1), frontend(2)]);
    }
}
