//! The REST protocol over HTTP/1.1: paths, verbs, list pages, watch streams
//! (chunked, one JSON event per line, with bookmarks and timeouts), errors as
//! `Status` objects, bearer-token authentication.

use std::{
    convert::Infallible,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::stream;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header,
};
use serde_json::{Value, json};
use tokio::{
    sync::mpsc,
    time::{MissedTickBehavior, interval, sleep},
};

use super::{
    kinds::Kind,
    objects::ApiError,
    rbac::{self, Authorizer},
    store::{Key, Store, WatchItem, event_line},
};

pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// What every connection shares.
pub struct Shared {
    pub store: Mutex<Store>,
    /// The bearer token clients must present.
    pub token: String,
    /// How often a watch that allows them gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// MetalLB's kinds exist.
    pub metallb_crds: AtomicBool,
    /// RBAC, when the server enforces it.
    pub authorizer: Option<Authorizer>,
    /// What RBAC refused, as the server said it.
    pub denied: Mutex<Vec<String>>,
}

impl Shared {
    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panicking test thread must not take the server down with it.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    Ok(match route(request, &shared).await {
        Ok(response) => response,
        Err(error) => json_response(
            StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &error.status(),
        ),
    })
}

/// A request path: `/api/v1/...` or `/apis/GROUP/VERSION/...`, then
/// `[namespaces/NS/]PLURAL[/NAME[/status]]`.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

impl Target {
    /// What the server answers for a resource it does not have.
    fn not_found(path: &str) -> ApiError {
        ApiError::unsupported(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    fn parse(path: &str) -> Result<Self, ApiError> {
        let not_found = || Self::not_found(path);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (api_version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ((*version).to_owned(), rest),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
            _ => return Err(not_found()),
        };
        let (namespace, rest) = match rest {
            ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
                (Some((*namespace).to_owned()), rest)
            }
            rest => (None, rest),
        };
        let (plural, name, status) = match rest {
            [plural] => (*plural, None, false),
            [plural, name] => (*plural, Some((*name).to_owned()), false),
            [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
            _ => return Err(not_found()),
        };
        let kind = Kind::from_path(&api_version, plural).ok_or_else(not_found)?;
        if (namespace.is_some() && !kind.namespaced())
            || (status && !kind.has_status())
            || (name.is_some() && kind.namespaced() && namespace.is_none())
        {
            return Err(not_found());
        }
        Ok(Self {
            kind,
            namespace,
            name,
            status,
        })
    }

    fn key(&self) -> Key {
        let name = self.name.clone().unwrap_or_default();
        (self.kind, self.namespace.clone().unwrap_or_default(), name)
    }
}

async fn route(
    request: Request<Incoming>,
    shared: &Arc<Shared>,
) -> Result<Response<Body>, ApiError> {
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == format!("Bearer {}", shared.token));
    if !authorized {
        return Err(ApiError::unsupported(401, "Unauthorized", "Unauthorized"));
    }
    let target = Target::parse(request.uri().path())?;
    if target.kind.is_metallb() && !shared.metallb_crds.load(Ordering::Relaxed) {
        return Err(Target::not_found(request.uri().path()));
    }
    let query = Query::parse(request.uri().query().unwrap_or_default())?;
    let method = request.method().clone();
    authorize(shared, &method, &target, query.watch)?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?
        .to_bytes();
    let ok = |object: Value| Ok(json_response(StatusCode::OK, &object));
    match (&method, target.name.is_some()) {
        (&Method::GET, false) if query.watch => Ok(watch(shared, &target, &query)),
        (&Method::GET, false) => ok(list(&mut shared.store(), &target, &query)?),
        (&Method::GET, true) => ok(shared.store().get(&target.key())?),
        (&Method::POST, false) => {
            let namespace = target.namespace.as_deref();
            if target.kind.namespaced() && namespace.is_none() {
                return Err(ApiError::bad_request("a namespace is required"));
            }
            let object =
                shared
                    .store()
                    .create(target.kind, namespace.unwrap_or_default(), parse(&body)?)?;
            Ok(json_response(StatusCode::CREATED, &object))
        }
        (&Method::PUT, true) => {
            ok(shared
                .store()
                .replace(&target.key(), parse(&body)?, target.status)?)
        }
        (&Method::PATCH, true) => {
            // Strategic merge is merge for the fields lb touches (no keyed lists).
            if !matches!(
                content_type.as_str(),
                "application/merge-patch+json" | "application/strategic-merge-patch+json"
            ) {
                return Err(ApiError::unsupported(
                    415,
                    "UnsupportedMediaType",
                    format!("the fake API server does not support {content_type:?} patches"),
                ));
            }
            ok(shared
                .store()
                .patch(&target.key(), &parse(&body)?, target.status)?)
        }
        (&Method::DELETE, true) => ok(shared.store().delete(&target.key())?),
        _ => Err(ApiError::unsupported(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        )),
    }
}

/// Refuses, 403 Forbidden, what RBAC does not grant, when it is enforced.
fn authorize(
    shared: &Shared,
    method: &Method,
    target: &Target,
    watch: bool,
) -> Result<(), ApiError> {
    let Some(authorizer) = &shared.authorizer else {
        return Ok(());
    };
    let verb = match (method, target.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, _) => "delete",
        // Refused further on as not supported.
        _ => return Ok(()),
    };
    let api_version = target.kind.api_version();
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let plural = target.kind.plural();
    let resource = match target.status {
        true => format!("{plural}/status"),
        false => plural.to_owned(),
    };
    let request = rbac::Request {
        verb,
        group,
        resource: &resource,
        namespace: target.namespace.as_deref(),
        name: target.name.as_deref(),
    };
    authorizer.check(&request).map_err(|message| {
        shared
            .denied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(message.clone());
        ApiError::unsupported(403, "Forbidden", message)
    })
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// The query parameters the fake understands.
#[derive(Default)]
struct Query {
    watch: bool,
    resource_version: Option<String>,
    bookmarks: bool,
    timeout: Option<Duration>,
    limit: Option<usize>,
    continue_token: Option<String>,
}

impl Query {
    fn parse(text: &str) -> Result<Self, ApiError> {
        let mut query = Self::default();
        for pair in text.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            let number = |value: &str| {
                value
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("{key}={value:?} is not a number")))
            };
            match key {
                "watch" => query.watch = value == "true" || value == "1",
                "resourceVersion" => query.resource_version = Some(value),
                "allowWatchBookmarks" => query.bookmarks = value == "true",
                "timeoutSeconds" => query.timeout = Some(Duration::from_secs(number(&value)?)),
                "limit" => query.limit = Some(number(&value)? as usize).filter(|&limit| limit > 0),
                "continue" => query.continue_token = Some(value).filter(|token| !token.is_empty()),
                "labelSelector" | "fieldSelector" if !value.is_empty() => {
                    return Err(ApiError::bad_request(format!(
                        "the fake API server does not support {key}"
                    )));
                }
                _ => {}
            }
        }
        Ok(query)
    }

    /// The revision to watch from; `None` for "0" or unset (from now, with the
    /// current objects first).
    fn since(&self) -> Result<Option<u64>, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("" | "0") => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {text:?}"))),
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = || std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok();
        match (
            bytes[index],
            hex().and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(byte)) => {
                out.push(byte);
                index += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                index += 1;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One page of a list. The continue token names the revision of the first
/// page and the namespace and name of the last object served, so later pages
/// go on after it.
fn list(store: &mut Store, target: &Target, query: &Query) -> Result<Value, ApiError> {
    store.stats.lists += 1;
    let (revision, after) = match &query.continue_token {
        None => (store.revision(), None),
        Some(token) => {
            let invalid = || ApiError::bad_request("invalid continue token");
            let (revision, key) = token.split_once('/').ok_or_else(invalid)?;
            let revision = revision.parse::<u64>().map_err(|_| invalid())?;
            if revision < store.oldest() {
                return Err(ApiError::unsupported(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                ));
            }
            (revision, Some(key.split_once('/').ok_or_else(invalid)?))
        }
    };
    let limit = query.limit.unwrap_or(usize::MAX);
    let (mut items, more) = store.page(target.kind, target.namespace.as_deref(), after, limit);
    let mut metadata = json!({ "resourceVersion": revision.to_string() });
    if more && let Some(last) = items.last() {
        let last = &last["metadata"];
        let (namespace, name) = (last["namespace"].as_str(), last["name"].as_str());
        metadata["continue"] = json!(format!(
            "{revision}/{}/{}",
            namespace.unwrap_or_default(),
            name.unwrap_or_default()
        ));
    }
    // Items of a typed list carry no apiVersion or kind.
    for item in &mut items {
        if let Some(map) = item.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
        }
    }
    Ok(json!({
        "kind": format!("{}List", target.kind.name()),
        "apiVersion": target.kind.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

/// A watch stream: history since the requested revision, then live events,
/// with bookmarks when allowed, until the timeout, the client leaving or a
/// test dropping it.
fn watch(shared: &Arc<Shared>, target: &Target, query: &Query) -> Response<Body> {
    let since = match query.since() {
        Ok(since) => since,
        Err(error) => return json_response(StatusCode::BAD_REQUEST, &error.status()),
    };
    let mut events = shared
        .store()
        .watch(target.kind, target.namespace.as_deref(), since);
    let (frames, body) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(64);
    let shared = Arc::clone(shared);
    let kind = target.kind;
    let bookmarks = query.bookmarks;
    // The real server's default is a random 30 to 60 minutes.
    let timeout = query.timeout.unwrap_or(Duration::from_secs(1800));
    tokio::spawn(async move {
        let deadline = sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = interval(shared.bookmark_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            let items = tokio::select! {
                item = events.recv() => match item {
                    Some(item) => vec![item],
                    None => return,
                },
                _ = ticker.tick(), if bookmarks => bookmark(&shared, kind, &mut events),
                () = &mut deadline => return,
                () = frames.closed() => return,
            };
            for item in items {
                let frame = match item {
                    WatchItem::Line(line) => Ok(Frame::data(line)),
                    WatchItem::Abort => Err(io::Error::other("watch connection dropped")),
                };
                let abort = frame.is_err();
                if frames.send(frame).await.is_err() || abort {
                    return;
                }
            }
        }
    });
    let body = StreamBody::new(stream::unfold(body, |mut body| async move {
        body.recv().await.map(|frame| (frame, body))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(UnsyncBoxBody::new(body))
        .expect("a valid response")
}

/// The events queued so far, then a BOOKMARK at the current revision. Read
/// under the store's lock, so no event older than the bookmark can follow it.
fn bookmark(
    shared: &Shared,
    kind: Kind,
    events: &mut mpsc::UnboundedReceiver<WatchItem>,
) -> Vec<WatchItem> {
    let store = shared.store();
    let mut items = Vec::new();
    while let Ok(item) = events.try_recv() {
        items.push(item);
    }
    let object = json!({
        "kind": kind.name(),
        "apiVersion": kind.api_version(),
        "metadata": { "resourceVersion": store.revision().to_string() },
    });
    items.push(WatchItem::Line(event_line("BOOKMARK", &object)));
    items
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("JSON values serialize");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(bytes))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("a valid response")
}
