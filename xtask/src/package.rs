//! `cargo xtask package`: the Debian package, made by cargo-deb from
//! lb-userspace's `[package.metadata.deb]`, with the man page and shell
//! completions the built `lb` prints (so they match the binary they ship with).

mod check;

use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result};

use crate::{
    setup,
    util::{self, cmd},
};

pub use check::check;

/// The cargo profile the package is built from.
#[derive(Clone, Copy)]
pub enum Profile {
    /// What `cargo xtask package` ships.
    Release,
    /// The binary the tests already built: a quick package for checking the
    /// packaging itself, compressed fast.
    Dev,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Dev => "dev",
        }
    }

    /// Where cargo puts this profile's output.
    fn dir(self) -> PathBuf {
        util::target_dir().join(match self {
            Self::Release => "release",
            Self::Dev => "debug",
        })
    }
}

/// `cargo xtask package`: builds and checks the .deb, and prints where it is.
pub fn run() -> Result<()> {
    setup::run().context("setup failed")?;
    let deb = build(Profile::Release)?;
    check(&deb).with_context(|| format!("checking {}", deb.display()))?;
    println!("{}", deb.display());
    Ok(())
}

/// Builds `lb`, what the package generates from it, and the .deb; returns
/// the .deb's path.
pub fn build(profile: Profile) -> Result<PathBuf> {
    util::run(cmd("cargo").args([
        "build",
        "-p",
        "lb-userspace",
        "--bins",
        "--profile",
        profile.name(),
    ]))?;
    let lb = profile.dir().join("lb");
    // Cargo.toml's assets name these files under target/release/package/,
    // which cargo-deb reads from the profile's directory.
    let generated = profile.dir().join("package");
    // Afresh, so that no page of a command since removed is packaged.
    let man = generated.join("man");
    let _ = fs::remove_dir_all(&man);
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    util::run(cmd(&lb).arg("man").arg("--dir").arg(&man))?;
    for (shell, file) in [("bash", "lb.bash"), ("zsh", "_lb"), ("fish", "lb.fish")] {
        let text = util::stdout(cmd(&lb).args(["completions", shell]))?;
        let path = generated.join(file);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut deb = cmd("cargo");
    deb.args([
        "deb",
        "-p",
        "lb-userspace",
        "--no-build",
        "--profile",
        profile.name(),
    ])
    .arg("--output")
    .arg(generated.join("deb"));
    if let Profile::Dev = profile {
        deb.arg("--fast");
    }
    // cargo-deb prints the path of the package it wrote, last.
    let printed = util::stdout(&mut deb)?;
    let path = printed
        .lines()
        .last()
        .context("cargo deb printed no package path")?;
    Ok(PathBuf::from(path.trim()))
}
