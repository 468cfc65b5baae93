//! Pinned state under bpffs: the maps and the XDP links outlive the agent, so a
//! restart or an upgrade keeps flows, Maglev tables and counters, and packets
//! keep flowing while no agent runs.
//!
//! Layout: `<bpffs>/v<LAYOUT_VERSION>/<MAP>` for every map and
//! `<bpffs>/v<LAYOUT_VERSION>/link-<iface>` for every attached interface.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use lb_common::LAYOUT_VERSION;

#[derive(thiserror::Error, Debug)]
pub enum PinsError {
    #[error(
        "{} holds pinned state of map layout v{found}, this lb uses v{LAYOUT_VERSION}: \
         stop the old agent and run `lb down --bpffs {}` with the old lb (flows are lost), \
         or use another --bpffs directory",
        root.display(), root.display()
    )]
    OtherLayout { root: PathBuf, found: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The pinned-state directory of one `--bpffs` root.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of the current layout.
    pub fn state(&self) -> PathBuf {
        self.root.join(format!("v{LAYOUT_VERSION}"))
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.state().join(name)
    }

    pub fn link(&self, iface: &str) -> PathBuf {
        self.state().join(format!("link-{iface}"))
    }

    /// Fails when state of another layout is pinned under the root; otherwise
    /// makes sure the state directory exists.
    pub fn prepare(&self) -> Result<(), PinsError> {
        self.check_layout()?;
        let state = self.state();
        fs::create_dir_all(&state).map_err(|source| PinsError::Io {
            path: state,
            source,
        })
    }

    /// Fails when the root holds state of another layout version.
    pub fn check_layout(&self) -> Result<(), PinsError> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Ok(());
        };
        let current = format!("v{LAYOUT_VERSION}");
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('v') && name[1..].parse::<u32>().is_ok() && name != current {
                return Err(PinsError::OtherLayout {
                    root: self.root.clone(),
                    found: name[1..].to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Whether an agent ever pinned state here.
    pub fn exists(&self) -> bool {
        self.state().is_dir()
    }

    /// Removes every pin: links first (detaching the program from interfaces
    /// no process holds it on), then maps. Returns what was removed.
    pub fn remove(&self) -> Result<Vec<PathBuf>, PinsError> {
        let state = self.state();
        let mut removed = Vec::new();
        let Ok(entries) = fs::read_dir(&state) else {
            return Ok(removed);
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        // Links before maps: the program stops seeing packets before its maps go.
        paths.sort_by_key(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("link-"))
        });
        for path in paths {
            fs::remove_file(&path).map_err(|source| PinsError::Io {
                path: path.clone(),
                source,
            })?;
            removed.push(path);
        }
        for dir in [state, self.root.clone()] {
            // Only empty directories go: another layout's state stays.
            let _ = fs::remove_dir(dir);
        }
        Ok(removed)
    }
}
