//! Forwards the XDP program's aya-log records to the agent's log, at debug
//! level only: they describe single packets, which is noise unless debugging.

use std::io;

use aya_log::EbpfLogger;
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::JoinHandle,
};

use crate::dataplane::Dataplane;

struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        tracing::enabled!(target: "lb::xdp", tracing::Level::DEBUG)
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::debug!(target: "lb::xdp", level = %record.level(), "{}", record.args());
    }

    fn flush(&self) {}
}

/// Starts forwarding; the task ends when the runtime does.
pub fn spawn(dataplane: &mut Dataplane) -> io::Result<JoinHandle<()>> {
    let logger =
        EbpfLogger::init_with_logger(dataplane.ebpf_mut(), ToTracing).map_err(io::Error::other)?;
    // SAFETY: the logger owns its ring buffer's descriptor for its whole life
    // and always returns that same descriptor.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    Ok(tokio::spawn(async move {
        while let Ok(mut ready) = logger.readable_mut().await {
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    }))
}
