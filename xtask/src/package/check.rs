//! Checks a built .deb the way a user meets it: its control fields and
//! files, the installed binary, and the systemd unit.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
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
    check_prerm(&scratch.0)?;
    let version = util::stdout(cmd(scratch.0.join("usr/bin/lb")).arg("--version"))?;
    let want = format!("lb {}", env!("CARGO_PKG_VERSION"));
    ensure!(
        version.trim() == want,
        "installed lb --version says {version:?}, not {want:?}"
    );
    verify_unit(&scratch.0)
}

/// The config file the prerm reads the agent's bpffs from.
const CONFIG: &str = "/etc/lb/lb.yaml";

/// Where debhelper's fragments look for a running systemd.
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

/// The prerm (in `root/DEBIAN`, the package unpacked in `root`) run as dpkg runs it, against stubs of `lb`
/// and `deb-systemd-invoke` that record their arguments, with the config file
/// and systemd's run directory pointed into `root`: on `remove` it stops the
/// unit and then runs `lb down` with the config file's bpffs, and does not
/// fail when `lb down` does; on anything else (an upgrade must keep the data
/// path serving) it runs neither.
fn check_prerm(root: &Path) -> Result<()> {
    let prerm =
        fs::read_to_string(root.join("DEBIAN/prerm")).context("the package has no prerm")?;
    ensure!(
        !prerm.contains("#DEBHELPER#"),
        "cargo-deb left #DEBHELPER# in the prerm:\n{prerm}"
    );
    for wanted in [CONFIG, SYSTEMD_RUNNING] {
        ensure!(
            prerm.contains(wanted),
            "the prerm never names {wanted}:\n{prerm}"
        );
    }

    let dir = root.join("prerm-check");
    let (bin, systemd, log) = (dir.join("bin"), dir.join("systemd"), dir.join("log"));
    let config = dir.join("lb.yaml");
    fs::create_dir_all(&bin)
        .and_then(|()| fs::create_dir_all(&systemd))
        .with_context(|| format!("creating {}", dir.display()))?;
    let stub = |name: &str, status: u8| -> Result<()> {
        let path = bin.join(name);
        fs::write(
            &path,
            format!("#!/bin/sh\necho \"{name} $*\" >> \"$PRERM_LOG\"\nexit {status}\n"),
        )
        .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o755)))
        .with_context(|| format!("writing {}", path.display()))
    };
    stub("deb-systemd-invoke", 0)?;
    let script = dir.join("prerm");
    fs::write(
        &script,
        prerm
            .replace(SYSTEMD_RUNNING, &systemd.to_string_lossy())
            .replace(CONFIG, &config.to_string_lossy()),
    )
    .context("writing the prerm to run")?;
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
    // The calls the prerm made, one a line.
    let run = |args: &[&str]| -> Result<String> {
        let _ = fs::remove_file(&log);
        let mut command = cmd("sh");
        command
            .arg(&script)
            .args(args)
            .env("PATH", &path)
            .env("PRERM_LOG", &log);
        util::stdout(&mut command).with_context(|| format!("prerm {}", args.join(" ")))?;
        Ok(fs::read_to_string(&log).unwrap_or_default())
    };

    let stop = "deb-systemd-invoke stop lb.service\n";
    stub("lb", 0)?;
    // The packaged config, whose keys are all commented out: the default bpffs.
    fs::copy(root.join(&CONFIG[1..]), &config)
        .with_context(|| format!("copying the packaged {CONFIG}"))?;
    let calls = run(&["remove"])?;
    ensure!(
        calls == format!("{stop}lb down\n"),
        "prerm remove with no bpffs in {CONFIG} made these calls, not the unit's stop and then \
         `lb down`:\n{calls}"
    );
    for line in [
        "bpffs: /sys/fs/bpf/lb-elsewhere",
        "bpffs: \"/sys/fs/bpf/lb-elsewhere\"  # moved",
    ] {
        fs::write(&config, format!("iface: [eth0]\n{line}\nforwarding: nat\n"))
            .context("writing a config file for the prerm")?;
        let calls = run(&["remove"])?;
        ensure!(
            calls == format!("{stop}lb down --bpffs /sys/fs/bpf/lb-elsewhere\n"),
            "prerm remove with `{line}` in {CONFIG} made these calls, not the unit's stop and \
             then `lb down --bpffs /sys/fs/bpf/lb-elsewhere`:\n{calls}"
        );
    }
    for args in [
        &["upgrade", "0.1.0"][..],
        &["failed-upgrade", "0.1.0", "0.1.0"],
        &["deconfigure", "in-favour", "other", "1.0"],
    ] {
        let calls = run(args)?;
        ensure!(
            calls.is_empty(),
            "prerm {} must leave the agent and the data path alone, but made these calls:\n{calls}",
            args.join(" ")
        );
    }
    // A removal goes on when `lb down` fails.
    stub("lb", 1)?;
    let calls = run(&["remove"])?;
    ensure!(
        calls.ends_with("lb down --bpffs /sys/fs/bpf/lb-elsewhere\n"),
        "prerm remove did not run `lb down`: {calls}"
    );
    let _ = fs::remove_dir_all(&dir);
    Ok(())
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
