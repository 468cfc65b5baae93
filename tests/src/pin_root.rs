//! A bpffs directory of a test's own, for an agent's or a `Dataplane`'s
//! pins, removed when dropped (also when the test fails).

use std::{fs, path::PathBuf};

pub struct PinRoot(PathBuf);

impl PinRoot {
    /// `/sys/fs/bpf/lb-<name>-<pid>`, emptied of what an earlier run left.
    pub fn new(name: &str) -> Self {
        let root = PathBuf::from(format!("/sys/fs/bpf/lb-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        Self(root)
    }

    pub fn path(&self) -> &PathBuf {
        &self.0
    }

    /// Where layout `version` is pinned under the root.
    pub fn dir(&self, version: u32) -> PathBuf {
        self.0.join(format!("v{version}"))
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
