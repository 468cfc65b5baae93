//! `BACKENDS_CHANGED_NS`: the data path's clock after the latest change of a
//! `BACKENDS` slot, which lets a flow's cached copy dated later skip the
//! look at its slot (`lb_common::CachedFlow::checked_since`). Written after
//! each change that can end a flow's backend (a slot retired, and so also
//! before its reuse), once per service programmed; at every load, so that
//! no copy an earlier program dated is trusted; and after every attach,
//! since the program replaced kept dating copies by its own rules until
//! then. Not pinned: every load writes it again.

use aya::Ebpf;
use lb_common::{MAP_BACKENDS_CHANGED, TickClock};

use super::{DataplaneError, global_data::GlobalData, tick_clock};

pub(super) struct BackendsChanged {
    mark: GlobalData<u64>,
    /// The data path's clock, as this load set it.
    clock: TickClock,
}

impl BackendsChanged {
    /// Takes the global out of the loaded program and marks it changed now.
    pub fn take(ebpf: &mut Ebpf, clock: TickClock) -> Result<Self, DataplaneError> {
        let mut changed = Self {
            mark: GlobalData::take(ebpf, MAP_BACKENDS_CHANGED, 0)?,
            clock,
        };
        changed.mark(ebpf)?;
        Ok(changed)
    }

    /// Records that slots changed: every copy dated before now (or in this
    /// tick) is checked against its slot again.
    pub fn mark(&mut self, ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
        *self.mark.value_mut() = tick_clock::now(ebpf, &self.clock)?;
        Ok(self.mark.write()?)
    }
}
