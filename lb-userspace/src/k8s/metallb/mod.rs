//! MetalLB's configuration read as it is: its objects, its Service
//! annotations, and what they mean for lb's pools and announcements.
pub mod advertisements;
pub mod bgp;
pub mod communities;
pub mod crds;
pub mod objects;
pub mod pools;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::k8s::translate::{Problem, Skipped};

/// An invalid MetalLB object, named `namespace/name` with its kind.
pub(crate) fn invalid(kind: &'static str, metadata: &ObjectMeta, reason: String) -> Skipped {
    Skipped {
        kind,
        name: format!(
            "{}/{}",
            metadata.namespace.as_deref().unwrap_or("default"),
            metadata.name.as_deref().unwrap_or("<unnamed>")
        ),
        problem: Problem::Invalid,
        reason,
    }
}
