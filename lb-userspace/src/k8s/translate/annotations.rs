//! The Service annotations lb reads: its own (`lb.dev/...`) and MetalLB's, in
//! both of MetalLB's spellings, so Services written for MetalLB keep their
//! addresses, pools and sharing.

use std::collections::BTreeMap;

use super::{ADDRESS_ANNOTATION, LoadBalancer, POOL_ANNOTATION, SHARING_ANNOTATION};
use crate::k8s::pools::Sharing;

/// One setting and the annotations that give it, the first spelling first.
pub(super) struct Setting {
    names: [&'static str; 3],
}

/// Addresses, comma-separated, at most one per family.
pub(super) const ADDRESSES: Setting = Setting {
    names: [
        ADDRESS_ANNOTATION,
        "metallb.io/loadBalancerIPs",
        "metallb.universe.tf/loadBalancerIPs",
    ],
};

/// The pool to allocate from.
pub(super) const POOL: Setting = Setting {
    names: [
        POOL_ANNOTATION,
        "metallb.io/address-pool",
        "metallb.universe.tf/address-pool",
    ],
};

/// A sharing key: Services with the same one may share an address.
pub(super) const SHARING: Setting = Setting {
    names: [
        SHARING_ANNOTATION,
        "metallb.io/allow-shared-ip",
        "metallb.universe.tf/allow-shared-ip",
    ],
};

/// A setting's value and the annotation it came from.
pub(super) struct Annotated<'a> {
    pub name: &'static str,
    pub value: &'a str,
}

impl<'a> LoadBalancer<'a> {
    fn annotation(&self, key: &str) -> Option<&'a str> {
        let annotations = self.service.metadata.annotations.as_ref()?;
        annotations
            .get(key)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    }

    /// The Service's value of `setting`, from whichever spelling it uses;
    /// spellings that disagree are an error naming both.
    pub(super) fn setting(&self, setting: &Setting) -> Result<Option<Annotated<'a>>, String> {
        let mut found: Option<Annotated> = None;
        for name in setting.names {
            let Some(value) = self.annotation(name) else {
                continue;
            };
            match &found {
                Some(first) if first.value != value => {
                    return Err(format!(
                        "annotations {}={:?} and {name}={value:?} disagree",
                        first.name, first.value
                    ));
                }
                Some(_) => {}
                None => found = Some(Annotated { name, value }),
            }
        }
        Ok(found)
    }

    /// What the Service agrees to share its address on, if it does.
    pub(super) fn sharing(&self) -> Result<Option<Sharing>, String> {
        let Some(key) = self.setting(&SHARING)? else {
            return Ok(None);
        };
        // With policy Local, traffic goes only to nodes running the Service's
        // pods: Services sharing an address must have the same ones (MetalLB
        // compares their selectors too).
        let backend = match self.is_local() {
            true => selector_text(self.spec.selector.as_ref()),
            false => String::new(),
        };
        let listeners = self.listeners();
        let listeners = listeners
            .into_iter()
            .map(|(port, protocol)| (port, protocol.to_owned()));
        Ok(Some(Sharing {
            key: key.value.to_owned(),
            backend,
            listeners: listeners.collect(),
        }))
    }
}

fn selector_text(selector: Option<&BTreeMap<String, String>>) -> String {
    let pairs = selector.into_iter().flatten();
    let pairs: Vec<String> = pairs.map(|(key, value)| format!("{key}={value}")).collect();
    pairs.join(",")
}
