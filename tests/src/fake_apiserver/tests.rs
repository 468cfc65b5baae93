//! The fake speaks the protocol: checked with kube-rs, the client lb uses.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::{
    Api, Client, Config,
    api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

use super::{FakeApiServer, Options, fixtures};

/// A client for `server` through a kubeconfig, with `token` swapped in if given.
async fn client(server: &FakeApiServer, token: Option<&str>) -> Client {
    let path = std::env::temp_dir().join(format!(
        "lb-fake-apiserver-test-{}-{}.yaml",
        std::process::id(),
        server.addr.port()
    ));
    server.write_kubeconfig(&path).unwrap();
    let mut kubeconfig = Kubeconfig::read_from(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    if let Some(token) = token {
        kubeconfig.auth_infos[0].auth_info.as_mut().unwrap().token = Some(token.to_owned().into());
    }
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn node(index: u8) -> Node {
    fixtures::node(
        &format!("node-{index}"),
        std::net::Ipv4Addr::new(10, 1, 0, index),
    )
}

fn name(event: &WatchEvent<Node>) -> (&'static str, String) {
    let (kind, node) = match event {
        WatchEvent::Added(node) => ("ADDED", node),
        WatchEvent::Modified(node) => ("MODIFIED", node),
        WatchEvent::Deleted(node) => ("DELETED", node),
        other => panic!("not an object event: {other:?}"),
    };
    (kind, node.metadata.name.clone().unwrap())
}

#[test]
fn lists_in_pages_and_watches_resume_from_a_resource_version() {
    let options = Options {
        bookmark_interval: Duration::from_millis(100),
        ..Options::default()
    };
    let server = FakeApiServer::start(None, options).unwrap();
    for index in 1..=5 {
        server.apply(&node(index)).unwrap();
    }
    runtime().block_on(async {
        let api: Api<Node> = Api::all(client(&server, None).await);
        let mut names = Vec::new();
        let mut params = ListParams::default().limit(2);
        let version = loop {
            let page = api.list(&params).await.unwrap();
            names.extend(page.items.iter().map(|n| n.metadata.name.clone().unwrap()));
            match page.metadata.continue_ {
                Some(token) => params = params.continue_token(&token),
                None => break page.metadata.resource_version.unwrap(),
            }
        };
        assert_eq!(names, ["node-1", "node-2", "node-3", "node-4", "node-5"]);

        // Changes after the list, then a watch from it: it sees them all.
        server.apply(&node(6)).unwrap();
        server.delete::<Node>(None, "node-1").unwrap();
        let params = WatchParams::default().timeout(10);
        let mut events = api.watch(&params, &version).await.unwrap().boxed();
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.push(name(&events.try_next().await.unwrap().unwrap()));
        }
        let want = [
            ("ADDED", "node-6".to_owned()),
            ("DELETED", "node-1".to_owned()),
        ];
        assert_eq!(seen, want);
        let mut modified = node(2);
        modified.metadata.labels = Some([("zone".to_owned(), "a".to_owned())].into());
        server.apply(&modified).unwrap();
        assert_eq!(
            name(&events.try_next().await.unwrap().unwrap()),
            ("MODIFIED", "node-2".to_owned())
        );
        // Bookmarks carry the current resourceVersion.
        let current = server.store().revision().to_string();
        loop {
            if let WatchEvent::Bookmark(bookmark) = events.try_next().await.unwrap().unwrap() {
                assert_eq!(bookmark.metadata.resource_version, current);
                break;
            }
        }
    });
}

#[test]
fn a_compacted_resource_version_gets_410_gone() {
    let server = FakeApiServer::start(None, Options::default()).unwrap();
    server.apply(&node(1)).unwrap();
    runtime().block_on(async {
        let api: Api<Node> = Api::all(client(&server, None).await);
        let version = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        server.apply(&node(2)).unwrap();
        server.compact();
        let mut events = api
            .watch(&WatchParams::default(), &version)
            .await
            .unwrap()
            .boxed();
        match events.try_next().await.unwrap().unwrap() {
            WatchEvent::Error(status) => {
                assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            }
            other => panic!("want 410 Gone, got {other:?}"),
        }
        assert!(
            events.next().await.is_none(),
            "the stream ends after the error"
        );
        // Watching from the present still works.
        let now = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        server.apply(&node(3)).unwrap();
        let mut events = api
            .watch(&WatchParams::default(), &now)
            .await
            .unwrap()
            .boxed();
        assert_eq!(name(&events.try_next().await.unwrap().unwrap()).1, "node-3");
    });
    assert_eq!(server.stats().expired, 1);
}

#[test]
fn status_subresource_and_optimistic_concurrency() {
    let server = FakeApiServer::start(None, Options::default()).unwrap();
    runtime().block_on(async {
        let api: Api<Service> = Api::namespaced(client(&server, None).await, "shop");
        let service = fixtures::load_balancer("shop", "web", &[(80, 0)]);
        let created = api.create(&PostParams::default(), &service).await.unwrap();
        // What the real server fills in.
        let spec = created.spec.as_ref().unwrap();
        let port = &spec.ports.as_ref().unwrap()[0];
        assert!(
            (30000..=32767).contains(&port.node_port.unwrap()),
            "{port:?}"
        );
        assert!(spec.cluster_ip.is_some());
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
        assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
        let err = api
            .create(&PostParams::default(), &service)
            .await
            .unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
            "{err}"
        );

        let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}});
        let patched = api
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        assert_eq!(
            fixtures::ingress_ip(&patched),
            Some([198, 51, 100, 7].into())
        );
        assert_ne!(
            patched.metadata.resource_version,
            created.metadata.resource_version
        );

        // The main resource ignores status; the status subresource refuses a
        // stale resourceVersion.
        let mut replaced = patched.clone();
        replaced.status = None;
        replaced.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
        let replaced = api
            .replace("web", &PostParams::default(), &replaced)
            .await
            .unwrap();
        assert_eq!(
            fixtures::ingress_ip(&replaced),
            Some([198, 51, 100, 7].into())
        );
        let err = api
            .replace_status("web", &PostParams::default(), &patched)
            .await
            .unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
            "{err}"
        );

        let intruder: Api<Service> = Api::namespaced(client(&server, Some("wrong")).await, "shop");
        let err = intruder.get("web").await.unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 401),
            "{err}"
        );
    });
    let stats = server.stats();
    assert_eq!((stats.status_writes, stats.conflicts), (1, 1));
}
