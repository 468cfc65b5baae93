//! The fake API server's storage: objects as JSON with one resourceVersion
//! counter (etcd's revision), a bounded history of changes for watches to
//! resume from (the watch cache), and the watches themselves.

use std::{
    collections::{BTreeMap, VecDeque},
    ops::Bound,
};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{
    kinds::Kind,
    objects::{self, Allocations, ApiError},
};

/// Where an object lives: its kind, namespace ("" when cluster-scoped), name.
pub type Key = (Kind, String, String);

/// One change, as watches see it.
struct Change {
    revision: u64,
    key: Key,
    /// The watch event, as sent.
    line: Bytes,
}

/// What a watch's connection gets next.
pub enum WatchItem {
    /// One newline-terminated JSON event.
    Line(Bytes),
    /// Abort the connection mid-stream, as a crashing server or a broken
    /// network would.
    Abort,
}

struct Watcher {
    kind: Kind,
    namespace: Option<String>,
    tx: UnboundedSender<WatchItem>,
}

/// Counters tests look at to see which paths of the protocol were taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub lists: u64,
    pub watches: u64,
    /// Watches answered with 410 Gone (an expired resourceVersion).
    pub expired: u64,
    /// Successful writes to a status subresource.
    pub status_writes: u64,
    /// Writes refused with 409 Conflict.
    pub conflicts: u64,
    /// Events created (a repeat of one is a patch, not counted).
    pub events_created: u64,
}

pub struct Store {
    revision: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    history_limit: usize,
    /// The history holds every change after this revision: a watch from an
    /// older one cannot be served (410 Gone).
    oldest: u64,
    watchers: Vec<Watcher>,
    allocations: Allocations,
    pub stats: Stats,
}

impl Store {
    pub fn new(history_limit: usize, allocations: Allocations) -> Self {
        Self {
            revision: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit,
            oldest: 1,
            watchers: Vec::new(),
            allocations,
            stats: Stats::default(),
        }
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    pub fn get(&self, key: &Key) -> Result<Value, ApiError> {
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(key))
    }

    /// Objects of `kind` (in `namespace`, or all), sorted by namespace and name.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        self.page(kind, namespace, None, usize::MAX).0
    }

    /// At most `limit` objects of `kind` (in `namespace`, or all) that sort
    /// after `after` (namespace, name), and whether more follow. Read as a
    /// range of the key order, so that a page costs what it holds, as it does
    /// in etcd, and listing a large collection page by page stays linear.
    pub fn page(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> (Vec<Value>, bool) {
        let start = match after {
            Some((ns, name)) => Bound::Excluded((kind, ns.to_owned(), name.to_owned())),
            None => Bound::Included((
                kind,
                namespace.unwrap_or_default().to_owned(),
                String::new(),
            )),
        };
        let mut matching = self
            .objects
            .range((start, Bound::Unbounded))
            .take_while(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
            .map(|(_, object)| object);
        let page: Vec<Value> = matching.by_ref().take(limit).cloned().collect();
        (page, matching.next().is_some())
    }

    pub fn create(
        &mut self,
        kind: Kind,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let name = objects::prepare_create(kind, namespace, &mut object)?;
        let key = (kind, namespace.to_owned(), name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&key));
        }
        self.allocations.admit(kind, &mut object, None)?;
        if kind == Kind::Event {
            self.stats.events_created += 1;
        }
        Ok(self.commit(key, "ADDED", object))
    }

    /// A PUT: the whole object, or with `status` only its status. A
    /// resourceVersion in `object` must be the current one.
    pub fn replace(
        &mut self,
        key: &Key,
        mut object: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        let old = self
            .objects
            .get(key)
            .ok_or_else(|| ApiError::not_found(key))?;
        if let Some(version) = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && version != old["metadata"]["resourceVersion"]
        {
            self.stats.conflicts += 1;
            return Err(ApiError::conflict(key));
        }
        objects::prepare_update(key.0, old, &mut object, status)?;
        if !status {
            self.allocations.admit(key.0, &mut object, Some(old))?;
        }
        if objects::same(old, &mut object) {
            return Ok(object);
        }
        if status {
            self.stats.status_writes += 1;
        }
        Ok(self.commit(key.clone(), "MODIFIED", object))
    }

    /// A JSON merge patch (RFC 7386) of the object or of its status.
    pub fn patch(&mut self, key: &Key, patch: &Value, status: bool) -> Result<Value, ApiError> {
        let mut object = self.get(key)?;
        // The stored version, unless the patch asks for one (a precondition).
        merge(&mut object, patch);
        self.replace(key, object, status)
    }

    pub fn delete(&mut self, key: &Key) -> Result<Value, ApiError> {
        let object = self
            .objects
            .remove(key)
            .ok_or_else(|| ApiError::not_found(key))?;
        self.allocations.release(key.0, &object);
        Ok(self.commit(key.clone(), "DELETED", object))
    }

    /// Stores `object` (or, for DELETED, only records it) under a new revision
    /// and tells the watches.
    fn commit(&mut self, key: Key, type_: &'static str, mut object: Value) -> Value {
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        if type_ != "DELETED" {
            self.objects.insert(key.clone(), object.clone());
        }
        let line = event_line(type_, &object);
        self.watchers.retain(|watcher| {
            !watcher.matches(&key) || watcher.tx.send(WatchItem::Line(line.clone())).is_ok()
        });
        self.history.push_back(Change {
            revision: self.revision,
            key,
            line,
        });
        while self.history.len() > self.history_limit {
            let dropped = self.history.pop_front().expect("history is not empty");
            self.oldest = dropped.revision;
        }
        object
    }

    /// Starts a watch of `kind` from `since` (`None`: from now, with an ADDED
    /// event per existing object first, as for resourceVersion "0").
    pub fn watch(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        since: Option<u64>,
    ) -> UnboundedReceiver<WatchItem> {
        self.stats.watches += 1;
        let (tx, rx) = unbounded_channel();
        let watcher = Watcher {
            kind,
            namespace: namespace.map(str::to_owned),
            tx,
        };
        let backlog: Vec<Bytes> = match since {
            Some(since) if since < self.oldest => {
                self.stats.expired += 1;
                let status = ApiError::expired(since, self.oldest).status();
                // The real server answers 200 and sends one ERROR event.
                let _ = watcher
                    .tx
                    .send(WatchItem::Line(event_line("ERROR", &status)));
                return rx;
            }
            Some(since) => self
                .history
                .iter()
                .filter(|change| change.revision > since && watcher.matches(&change.key))
                .map(|change| change.line.clone())
                .collect(),
            None => self
                .list(kind, namespace)
                .iter()
                .map(|object| event_line("ADDED", object))
                .collect(),
        };
        for line in backlog {
            let _ = watcher.tx.send(WatchItem::Line(line));
        }
        self.watchers.push(watcher);
        rx
    }

    /// Forgets the history: every watch must resume from now on, or get 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest = self.revision;
    }

    /// Aborts every watch connection.
    pub fn drop_watches(&mut self) {
        for watcher in self.watchers.drain(..) {
            let _ = watcher.tx.send(WatchItem::Abort);
        }
    }
}

impl Watcher {
    fn matches(&self, (kind, namespace, _): &Key) -> bool {
        *kind == self.kind && self.namespace.as_ref().is_none_or(|n| n == namespace)
    }
}

pub fn event_line(type_: &str, object: &Value) -> Bytes {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        type_: &'a str,
        object: &'a Value,
    }
    let mut line = serde_json::to_vec(&Event { type_, object }).expect("JSON values serialize");
    line.push(b'\n');
    Bytes::from(line)
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` deletes,
/// anything else (lists included) replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().expect("made an object above");
    for (key, value) in fields {
        if value.is_null() {
            map.remove(key);
        } else {
            merge(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge(
            &mut target,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            target,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
    }
}
