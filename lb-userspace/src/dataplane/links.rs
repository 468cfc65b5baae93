//! Attaching the program to interfaces: pinned links that outlive the
//! agent, taken over without a gap by the next one.

use aya::programs::{
    ProgramError, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use lb_common::PROGRAM_NAME;

use super::{Dataplane, DataplaneError, programs};

impl Dataplane {
    /// The index of interface `iface`; `NoSuchInterface` when there is none.
    pub fn interface_index(iface: &str) -> Result<u32, DataplaneError> {
        crate::iface::ifindex(iface).map_err(|_| DataplaneError::NoSuchInterface(iface.to_owned()))
    }

    /// Attaches the program to `iface` and lets packets be redirected out of it.
    /// With pinned state the link is pinned too, so the program stays attached
    /// when the agent exits; a link pinned by an earlier agent is taken over
    /// with an atomic program replacement, without a gap.
    pub fn attach(&mut self, iface: &str) -> Result<u32, DataplaneError> {
        let ifindex = Self::interface_index(iface)?;
        let mac = crate::iface::mac(iface)
            .map_err(|_| DataplaneError::NoSuchInterface(iface.to_owned()))?;
        let link_path = self.pins.as_ref().map(|pins| pins.link(iface));
        let program = programs::xdp(&mut self.ebpf, PROGRAM_NAME)?;
        let attach_error = |source| DataplaneError::Attach {
            iface: iface.to_owned(),
            source,
        };
        let taken_over = match &link_path {
            Some(path) if path.exists() => {
                let reuse_error =
                    |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::ReuseLink {
                        path: path.clone(),
                        source,
                    };
                let pinned = PinnedLink::from_pin(path).map_err(|e| reuse_error(e.into()))?;
                let link =
                    XdpLink::try_from(FdLink::from(pinned)).map_err(|e| reuse_error(e.into()))?;
                match program.attach_to_link(link) {
                    Ok(_) => true,
                    // The interface was deleted since the link was pinned
                    // (and made again under its name): the kernel detached
                    // the link for good. It goes; the program is attached
                    // afresh.
                    Err(e) if is_severed(&e) => {
                        tracing::info!(iface, "the link pinned for it was severed: attaching anew");
                        std::fs::remove_file(path).map_err(|e| reuse_error(e.into()))?;
                        false
                    }
                    Err(e) => return Err(attach_error(e)),
                }
            }
            _ => false,
        };
        if !taken_over {
            let id = program
                .attach(iface, XdpMode::Default)
                .map_err(attach_error)?;
            if let Some(path) = &link_path {
                let link = program.take_link(id).map_err(attach_error)?;
                let link = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
                    iface: iface.to_owned(),
                    source,
                })?;
                link.pin(path).map_err(|source| DataplaneError::PinLink {
                    iface: iface.to_owned(),
                    path: path.clone(),
                    source,
                })?;
            }
        }
        self.add_egress_port(ifindex)?;
        self.add_iface(ifindex, mac)?;
        self.clock.mark_backends_changed(&mut self.ebpf)?;
        Ok(ifindex)
    }

    /// Detaches the program from the interfaces an earlier agent attached it
    /// to that this one does not (`--iface` listed fewer): their pinned links
    /// go, and with them the earlier program, which no agent updates any
    /// more; so do their interface entries, whose slots in the VIPs' masks
    /// this agent hands out again, and their egress ports. Once every listed
    /// interface is attached.
    pub fn detach_unlisted(&mut self, listed: &[String]) -> Result<Vec<String>, DataplaneError> {
        let Some(pins) = &self.pins else {
            return Ok(Vec::new());
        };
        let detached = pins.remove_links_except(listed)?;
        let stale: Vec<u32> = self
            .maps
            .ifaces
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| !self.iface_slots.contains_key(ifindex))
            .collect();
        for ifindex in stale {
            self.remove_iface(ifindex)?;
            self.egress.remove(ifindex)?;
        }
        Ok(detached)
    }

    /// Lets the program redirect to `ifindex` (done by `attach`; tests that run
    /// the program without attaching it call this directly).
    pub fn add_egress_port(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.egress.add(ifindex)
    }
}

/// Whether the program could not take over a pinned link because the
/// kernel severed it from its interface, which went (`ENOLINK`).
fn is_severed(error: &ProgramError) -> bool {
    matches!(error, ProgramError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOLINK))
}
