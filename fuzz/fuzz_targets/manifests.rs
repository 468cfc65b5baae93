//! Arbitrary bytes as a manifest file, then translated into the desired state
//! as the agent would: whatever lands in the manifests (a bad edit, a broken
//! ConfigMap) may be skipped but must never panic, hang or crash the agent.
#![no_main]

use std::path::Path;

use lb::k8s::{Translator, load_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The loader picks its parser by extension: what looks like a JSON object
    // is named as a `.json` file, the rest as a `.yaml` one.
    let origin = if data.starts_with(b"{") {
        "input.json"
    } else {
        "input.yaml"
    };
    let loaded = load_bytes(Path::new(origin), data);
    let _ = Translator::default().translate(&loaded.objects);
});
