//! The agent: loads and attaches the data path, then keeps it in step with its
//! source of Kubernetes objects until SIGINT or SIGTERM.

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    dataplane::{Dataplane, DataplaneConfig},
    k8s::{source::Source, translate},
    reconcile,
    vip_pool::VipPool,
};

pub struct AgentOptions {
    pub interfaces: Vec<String>,
    pub source: Source,
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
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            _ = hangup.recv() => options.source.refresh(),
            objects = options.source.changed() => match objects {
                Ok(objects) => sync(dataplane, options, &objects).await,
                // The last good state keeps serving.
                Err(e) => warn!(error = %e, "source not read; keeping the last good state"),
            },
        }
    }
}

/// Translates the objects and applies the result to the data path.
async fn sync(
    dataplane: &mut Dataplane,
    options: &mut AgentOptions,
    objects: &crate::k8s::ClusterObjects,
) {
    let translation = translate::translate(objects, options.vip_pool.as_mut());
    let report = reconcile::apply(dataplane, &translation.state);
    info!(
        services = translation.state.services.len(),
        added = report.added.len(),
        updated = report.updated.len(),
        removed = report.removed.len(),
        failed = report.failed.len(),
        "synced"
    );
    options.source.report(&translation).await;
}
