//! Checks a built .deb the way a user meets it: its control fields and
//! files, the installed binary, and the systemd unit.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::util::{self, cmd};

/// Files the package must install.
const FILES: &[&str] = &[
    "./usr/bin/lb",
    "./etc/lb/lb.yaml",
    "./usr/lib/systemd/system/lb.service",
    "./usr/share/man/man1/lb.1",
    "./usr/share/man/man1/lb-agent.1",
    "./usr/share/bash-completion/completions/lb",
    "./usr/share/zsh/vendor-completions/_lb",
    "./usr/share/fish/vendor_completions.d/lb.fish",
];

/// Control fields and what each must contain.
const FIELDS: &[(&str, &str)] = &[
    ("Package", "lb"),
    ("Depends", "libc6"),
    ("Recommends", "bird2"),
];

const UNIT: &str = "usr/lib/systemd/system/lb.service";

pub fn check(deb: &Path) -> Result<()> {
    let listing = util::stdout(cmd("dpkg-deb").arg("--contents").arg(deb))?;
    // Lines end with the path (a symlink's with ` -> target`).
    let paths: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .collect();
    for file in FILES {
        ensure!(
            paths.contains(file),
            "{} lacks {file}; it holds:\n{listing}",
            deb.display()
        );
    }
    for (field, want) in FIELDS {
        let value = util::stdout(cmd("dpkg-deb").arg("--field").arg(deb).arg(field))?;
        ensure!(
            value.contains(want),
            "{field} is {:?}, lacks {want:?}",
            value.trim()
        );
    }

    let scratch = Scratch::new()?;
    util::run_quiet(
        cmd("dpkg-deb")
            .arg("--control")
            .arg(deb)
            .arg(scratch.0.join("DEBIAN")),
    )?;
    let conffiles = fs::read_to_string(scratch.0.join("DEBIAN/conffiles"))
        .context("the package has no conffiles")?;
    ensure!(
        conffiles.lines().any(|line| line == "/etc/lb/lb.yaml"),
        "/etc/lb/lb.yaml is no conffile: {conffiles:?}"
    );
    util::run_quiet(cmd("dpkg-deb").arg("--extract").arg(deb).arg(&scratch.0))?;
    let version = util::stdout(cmd(scratch.0.join("usr/bin/lb")).arg("--version"))?;
    let want = format!("lb {}", env!("CARGO_PKG_VERSION"));
    ensure!(
        version.trim() == want,
        "installed lb --version says {version:?}, not {want:?}"
    );
    verify_unit(&scratch.0)
}

/// `systemd-analyze verify` on the unpacked unit, where systemd is present.
/// The unit is verified against this machine's systemd, with its ExecStart
/// pointed at the unpacked binary (the one in /usr/bin is not installed).
fn verify_unit(root: &Path) -> Result<()> {
    if cmd("systemd-analyze").arg("--version").output().is_err() {
        println!("package: no systemd-analyze here, so lb.service is not verified");
        return Ok(());
    }
    let unit = fs::read_to_string(root.join(UNIT)).context("reading the unpacked unit")?;
    let lb = root.join("usr/bin/lb");
    let copy = root.join("lb.service");
    fs::write(
        &copy,
        unit.replace("/usr/bin/lb ", &format!("{} ", lb.display())),
    )
    .context("writing the unit to verify")?;
    let output = cmd("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .context("running systemd-analyze verify")?;
    let complaints = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || !complaints.trim().is_empty() {
        bail!("systemd-analyze verify {UNIT}: {}", complaints.trim());
    }
    Ok(())
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("lb-package-check-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
