//! Pinned state under bpffs: the maps and the XDP links outlive the agent, so a
//! restart or an upgrade keeps flows, Maglev tables and counters, and packets
//! keep flowing while no agent runs.
//!
//! Layout: `<bpffs>/v<LAYOUT_VERSION>/<MAP>` for every map and
//! `<bpffs>/v<LAYOUT_VERSION>/link-<iface>` for every attached interface.
//! State of layout [`UPGRADES_FROM`] is upgraded by the agent when it starts
//! (`dataplane::upgrade`); any other layout is refused.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use lb_common::LAYOUT_VERSION;

/// The older layout an agent upgrades in place: the one just before this.
pub const UPGRADES_FROM: u32 = LAYOUT_VERSION - 1;

#[derive(thiserror::Error, Debug)]
pub enum PinsError {
    #[error(
        "{} holds pinned state of map layout v{found}, this lb uses v{LAYOUT_VERSION}: \
         stop the old agent and run `lb down --bpffs {}` with the old lb (flows are lost), \
         or use another --bpffs directory",
        root.display(), root.display()
    )]
    OtherLayout { root: PathBuf, found: String },
    #[error(
        "{} holds pinned state of map layout v{UPGRADES_FROM} (an older lb), this lb uses \
         v{LAYOUT_VERSION}: start this lb's agent, which upgrades it in place keeping flows, or \
         read it with the older lb",
        root.display()
    )]
    NotUpgradedYet { root: PathBuf },
    #[error(
        "{} is not on a bpffs{}: mount one (`mount -t bpf bpf {}`) or point --bpffs at a \
         directory on a bpffs mounted elsewhere",
        root.display(), nearest_note(root, dir), dir.display()
    )]
    NotBpffs {
        root: PathBuf,
        /// The directory looked at: the root, or its nearest existing ancestor.
        dir: PathBuf,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Names the ancestor that was looked at when the root does not exist yet.
fn nearest_note(root: &Path, dir: &Path) -> String {
    if root == dir {
        String::new()
    } else {
        format!(" (nor is {}, where it would be created)", dir.display())
    }
}

/// Fails unless `root`, or while it does not exist its nearest existing
/// ancestor, lies on a bpffs. Elsewhere pinning fails with a confusing error
/// or none at all: `ip netns exec` and containers mount their own `/sys`, on
/// which `/sys/fs/bpf` is a plain sysfs directory. [`PinDir::check_layout`]
/// runs it for everything that touches pins; commands that only name their
/// agent by `--bpffs` call it themselves.
pub fn check_bpffs(root: &Path) -> Result<(), PinsError> {
    let mut dir = root;
    loop {
        match statfs_type(dir) {
            Ok(kind) if kind == libc::BPF_FS_MAGIC => return Ok(()),
            Ok(_) => {
                return Err(PinsError::NotBpffs {
                    root: root.to_owned(),
                    dir: dir.to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                dir = match dir.parent() {
                    Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
                    Some(parent) => parent,
                    None => return Ok(()),
                };
            }
            // Not ours to judge (no permission to look, say): the operation
            // that follows reports it in its own words.
            Err(_) => return Ok(()),
        }
    }
}

/// The file system type (`f_type`) of the file system `path` lies on.
fn statfs_type(path: &Path) -> io::Result<libc::__fsword_t> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: all-zero bytes are a valid statfs (integers only).
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `stat` is a valid statfs to write.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type)
}

/// What an interface's name follows in the name of its link's pin.
const LINK_PIN_PREFIX: &str = "link-";

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

    /// Directory of the layout the agent upgrades ([`UPGRADES_FROM`]).
    pub fn upgradable_state(&self) -> PathBuf {
        self.root.join(format!("v{UPGRADES_FROM}"))
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.state().join(name)
    }

    pub fn link(&self, iface: &str) -> PathBuf {
        self.state().join(format!("{LINK_PIN_PREFIX}{iface}"))
    }

    /// Makes sure the state directory exists. The agent calls it once it
    /// has checked the layouts ([`Self::check_known_layouts`]) and upgraded
    /// what it found.
    pub fn create_state_dir(&self) -> Result<(), PinsError> {
        let state = self.state();
        fs::create_dir_all(&state).map_err(|source| PinsError::Io {
            path: state,
            source,
        })
    }

    /// Fails when the root does not lie on a bpffs or holds state of another
    /// layout version, or only state the agent has yet to upgrade.
    /// Everything that reads pinned state (the inspection commands, the
    /// metrics) passes here first, so each says the same when the root is
    /// no bpffs.
    pub fn check_layout(&self) -> Result<(), PinsError> {
        self.check_known_layouts()?;
        if self.upgradable_state().is_dir() && !self.exists() {
            return Err(PinsError::NotUpgradedYet {
                root: self.root.clone(),
            });
        }
        Ok(())
    }

    /// Fails when the root does not lie on a bpffs or holds state of a
    /// layout this lb neither uses nor upgrades. Enough for `lb down`, which
    /// removes the state of both.
    pub fn check_known_layouts(&self) -> Result<(), PinsError> {
        check_bpffs(&self.root)?;
        let known = [LAYOUT_VERSION, UPGRADES_FROM].map(|version| format!("v{version}"));
        for entry in entries(&self.root)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('v') && name[1..].parse::<u32>().is_ok() && !known.contains(&name) {
                return Err(PinsError::OtherLayout {
                    root: self.root.clone(),
                    found: name[1..].to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Removes the pins of the maps `names` from the state directory, where
    /// they exist.
    pub fn remove_maps(&self, names: &[&str]) -> Result<(), PinsError> {
        for name in names {
            let path = self.map(name);
            match fs::remove_file(&path) {
                Err(source) if source.kind() != io::ErrorKind::NotFound => {
                    return Err(PinsError::Io { path, source });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes the pinned links of interfaces other than `kept`, which
    /// detaches the program from them; returns those interfaces' names.
    pub fn remove_links_except(&self, kept: &[String]) -> Result<Vec<String>, PinsError> {
        let mut removed = Vec::new();
        for entry in entries(&self.state())? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(iface) = name.strip_prefix(LINK_PIN_PREFIX) else {
                continue;
            };
            if kept.iter().any(|kept| kept == iface) {
                continue;
            }
            let path = entry.path();
            fs::remove_file(&path).map_err(|source| PinsError::Io { path, source })?;
            removed.push(iface.to_owned());
        }
        Ok(removed)
    }

    /// Whether an agent ever pinned state here.
    pub fn exists(&self) -> bool {
        self.state().is_dir()
    }

    /// Removes every pin, of this layout and of one not yet upgraded: links
    /// first (detaching the program from interfaces no process holds it on),
    /// then maps. Returns what was removed.
    pub fn remove(&self) -> Result<Vec<PathBuf>, PinsError> {
        let mut removed = remove_dir_pins(&self.upgradable_state())?;
        removed.extend(remove_dir_pins(&self.state())?);
        // Only an empty root goes: another layout's state stays.
        let _ = fs::remove_dir(&self.root);
        Ok(removed)
    }
}

/// Removes the pins in `state`, links first, then the directory.
fn remove_dir_pins(state: &Path) -> Result<Vec<PathBuf>, PinsError> {
    let mut removed = Vec::new();
    let mut paths: Vec<PathBuf> = entries(state)?.iter().map(|e| e.path()).collect();
    // Links before maps: the program stops seeing packets before its maps go.
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(LINK_PIN_PREFIX))
    });
    for path in paths {
        fs::remove_file(&path).map_err(|source| PinsError::Io {
            path: path.clone(),
            source,
        })?;
        removed.push(path);
    }
    let _ = fs::remove_dir(state);
    Ok(removed)
}

/// The entries of `dir`, none when it does not exist. One that cannot be
/// read is an error, not an empty directory: a user without privileges is
/// told so, not that nothing is pinned.
fn entries(dir: &Path) -> Result<Vec<fs::DirEntry>, PinsError> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(PinsError::Io {
            path: dir.to_owned(),
            source,
        }),
    }
}
