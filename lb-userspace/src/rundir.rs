//! Where an agent's runtime files live (tmpfs: gone after a reboot, like the
//! pins): under `/run/lb`, named after its `--bpffs`, so that agents with
//! different `--bpffs` (in different network namespaces) share no file.

use std::path::{Path, PathBuf};

pub const RUN_ROOT: &str = "/run/lb";

/// `--bpffs` as a file name: `/sys/fs/bpf/lb` becomes `sys-fs-bpf-lb`.
pub fn name(bpffs: &Path) -> String {
    bpffs
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| if c == '/' { '-' } else { c })
        .collect()
}

/// The directory of the agent pinning under `bpffs` (BIRD's files).
pub fn dir(bpffs: &Path) -> PathBuf {
    Path::new(RUN_ROOT).join(name(bpffs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_bpffs_path() {
        assert_eq!(name(Path::new("/sys/fs/bpf/lb")), "sys-fs-bpf-lb");
        assert_eq!(
            dir(Path::new("/mnt/bpf/lb-2/")),
            Path::new("/run/lb/mnt-bpf-lb-2")
        );
    }
}
