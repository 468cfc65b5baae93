//! Kubernetes objects: where they come from (manifests or an API server),
//! translating them into the desired state, and reporting back.
pub mod election;
mod events;
pub mod family;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod kube_source;
pub mod manifests;
pub mod metallb;
pub mod objects;
pub mod pools;
pub mod selector;
pub mod source;
mod status;
pub mod translate;

pub use manifests::{Loaded, ManifestError, load_bytes, load_path};
pub use objects::{ClusterObjects, MetallbObjects};
pub use status::ingress_ips;
pub use translate::{NODE_WEIGHT_ANNOTATION, Translation, Translator};
