//! Why a packet was not forwarded: each reason maps to one XDP action and
//! one outcome counter; and how every program turns a packet's outcome
//! into its action.

use aya_ebpf::bindings::xdp_action;
use aya_log_ebpf::warn;
use lb_common::counters;

use crate::{maps::count, parse::Frame};

/// Each variant's value is its counter's index, so counting a verdict needs
/// no table.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Verdict {
    PassNotIp = counters::PASS_NOT_IP,
    PassFragment = counters::PASS_FRAGMENT,
    PassOtherProto = counters::PASS_OTHER_PROTO,
    PassMalformed = counters::PASS_MALFORMED,
    PassNotService = counters::PASS_NOT_SERVICE,
    PassFibMiss = counters::FIB_MISS,
    PassFibOther = counters::FIB_OTHER,
    PassTtlExpired = counters::PASS_TTL_EXPIRED,
    DropNoBackend = counters::DROP_NO_BACKEND,
    DropInternal = counters::DROP_INTERNAL,
    DropNotAdjacent = counters::DROP_NOT_ADJACENT,
    DropNoNeighbor = counters::DROP_NO_NEIGHBOR,
    PassOtherHost = counters::PASS_OTHER_HOST,
    PassToFragment = counters::PASS_TO_FRAGMENT,
}

/// The verdicts that drop, as a set of counter indexes; a `u32` holds them all.
const _: () = assert!(counters::COUNT <= u32::BITS);
const DROPS: u32 = 1 << counters::DROP_NO_BACKEND
    | 1 << counters::DROP_INTERNAL
    | 1 << counters::DROP_NOT_ADJACENT
    | 1 << counters::DROP_NO_NEIGHBOR;

impl Verdict {
    #[inline(always)]
    pub fn counter(self) -> u32 {
        self as u32
    }

    #[inline(always)]
    pub fn action(self) -> u32 {
        if DROPS & (1 << self.counter()) != 0 {
            xdp_action::XDP_DROP
        } else {
            xdp_action::XDP_PASS
        }
    }
}

/// The XDP action for a packet's outcome, logging one dropped as
/// `Verdict::DropInternal` (see [`settle`]).
#[inline(always)]
pub fn finish(ctx: &Frame, outcome: Result<u32, Verdict>) -> u32 {
    if let Err(Verdict::DropInternal) = outcome {
        log_internal_drop(ctx);
    }
    settle(outcome)
}

/// The XDP action for a packet's outcome, counting the verdict of one that
/// was not handled.
#[inline(always)]
pub fn settle(outcome: Result<u32, Verdict>) -> u32 {
    match outcome {
        Ok(action) => action,
        Err(verdict) => {
            count(verdict.counter());
            verdict.action()
        }
    }
}

/// Rare and a bug if it happens: worth a line in the agent's log. A
/// subprogram, so the log record's stack is not the entry point's.
#[inline(never)]
fn log_internal_drop(ctx: &Frame) {
    warn!(ctx, "dropped: a Maglev ring points at a missing backend");
}
