//! Kubernetes objects: loading and translating them into the desired state.
pub mod manifests;
pub mod source;
pub mod translate;

pub use manifests::{ClusterObjects, Loaded, ManifestError, load_path};
pub use translate::{NODE_WEIGHT_ANNOTATION, Translation, translate};
