//! Where an agent's runtime files live (tmpfs: gone after a reboot, like the
//! pins): under `/run/lb`, named after its `--bpffs`, so that agents with
//! different `--bpffs` (in different network namespaces) share no file.

use std::path::{Component, Path, PathBuf};

pub const RUN_ROOT: &str = "/run/lb";

/// `--bpffs` as a file name: `/sys/fs/bpf/lb` becomes `sys-fs-bpf-lb`. Any
/// spelling of one directory gives one name (`lb` in `/sys/fs/bpf`,
/// `/sys/fs/bpf//lb/`, a symbolic link to it), so the agent and the CLI
/// find the same files whichever the operator typed.
pub fn name(bpffs: &Path) -> String {
    resolved(bpffs)
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| if c == '/' { '-' } else { c })
        .collect()
}

/// `path` made absolute, its longest existing part with symbolic links,
/// `.` and `..` resolved (the rest, which the agent has yet to make,
/// rid of `.` and repeated `/`).
fn resolved(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let normal = rest.into_iter().rev().filter(|c| *c != Component::CurDir);
            return real.join(normal.collect::<PathBuf>());
        }
        let (Some(parent), Some(last)) = (existing.parent(), existing.components().next_back())
        else {
            return path.components().collect();
        };
        rest.push(last);
        existing = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
    }
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

    #[test]
    fn every_spelling_of_a_directory_has_its_name() {
        let base = std::env::temp_dir().join(format!("lb-rundir-{}", std::process::id()));
        let real = base.join("real");
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(&real, base.join("link")).unwrap();
        let want = name(&real.join("lb"));
        let names: Vec<String> = ["link/lb", "real//./lb/", "link/../real/lb"]
            .iter()
            .map(|spelling| name(&base.join(spelling)))
            .collect();
        std::fs::remove_dir_all(&base).unwrap();
        assert!(names.iter().all(|n| *n == want), "{names:?}, not {want}");
        assert!(want.ends_with("-real-lb"), "{want}");
    }
}
