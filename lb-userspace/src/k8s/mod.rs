//! Kubernetes objects: loading and translating them into the desired state.
