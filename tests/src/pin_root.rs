//! A bpffs directory of a test's own, for an agent's or a `Dataplane`'s
//! pins, removed when dropped (also when the test fails); and maps pinned
//! there as earlier agents left them.

use std::{
    fs,
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::maps::{Map, MapData};

/// `bpf(2)`'s command and map types (uapi `linux/bpf.h`).
const BPF_MAP_CREATE: libc::c_long = 0;
pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
pub const BPF_MAP_TYPE_DEVMAP_HASH: u32 = 25;

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

/// Creates a map of an older layout's shape (keys `K`, values `V`) and pins
/// it at `dir/name`.
pub fn pin_old_map<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &str,
    map_type: u32,
    max_entries: u32,
    flags: u32,
) -> Map {
    let mut attr = [0u32; 32];
    attr[..5].copy_from_slice(&[
        map_type,
        size_of::<K>() as u32,
        size_of::<V>() as u32,
        max_entries,
        flags,
    ]);
    // SAFETY: BPF_MAP_CREATE with a zero-padded attribute block it may read.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE {name}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor nothing else owns.
    let map = MapData::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) }).expect("map");
    map.pin(dir.join(name)).expect("pin");
    Map::from_map_data(map).expect("map type")
}
