//! The last translation and what it was made of. Pods come and go far more
//! often than anything else changes, and then only EndpointSlices change:
//! such a round needs the backends of the Services whose slices changed, not
//! every Service translated again, which with 10,000 Services was most of a
//! round's time.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::{
    Skips, TranslateConfig, Translation,
    backends::{self, ServedPort, service_of},
    load_balancer, namespace_labels,
};
use crate::k8s::{
    metallb::objects::{IPAddressPool, IPAddressPoolSpec},
    objects::ClusterObjects,
};

#[derive(Debug, Clone)]
pub(super) struct Memo {
    services: Held<Service>,
    nodes: Held<Node>,
    slices: Held<EndpointSlice>,
    /// A source may hand these out as new objects every time, so they are
    /// compared by what translation reads of them.
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    pools: Vec<Arc<IPAddressPool>>,
}

impl Memo {
    pub(super) fn new(objects: &ClusterObjects) -> Self {
        let namespace_labels = namespace_labels(objects)
            .into_iter()
            .map(|(name, labels)| (name.to_owned(), labels.clone()))
            .collect();
        Self {
            services: Held::of(&objects.services),
            nodes: Held::of(&objects.nodes),
            slices: Held::of(&objects.endpoint_slices),
            namespace_labels,
            pools: objects.metallb.pools.clone(),
        }
    }

    /// Whether `objects` differ from the memo's in EndpointSlices alone, so
    /// that the VIPs, the ports and every skip stay as they are.
    pub(super) fn made_of_the_same_but_slices(&self, objects: &ClusterObjects) -> bool {
        let held_labels = self.namespace_labels.iter();
        self.services.same(&objects.services)
            && self.nodes.same(&objects.nodes)
            && namespace_labels(objects)
                .into_iter()
                .eq(held_labels.map(|(name, labels)| (name.as_str(), labels)))
            && pool_specs(&objects.metallb.pools) == pool_specs(&self.pools)
    }

    /// Brings `translation`, made from the memo's objects, in line with
    /// `objects`, which must be [`Self::made_of_the_same_but_slices`]: the
    /// backends of every Service whose EndpointSlices changed (added,
    /// modified or deleted) are translated again.
    pub(super) fn update_backends(
        &mut self,
        objects: &ClusterObjects,
        config: &TranslateConfig,
        translation: &mut Translation,
    ) {
        let slices = Held::of(&objects.endpoint_slices);
        let mut changed: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for slice in self.slices.differences(&slices) {
            if let Some((namespace, name)) = service_of(slice) {
                changed.entry(namespace).or_default().insert(name);
            }
        }
        // The round that released them reported them.
        translation.released.clear();
        translation.translated = 0;
        if !changed.is_empty() {
            let is_changed = |namespace: &str, name: &str| {
                changed
                    .get(namespace)
                    .is_some_and(|names| names.contains(name))
            };
            translate_backends(objects, config, is_changed, translation);
        }
        self.slices = slices;
    }
}

/// Translates the backends of the Services `is_changed` names (by namespace
/// and name) again, into `translation`.
fn translate_backends(
    objects: &ClusterObjects,
    config: &TranslateConfig,
    is_changed: impl Fn(&str, &str) -> bool,
    translation: &mut Translation,
) {
    // The last full translation reported what these would skip.
    let mut skips = Skips::default();
    let nodes = backends::usable_nodes(&objects.nodes, config, &mut skips);
    let their_slices: Vec<Arc<EndpointSlice>> = objects
        .endpoint_slices
        .iter()
        .filter(|slice| service_of(slice).is_some_and(|(ns, name)| is_changed(ns, name)))
        .cloned()
        .collect();
    let endpoints = backends::index_endpoints(&their_slices, &nodes);
    let namespaces = namespace_labels(objects);
    let changed_services = objects.services.iter().filter(|service| {
        let metadata = &service.metadata;
        let namespace = metadata.namespace.as_deref().unwrap_or("default");
        metadata
            .name
            .as_deref()
            .is_some_and(|name| is_changed(namespace, name))
    });
    for service in changed_services {
        let Some(service) = load_balancer(config, service, &namespaces, &mut skips) else {
            continue;
        };
        let Some(vips) = translation.vips.get(&service.owner) else {
            continue;
        };
        let backends = backends::for_service(&service, &nodes, &endpoints);
        for port in service.ports {
            let Ok(port) = ServedPort::new(&service, port, config) else {
                continue;
            };
            for &vip in vips {
                let spec = port.on(vip, &backends);
                // Not where another Service won the frontend.
                if let Some(served) = translation.state.services.get_mut(&spec.frontend)
                    && served.name == spec.name
                {
                    *served = spec;
                }
            }
        }
        translation.translated += 1;
    }
}

/// What translation reads of IPAddressPools, in name order.
fn pool_specs(
    pools: &[Arc<IPAddressPool>],
) -> Vec<(&Option<String>, &Option<String>, &IPAddressPoolSpec)> {
    let mut specs: Vec<_> = pools
        .iter()
        .map(|pool| (&pool.metadata.name, &pool.metadata.namespace, &pool.spec))
        .collect();
    specs.sort_by_key(|(name, namespace, _)| (*name, *namespace));
    specs
}

/// Objects of one kind, sorted by address. A store hands out the same `Arc`
/// until its object changes; holding the objects, not only their addresses,
/// keeps a new object from taking the address of one that changed.
#[derive(Debug)]
struct Held<K>(Vec<Arc<K>>);

impl<K> Clone for Held<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K> Held<K> {
    fn of(objects: &[Arc<K>]) -> Self {
        let mut held = objects.to_vec();
        held.sort_unstable_by_key(Arc::as_ptr);
        Self(held)
    }

    /// Whether `objects` are the very objects held.
    fn same(&self, objects: &[Arc<K>]) -> bool {
        if objects.len() != self.0.len() {
            return false;
        }
        let mut now: Vec<*const K> = objects.iter().map(Arc::as_ptr).collect();
        now.sort_unstable();
        now.into_iter()
            .zip(&self.0)
            .all(|(now, held)| std::ptr::eq(now, Arc::as_ptr(held)))
    }

    /// The objects in `self` or in `other` but not in both.
    fn differences<'s>(&'s self, other: &'s Self) -> Vec<&'s Arc<K>> {
        let (mut old, mut new) = (self.0.iter().peekable(), other.0.iter().peekable());
        let mut differences = Vec::new();
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => return differences,
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {
                    old.next();
                    new.next();
                }
                (Some(a), Some(b)) if Arc::as_ptr(a) < Arc::as_ptr(b) => {
                    differences.extend(old.next());
                }
                (Some(_), Some(_)) | (None, Some(_)) => differences.extend(new.next()),
                (Some(_), None) => differences.extend(old.next()),
            }
        }
    }
}
