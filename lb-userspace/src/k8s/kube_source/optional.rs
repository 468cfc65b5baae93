//! Kinds a cluster may not have or lb may not be allowed to read: MetalLB's
//! configuration without MetalLB's CRDs installed, Namespaces and Secrets
//! under an older RBAC. A kind whose list is answered 404 Not Found or 403
//! Forbidden counts as ready with no objects (else the first sync would
//! wait for it forever); the watch keeps trying with kube's backoff (at most
//! 30 s apart), so a CRD installed or a permission granted later is picked
//! up. Objects are read untyped and converted one by one, so a malformed
//! one is skipped with its reason instead of failing the whole list. A kind
//! once read that is refused later (a CRD replaced by an upgrade, an API
//! server restarting) keeps its last list: reading it as none would withdraw
//! every route and address it configures for a moment's error.

use std::{fmt::Display, sync::Arc};

use futures::{StreamExt as _, future};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    api::{ApiResource, DynamicObject},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{info, warn};

/// Where a kind is read from.
pub enum Scope<'a> {
    Cluster,
    Namespace(&'a str),
}

/// A reflector of one kind that tolerates its absence.
pub struct OptionalKind {
    resource: ApiResource,
    store: Store<DynamicObject>,
    /// The last list was refused (404, 403): the kind reads as empty.
    missing: watch::Receiver<bool>,
}

impl OptionalKind {
    /// Starts watching `K` in `scope`; `changed` is bumped on every change,
    /// and when the kind turns out to be missing.
    pub fn start<K: Resource<DynamicType = ()>>(
        client: Client,
        scope: Scope<'_>,
        changed: watch::Sender<()>,
    ) -> Self {
        let resource = ApiResource::erase::<K>(&());
        let api = match scope {
            Scope::Cluster => Api::all_with(client, &resource),
            Scope::Namespace(namespace) => Api::namespaced_with(client, namespace, &resource),
        };
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let (missing_tx, missing) = watch::channel(false);
        let what = match scope {
            Scope::Cluster => resource.plural.clone(),
            Scope::Namespace(namespace) => format!("{} in {namespace}", resource.plural),
        };
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        let mut read_once = false;
        tokio::spawn(stream.for_each(move |event| {
            match event {
                // The start of a list, which may still be refused.
                Ok(watcher::Event::Init) => {}
                Ok(event) => {
                    read_once |= matches!(event, watcher::Event::InitDone);
                    if missing_tx.send_replace(false) {
                        info!(kind = %what, "readable now");
                    }
                    // A list in progress: the store changes at InitDone.
                    if !matches!(event, watcher::Event::InitApply(_)) {
                        changed.send_replace(());
                    }
                }
                Err(error) => match refusal(&error) {
                    Some(code) if read_once => warn!(
                        kind = %what,
                        code,
                        "refused after it was read; keeping the last list, retrying"
                    ),
                    Some(code) => {
                        if !missing_tx.send_replace(true) {
                            say_missing(&what, code);
                            changed.send_replace(());
                        }
                    }
                    None => warn!(kind = %what, %error, "watch failed; retrying"),
                },
            }
            future::ready(())
        }));
        Self {
            resource,
            store,
            missing,
        }
    }

    /// Until the first list is in, or the kind turned out to be missing.
    pub async fn ready(&self) {
        let mut missing = self.missing.clone();
        tokio::select! {
            _ = self.store.wait_until_ready() => {}
            _ = missing.wait_for(|missing| *missing) => {}
        }
    }

    /// The objects as `K`, through `convert`; what does not convert is
    /// skipped, its reason (naming the object) added to `skipped`.
    pub fn objects<K>(
        &self,
        convert: impl Fn(serde_json::Value) -> Result<K, serde_json::Error>,
        skipped: &mut Vec<String>,
    ) -> Vec<Arc<K>> {
        if *self.missing.borrow() {
            return Vec::new();
        }
        let mut objects = Vec::new();
        for object in self.store.state() {
            let converted = serde_json::to_value(&*object).and_then(&convert);
            match converted {
                Ok(typed) => objects.push(Arc::new(typed)),
                Err(error) => skipped.push(format!(
                    "{} {}/{}: {error}",
                    self.resource.kind,
                    object.namespace().unwrap_or_default(),
                    object.name_any()
                )),
            }
        }
        objects
    }
}

/// The HTTP code of a list the server refused for good (no such resource,
/// not allowed), rather than failed for the moment.
fn refusal(error: &watcher::Error) -> Option<u16> {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
            if status.code == 404 || status.code == 403 =>
        {
            Some(status.code)
        }
        _ => None,
    }
}

fn say_missing(what: &impl Display, code: u16) {
    if code == 404 {
        info!(kind = %what, "not on this API server (CRD not installed): read as none");
    } else {
        warn!(
            kind = %what,
            "not allowed to list (RBAC: see examples/kubernetes/rbac.yaml): read as none"
        );
    }
}

/// A core object (Namespace, Secret) from its JSON form.
pub fn core<K: DeserializeOwned>(value: serde_json::Value) -> Result<K, serde_json::Error> {
    serde_json::from_value(value)
}
