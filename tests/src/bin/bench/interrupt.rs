//! Ctrl-C stops the benchmark at its next check instead of killing it, so the
//! guards (namespaces, agent, HAProxy, servers) unwind and clean up.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn install() {
    if let Err(e) = ctrlc::set_handler(|| {
        eprintln!("lb-bench: interrupted, cleaning up");
        INTERRUPTED.store(true, Ordering::SeqCst);
    }) {
        eprintln!(
            "lb-bench: cannot handle Ctrl-C ({e}); interrupting will leave namespaces behind"
        );
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once Ctrl-C was pressed; called between measurements.
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}
