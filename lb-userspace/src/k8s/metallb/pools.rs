//! IPAddressPools as lb's pools, with MetalLB's meaning: every address of a
//! CIDR is handed out, in the order the addresses are listed.

use std::sync::Arc;

use super::objects::{IPAddressPool, ServiceAllocation};
use crate::k8s::{
    pools::{Allocation, Hosts, Pool},
    selector::Selector,
};

/// The valid pools, by name, and each object skipped with its
/// `namespace/name` and why. A pool overlapping an older one
/// (`metadata.creationTimestamp`, then name and namespace), or named as
/// one, is skipped, so one mistake does not take the other pools down; and
/// a new pool overlapping one in use is the one skipped, as MetalLB's
/// webhook refuses it, so the Services of the one in use keep their
/// addresses.
pub fn pools(objects: &[Arc<IPAddressPool>]) -> (Vec<Pool>, Vec<(String, String)>) {
    let mut objects: Vec<&IPAddressPool> = objects.iter().map(Arc::as_ref).collect();
    objects.sort_by(|a, b| {
        let order = |pool: &IPAddressPool| {
            let metadata = &pool.metadata;
            let created = metadata.creation_timestamp.as_ref().map(|time| time.0);
            (created, metadata.name.clone(), metadata.namespace.clone())
        };
        order(a).cmp(&order(b))
    });
    // The valid pools, each with its object's namespace/name.
    let mut valid: Vec<(String, Pool)> = Vec::new();
    let mut skipped = Vec::new();
    for object in objects {
        let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
        let name = object.metadata.name.as_deref().unwrap_or("<unnamed>");
        let result = pool(object).and_then(|pool| {
            // Services name a pool by its name alone (MetalLB's pools live
            // in one namespace), so two of one name cannot both serve.
            if let Some((other, _)) = valid.iter().find(|(_, other)| other.name() == pool.name()) {
                return Err(format!(
                    "another IPAddressPool is named {} ({other})",
                    pool.name()
                ));
            }
            match valid.iter().find(|(_, other)| other.overlaps(&pool)) {
                Some((_, other)) => Err(format!(
                    "spec.addresses overlap those of IPAddressPool {}",
                    other.name()
                )),
                None => Ok(pool),
            }
        });
        match result {
            Ok(pool) => valid.push((format!("{namespace}/{name}"), pool)),
            Err(reason) => skipped.push((format!("{namespace}/{name}"), reason)),
        }
    }
    // By name (one each): the order pools of one rank are tried in.
    valid.sort_by(|(_, a), (_, b)| a.name().cmp(b.name()));
    (valid.into_iter().map(|(_, pool)| pool).collect(), skipped)
}

fn pool(object: &IPAddressPool) -> Result<Pool, String> {
    let name = object.metadata.name.as_deref().ok_or("no metadata.name")?;
    let spec = &object.spec;
    if spec.addresses.is_empty() {
        return Err("spec.addresses is empty".to_owned());
    }
    let addresses: Vec<&str> = spec.addresses.iter().map(String::as_str).collect();
    let mut pool = Pool::new(name, &addresses, Hosts::All)
        .map_err(|reason| format!("spec.addresses: {reason}"))?;
    pool.auto_assign = spec.auto_assign.unwrap_or(true);
    pool.avoid_buggy_ips = spec.avoid_buggy_ips.unwrap_or(false);
    pool.allocation = spec
        .service_allocation
        .as_ref()
        .map(allocation)
        .transpose()?;
    Ok(pool)
}

fn allocation(allocation: &ServiceAllocation) -> Result<Allocation, String> {
    let field = "spec.serviceAllocation";
    let selectors = |list: &[_], name: &str| {
        list.iter()
            .enumerate()
            .map(|(index, selector)| {
                Selector::new(selector)
                    .map_err(|reason| format!("{field}.{name}[{index}]: {reason}"))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    // MetalLB takes 0 for "no priority".
    let priority = match allocation.priority {
        Some(priority) if priority < 0 => {
            return Err(format!("{field}.priority {priority} is negative"));
        }
        priority => priority.filter(|priority| *priority > 0),
    };
    Ok(Allocation {
        priority,
        namespaces: allocation.namespaces.iter().cloned().collect(),
        namespace_selectors: selectors(&allocation.namespace_selectors, "namespaceSelectors")?,
        service_selectors: selectors(&allocation.service_selectors, "serviceSelectors")?,
    })
}
