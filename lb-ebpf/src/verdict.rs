//! Why a packet was not forwarded: each reason maps to one XDP action and
//! one outcome counter.

use aya_ebpf::bindings::xdp_action;
use lb_common::counters;

#[derive(Clone, Copy)]
pub enum Verdict {
    PassNotIp,
    PassFragment,
    PassOtherProto,
    PassMalformed,
    PassNotService,
    PassFibMiss,
    PassFibOther,
    PassTtlExpired,
    DropNoBackend,
    DropInternal,
    DropNotAdjacent,
    DropNoNeighbor,
    PassOtherHost,
}

impl Verdict {
    #[inline(always)]
    pub fn counter(self) -> u32 {
        match self {
            Self::PassNotIp => counters::PASS_NOT_IP,
            Self::PassFragment => counters::PASS_FRAGMENT,
            Self::PassOtherProto => counters::PASS_OTHER_PROTO,
            Self::PassMalformed => counters::PASS_MALFORMED,
            Self::PassNotService => counters::PASS_NOT_SERVICE,
            Self::PassFibMiss => counters::FIB_MISS,
            Self::PassFibOther => counters::FIB_OTHER,
            Self::PassTtlExpired => counters::PASS_TTL_EXPIRED,
            Self::DropNoBackend => counters::DROP_NO_BACKEND,
            Self::DropInternal => counters::DROP_INTERNAL,
            Self::DropNotAdjacent => counters::DROP_NOT_ADJACENT,
            Self::DropNoNeighbor => counters::DROP_NO_NEIGHBOR,
            Self::PassOtherHost => counters::PASS_OTHER_HOST,
        }
    }

    #[inline(always)]
    pub fn action(self) -> u32 {
        match self {
            Self::DropNoBackend
            | Self::DropInternal
            | Self::DropNotAdjacent
            | Self::DropNoNeighbor => xdp_action::XDP_DROP,
            _ => xdp_action::XDP_PASS,
        }
    }
}
