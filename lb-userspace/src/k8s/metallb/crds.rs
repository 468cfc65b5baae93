//! The CustomResourceDefinitions of the MetalLB objects lb reads, made from
//! the types themselves, so that what a cluster accepts is what lb parses.
//! `deploy/kubernetes/metallb-crds.yaml` is their checked-in copy.

use kube::CustomResourceExt;

use super::objects::{
    BFDProfile, BGPAdvertisement, BGPPeer, Community, IPAddressPool, L2Advertisement,
};

/// The CRDs as one multi-document YAML file.
pub fn yaml() -> String {
    let crds = [
        IPAddressPool::crd(),
        L2Advertisement::crd(),
        BGPAdvertisement::crd(),
        BGPPeer::crd(),
        BFDProfile::crd(),
        Community::crd(),
    ];
    let documents: Vec<String> = crds
        .into_iter()
        .map(|mut crd| {
            // MetalLB's objects may leave `spec` out (see `from_value`).
            for version in &mut crd.spec.versions {
                let schema = version.schema.as_mut();
                if let Some(root) = schema.and_then(|s| s.open_api_v3_schema.as_mut()) {
                    root.required = None;
                }
            }
            serde_yaml::to_string(&crd).expect("a CRD serializes")
        })
        .collect();
    format!(
        "# MetalLB's CRDs as lb reads them (only the fields lb acts on). Generated: do not\n\
         # edit; `LB_BLESS=1 cargo test -p lb-userspace crds` rewrites this file.\n{}",
        documents.join("---\n")
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const CHECKED_IN: &str = "../deploy/kubernetes/metallb-crds.yaml";

    #[test]
    fn the_checked_in_crds_are_the_generated_ones() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CHECKED_IN);
        let generated = super::yaml();
        if std::env::var_os("LB_BLESS").is_some() {
            std::fs::write(&path, &generated).expect("writing the CRDs");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{} differs from the CRDs the types make: run \
             `LB_BLESS=1 cargo test -p lb-userspace crds` and commit the file",
            path.display()
        );
        // Every kind, and BGPPeer at the version lb reads.
        for kind in [
            "IPAddressPool",
            "L2Advertisement",
            "BGPAdvertisement",
            "BGPPeer",
            "BFDProfile",
            "Community",
        ] {
            assert!(generated.contains(&format!("kind: {kind}\n")), "{kind}");
        }
        assert!(generated.contains("name: v1beta2\n"));
    }
}
