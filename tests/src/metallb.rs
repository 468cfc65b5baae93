//! MetalLB's configuration objects as its users write them, for the fake API
//! server (typed) and for manifests (YAML).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lb::k8s::metallb::objects::{
    BGPAdvertisement, BGPAdvertisementSpec, DEFAULT_NAMESPACE, IPAddressPool, IPAddressPoolSpec,
    L2Advertisement, L2AdvertisementSpec,
};
use serde::Serialize;

fn metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(DEFAULT_NAMESPACE.to_owned()),
        ..Default::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// An IPAddressPool of `addresses` (CIDRs, ranges).
pub fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
    IPAddressPool {
        metadata: metadata(name),
        spec: IPAddressPoolSpec {
            addresses: strings(addresses),
            ..Default::default()
        },
    }
}

/// An L2Advertisement of the `pools` named, on `interfaces` (none: all).
pub fn l2_advertisement(name: &str, pools: &[&str], interfaces: &[&str]) -> L2Advertisement {
    L2Advertisement {
        metadata: metadata(name),
        spec: L2AdvertisementSpec {
            ip_address_pools: strings(pools),
            interfaces: strings(interfaces),
            ..Default::default()
        },
    }
}

/// A BGPAdvertisement of the `pools` named, with no other attribute.
pub fn bgp_advertisement(name: &str, pools: &[&str]) -> BGPAdvertisement {
    BGPAdvertisement {
        metadata: metadata(name),
        spec: BGPAdvertisementSpec {
            ip_address_pools: strings(pools),
            ..Default::default()
        },
    }
}

/// `object` as a YAML manifest, `apiVersion` and `kind` included.
pub fn yaml<K: kube::Resource<DynamicType = ()> + Serialize>(object: &K) -> String {
    let mut value = serde_json::to_value(object).expect("MetalLB objects serialize");
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    serde_yaml::to_string(&value).expect("YAML")
}
