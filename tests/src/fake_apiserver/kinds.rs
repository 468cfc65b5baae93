//! The resources the fake API server serves.

/// A kind of object, with what its REST paths and JSON need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    Node,
    EndpointSlice,
    /// events.k8s.io/v1, which kube-rs's event recorder writes.
    Event,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Service, Kind::Node, Kind::EndpointSlice, Kind::Event];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Node => "Node",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Event => "Event",
        }
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Event => "events.k8s.io/v1",
        }
    }

    /// The path segment: `services`, `nodes`...
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Node => "nodes",
            Kind::EndpointSlice => "endpointslices",
            Kind::Event => "events",
        }
    }

    pub fn namespaced(self) -> bool {
        self != Kind::Node
    }

    /// Whether `.../status` is a subresource (and the main resource ignores
    /// status changes).
    pub fn has_status(self) -> bool {
        matches!(self, Kind::Service | Kind::Node)
    }

    /// The kind of a k8s-openapi type, if the fake serves it.
    pub fn of<K: k8s_openapi::Resource>() -> Option<Kind> {
        Self::from_path(K::API_VERSION, K::URL_PATH_SEGMENT)
    }

    pub fn from_path(api_version: &str, plural: &str) -> Option<Kind> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.api_version() == api_version && kind.plural() == plural)
    }
}
