//! The agent: loads and attaches the data path, then keeps it in step with the
//! manifests until SIGINT or SIGTERM.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    dataplane::{Dataplane, DataplaneConfig},
    k8s::{self, translate},
    reconcile,
    vip_pool::VipPool,
};

/// How often the manifests are checked for changes.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

pub struct AgentOptions {
    pub interfaces: Vec<String>,
    pub manifests: PathBuf,
    pub vip_pool: Option<VipPool>,
    pub dataplane: DataplaneConfig,
}

pub async fn run(mut options: AgentOptions) -> Result<()> {
    let mut dataplane = Dataplane::load(options.dataplane.clone())?;
    let result = match attach_all(&mut dataplane, &options.interfaces) {
        Ok(()) => serve(&mut dataplane, &mut options).await,
        Err(e) => Err(e),
    };
    dataplane.unpin();
    drop(dataplane);
    info!("detached");
    result
}

fn attach_all(dataplane: &mut Dataplane, interfaces: &[String]) -> Result<()> {
    for iface in interfaces {
        let ifindex = dataplane.attach(iface)?;
        info!(iface, ifindex, "XDP program attached");
    }
    Ok(())
}

async fn serve(dataplane: &mut Dataplane, options: &mut AgentOptions) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    let mut seen = None;
    loop {
        let forced = tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            _ = hangup.recv() => true,
            _ = ticker.tick() => false,
        };
        let fingerprint = fingerprint(&options.manifests);
        if !forced && seen.as_ref() == Some(&fingerprint) {
            continue;
        }
        seen = Some(fingerprint);
        sync(dataplane, options);
    }
}

/// Reads the manifests and applies them. A source that cannot be read leaves the
/// data path as it is: the last good state keeps serving.
fn sync(dataplane: &mut Dataplane, options: &mut AgentOptions) {
    let loaded = match k8s::manifests::load_path(&options.manifests) {
        Ok(loaded) => loaded,
        Err(e) => {
            warn!(error = %e, "manifests not applied; keeping the last good state");
            return;
        }
    };
    let translation = translate::translate(&loaded.objects, options.vip_pool.as_mut());
    let report = reconcile::apply(dataplane, &translation.state);
    info!(
        services = translation.state.services.len(),
        added = report.added.len(),
        updated = report.updated.len(),
        removed = report.removed.len(),
        failed = report.failed.len(),
        "synced"
    );
}

/// Names, sizes and modification times of the manifest file or directory: a
/// cheap way to notice edits without inotify.
fn fingerprint(path: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let entries: Vec<PathBuf> = match std::fs::read_dir(path) {
        Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => vec![path.to_owned()],
    };
    let mut print: Vec<_> = entries
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect();
    print.sort();
    print
}
