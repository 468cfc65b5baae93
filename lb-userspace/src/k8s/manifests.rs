//! Loading Services, Nodes, EndpointSlices, Namespaces and MetalLB's
//! configuration objects from manifest files, so lb can
//! run (and be tested) without an API server.

use std::{
    fmt::Display,
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde_yaml::Value;

use super::{metallb, objects::ClusterObjects};

/// What [`load_path`] found.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub objects: ClusterObjects,
    /// Documents skipped, each as "file: doc N: reason", so one bad document
    /// does not hide the rest of a directory.
    pub skipped: Vec<String>,
    /// How many of them were not even valid YAML/JSON text: a file caught
    /// half-written, or garbage, rather than one bad object.
    pub unparseable: usize,
}

#[derive(thiserror::Error, Debug)]
pub enum ManifestError {
    #[error("{}: no such file or directory", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{}: {count} document(s) are not valid YAML/JSON (half-written or corrupt)",
        path.display()
    )]
    Unparseable { path: PathBuf, count: usize },
}

/// Loads PATH: one YAML file (multi-document with `---`, and `kind: List`
/// with `items` also supported) or a directory of them (`*.yaml`, `*.yml`,
/// `*.json`, non-recursive, sorted by name for determinism).
///
/// Only an unreadable path is an error: bad documents are skipped and
/// reported in [`Loaded::skipped`], like `kubectl apply` carries on past them.
pub fn load_path(path: &Path) -> Result<Loaded, ManifestError> {
    let read_error = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => ManifestError::NotFound {
            path: path.to_owned(),
        },
        _ => ManifestError::Read {
            path: path.to_owned(),
            source,
        },
    };
    let mut loaded = Loaded::default();
    if fs::metadata(path).map_err(read_error)?.is_dir() {
        for file in manifest_files(path)? {
            load_file(&file, &mut loaded)?;
        }
    } else {
        load_file(path, &mut loaded)?;
    }
    Ok(loaded)
}

fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_error = |source| ManifestError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let is_manifest = path
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| matches!(ext, "yaml" | "yml" | "json"));
        // `is_file` follows symlinks, as ConfigMap volumes are made of them.
        if is_manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn load_file(path: &Path, loaded: &mut Loaded) -> Result<(), ManifestError> {
    let bytes = fs::read(path).map_err(|source| ManifestError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_into(path, &bytes, loaded);
    Ok(())
}

/// Loads one manifest file's contents from memory, as [`load_path`] loads a
/// file: `origin` names it in skip reasons, and its extension picks the
/// format (`.json`, else YAML).
pub fn load_bytes(origin: &Path, bytes: &[u8]) -> Loaded {
    let mut loaded = Loaded::default();
    parse_into(origin, bytes, &mut loaded);
    loaded
}

fn parse_into(path: &Path, bytes: &[u8], loaded: &mut Loaded) {
    let mut file = FileLoader { path, loaded };
    let Ok(text) = std::str::from_utf8(bytes) else {
        file.unparseable("whole file", "not valid UTF-8");
        return;
    };
    if path.extension().is_some_and(|ext| ext == "json") {
        // JSON is not split on `---`, and serde_json accepts the tab
        // indentation YAML forbids.
        match serde_json::from_str::<Value>(text) {
            Ok(value) => file.add("doc 1", value),
            Err(err) => file.unparseable("doc 1", format!("invalid JSON: {err}")),
        }
        return;
    }
    // Split on `---` lines ourselves, as kubectl does, so a syntax error only
    // loses its own document rather than every one after it.
    for (index, (line, doc)) in split_documents(text).into_iter().enumerate() {
        let at = format!("doc {}", index + 1);
        // Leading newlines make the parser's "at line N" count from the file's start.
        match serde_yaml::from_str::<Value>(&format!("{}{doc}", "\n".repeat(line))) {
            Ok(value) => file.add(&at, value),
            Err(err) => file.unparseable(&at, format!("invalid YAML: {err}")),
        }
    }
}

/// The documents of a YAML stream, each with the index of the line it starts
/// on. A blank or comment-only one (before a leading `---`, say) is dropped,
/// so numbering matches what users see.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 0, 0);
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let body = line.trim_end();
        if body == "---" || body.starts_with("--- ") {
            docs.push((start_line, &text[start..offset]));
            // Content after `--- ` on the same line belongs to the next document.
            (start, start_line) = (offset + 3, index);
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs.retain(|(_, doc)| {
        doc.lines()
            .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
    });
    docs
}

/// Parses `value` as a `K` onto `objects`.
fn push<K: serde::de::DeserializeOwned>(
    value: Value,
    objects: &mut Vec<Arc<K>>,
) -> Result<(), Box<dyn std::error::Error>> {
    objects.push(Arc::new(serde_yaml::from_value(value)?));
    Ok(())
}

/// Parses `value` as the MetalLB object `K` onto `objects`.
fn push_metallb<K: serde::de::DeserializeOwned>(
    value: Value,
    objects: &mut Vec<Arc<K>>,
) -> Result<(), Box<dyn std::error::Error>> {
    objects.push(Arc::new(metallb::objects::from_value(
        serde_json::to_value(value)?,
    )?));
    Ok(())
}

/// Adds one file's documents to `loaded`, prefixing skip reasons with the file.
struct FileLoader<'a> {
    path: &'a Path,
    loaded: &'a mut Loaded,
}

impl FileLoader<'_> {
    fn add(&mut self, at: &str, value: Value) {
        let Some(kind) = value.get("kind").and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
        let api_version = value.get("apiVersion").and_then(Value::as_str);
        let metallb = api_version.is_some_and(|version| version.starts_with("metallb.io/"));
        let objects = &mut self.loaded.objects;
        let result = match kind.as_str() {
            "Service" => push(value, &mut objects.services),
            "Node" => push(value, &mut objects.nodes),
            "EndpointSlice" => push(value, &mut objects.endpoint_slices),
            "Namespace" => push(value, &mut objects.namespaces),
            "Secret" => push(value, &mut objects.metallb.secrets),
            "IPAddressPool" if metallb => push_metallb(value, &mut objects.metallb.pools),
            "L2Advertisement" if metallb => {
                push_metallb(value, &mut objects.metallb.l2_advertisements)
            }
            "BGPAdvertisement" if metallb => {
                push_metallb(value, &mut objects.metallb.bgp_advertisements)
            }
            "BGPPeer" if metallb => push_metallb(value, &mut objects.metallb.bgp_peers),
            "BFDProfile" if metallb => push_metallb(value, &mut objects.metallb.bfd_profiles),
            "Community" if metallb => push_metallb(value, &mut objects.metallb.communities),
            "List" => {
                match value.get("items") {
                    Some(Value::Sequence(items)) => {
                        for (index, item) in items.iter().enumerate() {
                            self.add(&format!("{at} item {}", index + 1), item.clone());
                        }
                    }
                    Some(Value::Null) | None => {}
                    Some(_) => self.skip(at, "List items is not a sequence"),
                }
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(err) = result {
            self.skip(at, format!("invalid {kind}: {err}"));
        }
    }

    fn unparseable(&mut self, at: &str, reason: impl Display) {
        self.loaded.unparseable += 1;
        self.skip(at, reason);
    }

    fn skip(&mut self, at: &str, reason: impl Display) {
        let skipped = format!("{}: {at}: {reason}", self.path.display());
        tracing::warn!("skipping {skipped}");
        self.loaded.skipped.push(skipped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("lb-manifests-{test}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn service(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: ns\n\
             spec:\n  type: LoadBalancer\n  ports:\n  - port: 80\n    nodePort: 30080\n"
        )
    }

    fn node(name: &str) -> String {
        format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n")
    }

    fn service_names(loaded: &Loaded) -> Vec<String> {
        let names = loaded.objects.services.iter();
        names.map(|s| s.metadata.name.clone().unwrap()).collect()
    }

    fn node_names(loaded: &Loaded) -> Vec<String> {
        let names = loaded.objects.nodes.iter();
        names.map(|n| n.metadata.name.clone().unwrap()).collect()
    }

    #[test]
    fn multi_document_file() {
        let dir = TempDir::new("multi");
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n";
        let text = format!(
            "# leading comment\n---\n{}---\n{deployment}---\n\n---\n{}--- # trailing\n{}",
            service("a"),
            node("n1"),
            service("b")
        );
        let loaded = load_path(&dir.write("all.yaml", &text)).unwrap();
        assert_eq!(service_names(&loaded), ["a", "b"]);
        assert_eq!(node_names(&loaded), ["n1"]);
        assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
        let port = &loaded.objects.services[0]
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()[0];
        assert_eq!((port.port, port.node_port), (80, Some(30080)));
    }

    #[test]
    fn endpoint_slices() {
        let dir = TempDir::new("slices");
        let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
                     name: web-abc\n  namespace: ns\n  labels:\n    \
                     kubernetes.io/service-name: web\naddressType: IPv4\nendpoints:\n\
                     - addresses: [10.244.1.5]\n  nodeName: n1\n  conditions:\n    \
                     ready: false\n    serving: true\n    terminating: true\n";
        // A malformed EndpointSlice is skipped.
        let broken = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
                      name: broken\naddressType: IPv4\nendpoints: not-a-list\n";
        let text = format!("{slice}---\n{broken}---\n{}", service("web"));
        let loaded = load_path(&dir.write("slices.yaml", &text)).unwrap();
        assert_eq!(service_names(&loaded), ["web"]);
        let slices = &loaded.objects.endpoint_slices;
        assert_eq!(slices.len(), 1);
        let endpoint = &slices[0].endpoints.as_ref().unwrap()[0];
        assert_eq!(endpoint.node_name.as_deref(), Some("n1"));
        let conditions = endpoint.conditions.as_ref().unwrap();
        assert_eq!(
            (conditions.ready, conditions.terminating),
            (Some(false), Some(true))
        );
        assert_eq!(loaded.skipped.len(), 1, "{:?}", loaded.skipped);
        assert!(loaded.skipped[0].contains("doc 2: invalid EndpointSlice"));
    }

    #[test]
    fn list_kind() {
        let dir = TempDir::new("list");
        let indent = |doc: String| doc.replace('\n', "\n    ");
        let text = format!(
            "apiVersion: v1\nkind: List\nitems:\n  - {}\n  - {}\n  - kind: ConfigMap\n",
            indent(service("a")),
            indent(node("n1"))
        );
        let loaded = load_path(&dir.write("list.yml", &text)).unwrap();
        assert_eq!(service_names(&loaded), ["a"]);
        assert_eq!(node_names(&loaded), ["n1"]);
        assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    }

    #[test]
    fn directory_in_name_order() {
        let dir = TempDir::new("dir");
        dir.write("b.yaml", &service("from-b"));
        dir.write("a.yml", &service("from-a"));
        dir.write(
            "c.json",
            "{\n\t\"apiVersion\": \"v1\",\n\t\"kind\": \"Node\",\n\t\"metadata\": {\"name\": \"n1\"}\n}",
        );
        dir.write("notes.txt", &service("ignored"));
        fs::create_dir(dir.0.join("sub.yaml")).unwrap();
        let loaded = load_path(&dir.0).unwrap();
        assert_eq!(service_names(&loaded), ["from-a", "from-b"]);
        assert_eq!(node_names(&loaded), ["n1"]);
        assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    }

    #[test]
    fn malformed_documents_skipped_others_kept() {
        let dir = TempDir::new("malformed");
        let text = format!(
            "{}---\nkind: Service\nmetadata: [unclosed\n---\n{}---\n\
             apiVersion: v1\nkind: Node\nmetadata:\n  name: 7\nspec: not-a-map\n---\n{}",
            service("a"),
            node("n1"),
            service("b")
        );
        let path = dir.write("mixed.yaml", &text);
        let loaded = load_path(&path).unwrap();
        assert_eq!(service_names(&loaded), ["a", "b"]);
        assert_eq!(node_names(&loaded), ["n1"]);
        assert_eq!(loaded.skipped.len(), 2, "{:?}", loaded.skipped);
        let prefix = format!("{}: doc 2: invalid YAML", path.display());
        assert!(
            loaded.skipped[0].starts_with(&prefix),
            "{}",
            loaded.skipped[0]
        );
        // The parser's position counts from the start of the file.
        assert!(
            loaded.skipped[0].contains("sequence at line 13"),
            "{}",
            loaded.skipped[0]
        );
        let prefix = format!("{}: doc 4: invalid Node", path.display());
        assert!(
            loaded.skipped[1].starts_with(&prefix),
            "{}",
            loaded.skipped[1]
        );
    }

    #[test]
    fn wrong_api_version_skipped() {
        let dir = TempDir::new("apiversion");
        let path = dir.write(
            "svc.yaml",
            &service("a").replace("apiVersion: v1", "apiVersion: v2"),
        );
        let loaded = load_path(&path).unwrap();
        assert!(loaded.objects.services.is_empty());
        assert_eq!(loaded.skipped.len(), 1);
        assert!(
            loaded.skipped[0].contains("doc 1: invalid Service"),
            "{}",
            loaded.skipped[0]
        );
    }

    #[test]
    fn bytes_load_as_their_file_would() {
        let text = format!("{}---\n{}", service("a"), node("n1"));
        let from_memory = load_bytes(Path::new("mem.yaml"), text.as_bytes());
        let dir = TempDir::new("bytes");
        let from_file = load_path(&dir.write("mem.yaml", &text)).unwrap();
        assert_eq!(service_names(&from_memory), service_names(&from_file));
        assert_eq!(node_names(&from_memory), ["n1"]);
        let garbage = load_bytes(Path::new("mem.json"), b"{\"kind\": ");
        assert_eq!(garbage.unparseable, 1);
        assert!(garbage.skipped[0].starts_with("mem.json: doc 1: invalid JSON"));
    }

    #[test]
    fn non_utf8_file_skipped() {
        let dir = TempDir::new("utf8");
        let path = dir.0.join("bad.yaml");
        fs::write(&path, b"kind: Service\xff\n").unwrap();
        dir.write("good.yaml", &node("n1"));
        let loaded = load_path(&dir.0).unwrap();
        assert_eq!(node_names(&loaded), ["n1"]);
        assert_eq!(
            loaded.skipped,
            [format!("{}: whole file: not valid UTF-8", path.display())]
        );
    }

    #[test]
    fn missing_path_error_names_it() {
        let dir = TempDir::new("missing");
        let path = dir.0.join("nope.yaml");
        let err = load_path(&path).unwrap_err();
        assert!(matches!(err, ManifestError::NotFound { .. }));
        assert_eq!(
            err.to_string(),
            format!("{}: no such file or directory", path.display())
        );
    }

    #[test]
    fn unreadable_path_error_names_it() {
        // A path through a regular file fails with ENOTDIR, even as root.
        let dir = TempDir::new("unreadable");
        let path = dir.write("file.yaml", "").join("child.yaml");
        let err = load_path(&path).unwrap_err();
        assert!(matches!(err, ManifestError::Read { .. }));
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("cannot read {}: ", path.display())),
            "{message}"
        );
    }
}
