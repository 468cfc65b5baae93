//! The flow tables (`FLOWS4`, `FLOWS6`) and, in front of them, each CPU's
//! cache of the entries its packets used last (`FLOW_CACHE4`,
//! `FLOW_CACHE6`).
//!
//! A lookup in a 1M-entry LRU hash is a helper call, a hash of the key, a
//! bucket walk and a key compare: the largest part of an established
//! packet's cost. The cache is direct-mapped by `flow_cache_slot` and per
//! CPU, so a hit is an array read the verifier inlines and a compare of the
//! key (as the exact-match cache of Open vSwitch). A cached copy of an entry
//! serves its flow's packets on that CPU for up to [`FLOW_REFRESH_NS`]; the
//! next packet then looks the entry up again, which marks it recently used
//! in the LRU, gives it the packets and last-seen time the copy counted, and
//! refreshes the copy. So the LRU sees every active flow used at least once
//! per interval. A copy that another flow's packet takes over gives its
//! counts back first; an idle flow's copy keeps them, and readers of the
//! table add what the copies hold (`Flow::add_cached`; the caches are
//! pinned for them). An entry's backend is checked when its copy is made,
//! and a copy is checked again only after the agent changed a backend slot
//! (`CachedFlow::checked_since`): most packets then need no `BACKENDS`
//! read, and a retired backend is still noticed at once. A flow the table
//! lost stays served by a CPU's copy until its refresh.

use core::mem::{MaybeUninit, size_of};

use lb_common::{CachedFlow, Flow, FlowKey, FlowKey4, hash::flow_cache_slot, is_ipv4_mapped};

use crate::{
    keys,
    maps::{self, FLOW_CACHE4, FLOW_CACHE6, FLOWS4, FLOWS6},
    nat::copy_words,
};

/// How long a cached copy serves before its entry is looked up again.
pub const FLOW_REFRESH_NS: u64 = 1_000_000_000;

/// The entry of flow `key` to decide with and count in, at `now`, if its
/// backend still serves it (by `serves`, which is not asked about a copy
/// checked since the last change of a slot): this CPU's fresh copy of it,
/// else the entry in the table (the copy is then refreshed from it).
#[inline(always)]
pub fn entry(key: &FlowKey, now: u64, serves: impl FnMut(&Flow) -> bool) -> Option<*mut Flow> {
    let slot = flow_cache_slot(key);
    if is_ipv4_mapped(&key.src_ip) {
        let mut key4 = MaybeUninit::uninit();
        let key4 = keys::flow_key4(&mut key4, key);
        let cached = FLOW_CACHE4.get_ptr_mut(slot)?;
        // SAFETY: a slot of this CPU's array, with no concurrent writer.
        unsafe { through_cache(cached, key4, |key| FLOWS4.get_ptr_mut(key), now, serves) }
    } else {
        let cached = FLOW_CACHE6.get_ptr_mut(slot)?;
        // SAFETY: as above.
        unsafe { through_cache(cached, key, |key| FLOWS6.get_ptr_mut(key), now, serves) }
    }
}

/// The entry of flow `key` in the table, past this CPU's copy: for a packet
/// that neither counts in the flow nor keeps it fresh (an ICMP error about
/// it), and so needs no copy. The ICMP paths' stack has no room for the
/// copy's handling.
#[inline(always)]
pub fn table_entry(key: &FlowKey) -> Option<*mut Flow> {
    if is_ipv4_mapped(&key.src_ip) {
        let mut key4 = MaybeUninit::uninit();
        FLOWS4.get_ptr_mut(keys::flow_key4(&mut key4, key))
    } else {
        FLOWS6.get_ptr_mut(key)
    }
}

/// Records a flow. A full table evicts the least recently used flow, so this
/// cannot fail for lack of room; should it fail anyway, the flow's next packet
/// gets the same Maglev choice and tries again. This CPU's copy of an
/// earlier entry under `key` is refreshed by the next packet.
#[inline(always)]
pub fn insert(key: &FlowKey, flow: &Flow) {
    let slot = flow_cache_slot(key);
    if is_ipv4_mapped(&key.src_ip) {
        let mut key4 = MaybeUninit::uninit();
        let key4 = keys::flow_key4(&mut key4, key);
        let _ = FLOWS4.insert(key4, flow, 0);
        if let Some(cached) = FLOW_CACHE4.get_ptr_mut(slot) {
            // SAFETY: as in `entry`.
            unsafe { expire(cached, key4, flow.last_seen_ns) };
        }
    } else {
        let _ = FLOWS6.insert(key, flow, 0);
        if let Some(cached) = FLOW_CACHE6.get_ptr_mut(slot) {
            // SAFETY: as in `entry`.
            unsafe { expire(cached, key, flow.last_seen_ns) };
        }
    }
}

/// `entry` for one family's cache slot `cached` and table, looked up by
/// `lookup`.
///
/// # Safety
/// `cached` must be a valid slot of this CPU's cache.
#[inline(always)]
unsafe fn through_cache<K>(
    cached: *mut CachedFlow<K>,
    key: &K,
    lookup: impl Fn(&K) -> Option<*mut Flow>,
    now: u64,
    mut serves: impl FnMut(&Flow) -> bool,
) -> Option<*mut Flow> {
    // SAFETY: the caller vouches for `cached`; the entries are valid for
    // this program run (RCU), and racing updates of their counts from other
    // CPUs only lose a count.
    unsafe {
        let held = same_key(&raw const (*cached).key, key);
        let (flow, refreshed) =
            if held && now.wrapping_sub((*cached).refreshed_ns) < FLOW_REFRESH_NS {
                if (*cached).checked_since(maps::backends_changed_ns()) {
                    return Some(&raw mut (*cached).flow);
                }
                (&raw mut (*cached).flow, false)
            } else {
                if !held && (*cached).flow.packets != 0 {
                    if let Some(previous) = lookup(&(*cached).key) {
                        (*previous).add_cached(&(*cached).flow);
                    }
                    (*cached).flow.packets = 0;
                }
                let entry = lookup(key)?;
                if held {
                    (*entry).add_cached(&(*cached).flow);
                }
                copy_words::<K, u32>(&raw mut (*cached).key, key);
                copy_words::<Flow, u64>(&raw mut (*cached).flow, entry);
                (*cached).flow.packets = 0;
                (entry, true)
            };
        let live = serves(&*flow);
        if refreshed {
            // A copy whose backend is gone is dated expired: re-hashed, its
            // flow gets a new entry, which its next packet looks up.
            (*cached).refreshed_ns = if live { now } else { expired(now) };
        }
        live.then_some(flow)
    }
}

/// Makes the next packet of `key` refresh this CPU's copy, if `cached`
/// holds one: dates the copy a whole interval before `now`.
///
/// # Safety
/// As for `through_cache`.
#[inline(always)]
unsafe fn expire<K>(cached: *mut CachedFlow<K>, key: &K, now: u64) {
    // SAFETY: the caller vouches for `cached`.
    unsafe {
        if same_key(&raw const (*cached).key, key) {
            (*cached).refreshed_ns = expired(now);
        }
    }
}

/// A date at which a copy is due for refresh at `now`.
#[inline(always)]
fn expired(now: u64) -> u64 {
    now.wrapping_sub(FLOW_REFRESH_NS)
}

/// Whether the keys at `a` and `b` are equal, word by word: a derived
/// comparison of a key may become a `memcmp` call, which BPF has not.
///
/// # Safety
/// Both must be valid keys, whose size is a multiple of four bytes.
#[inline(always)]
unsafe fn same_key<K>(a: *const K, b: *const K) -> bool {
    let (a, b) = (a.cast::<u32>(), b.cast::<u32>());
    let mut same = true;
    for i in 0..size_of::<K>() / 4 {
        // SAFETY: within both keys.
        same &= unsafe { a.add(i).read_volatile() == b.add(i).read() };
    }
    same
}

// Checked here once so the copies above stay within their values.
const _: () = {
    assert!(size_of::<FlowKey4>().is_multiple_of(4) && size_of::<FlowKey>().is_multiple_of(4));
    assert!(size_of::<Flow>().is_multiple_of(8));
    assert!(core::mem::offset_of!(CachedFlow<FlowKey4>, flow).is_multiple_of(8));
    assert!(core::mem::offset_of!(CachedFlow<FlowKey>, flow).is_multiple_of(8));
};
