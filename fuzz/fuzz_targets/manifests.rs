//! Arbitrary bytes as a manifest file, then translated into the desired state
//! as the agent would: whatever lands in the manifests (a bad edit, a broken
//! ConfigMap) may be skipped but must never panic, hang or crash the agent.
#![no_main]

use std::{fs, path::PathBuf, sync::OnceLock};

use lb::k8s::{Translator, load_path};
use libfuzzer_sys::fuzz_target;

/// A private directory for this process's input files: the loader reads
/// paths, so each input is written to a file first.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lb-fuzz-manifests-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("creating the scratch directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    // The loader picks its parser by extension: what looks like a JSON object
    // goes to a `.json` file, the rest to a `.yaml` one.
    let name = if data.starts_with(b"{") {
        "input.json"
    } else {
        "input.yaml"
    };
    let path = scratch().join(name);
    fs::write(&path, data).expect("writing the input file");
    if let Ok(loaded) = load_path(&path) {
        let _ = Translator::default().translate(&loaded.objects);
    }
});
