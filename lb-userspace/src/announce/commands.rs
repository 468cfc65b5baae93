//! The commands that look at and steer an agent's BGP announcements: `lb bgp`
//! and `lb drain`; `lb down` stops BIRD through [`Bird::stop`].

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::bird::Bird;
use crate::{
    cli::{DrainArgs, InspectArgs},
    pins::check_bpffs,
    show::{print, print_json, print_table},
};

/// How long `lb drain` waits for BIRD to announce nothing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn running(bird: &Bird, bpffs: &std::path::Path) -> Result<()> {
    ensure!(
        bird.running(),
        "no BIRD answers at {} (is an agent with --announce bgp and --bpffs {} running?)",
        bird.socket().display(),
        bpffs.display()
    );
    Ok(())
}

/// `lb bgp`: sessions, BFD and the prefixes announced.
pub fn bgp(args: &InspectArgs) -> Result<()> {
    check_bpffs(&args.bpffs)?;
    let bird = Bird::of(&args.bpffs);
    running(&bird, &args.bpffs)?;
    let status = bird.status().context("asking BIRD")?;
    if args.json {
        return print_json(&status);
    }
    let rows: Vec<Vec<String>> = status
        .sessions
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.peer.clone(),
                s.peer_as.clone(),
                s.state.clone(),
                s.bfd.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    print_table(&["session", "peer", "peer AS", "state", "BFD"], &rows)?;
    print("\n")?;
    let announced: Vec<Vec<String>> = status
        .announced
        .iter()
        .map(|prefix| vec![prefix.clone()])
        .collect();
    print_table(&["announced"], &announced)?;
    if status.draining {
        print("\ndraining: nothing is announced until `lb drain --undo` or `lb down`\n")?;
    }
    Ok(())
}

/// `lb drain`: withdraw everything now and keep it withdrawn (the agent sees
/// the marker), then wait until BIRD announces nothing.
pub fn drain(args: &DrainArgs) -> Result<()> {
    let bpffs = &args.pins.bpffs;
    check_bpffs(bpffs)?;
    let bird = Bird::of(bpffs);
    let marker = bird.drain_marker();
    if args.undo {
        return match fs::remove_file(&marker) {
            Ok(()) => print("announcing again (the agent restores the routes within a second)\n"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => print("not draining\n"),
            Err(e) => Err(e).with_context(|| format!("removing {}", marker.display())),
        };
    }
    running(&bird, bpffs)?;
    fs::write(&marker, "").with_context(|| format!("writing {}", marker.display()))?;
    // Withdrawn here too, so draining works while no agent runs.
    bird.withdraw().context("withdrawing")?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let announced = bird.status().context("asking BIRD")?.announced;
        if announced.is_empty() {
            return print(
                "drained: nothing announced; wait for traffic to move, then stop this host\n",
            );
        }
        if Instant::now() > deadline {
            bail!("BIRD still announces {announced:?} after {DRAIN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
