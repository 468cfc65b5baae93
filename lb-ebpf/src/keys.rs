//! Map keys written in place. Built as Rust values and moved, a key's bytes
//! are copied by the compiler as one block whose alignment it often cannot
//! prove; BPF then copies it a byte at a time, and the word loads of the
//! map's hash stall on those byte stores. Written field by field here, every
//! address is four word stores.

use core::mem::MaybeUninit;

use lb_common::{Addr, FlowKey, FlowKey4, ServiceKey, ServiceKey4};

use crate::nat::copy_addr;

/// A flow key from its 5-tuple (ports network order), written into `out`.
#[inline(always)]
pub fn flow_key<'a>(
    out: &'a mut MaybeUninit<FlowKey>,
    [src_ip, dst_ip]: [&Addr; 2],
    [src_port, dst_port]: [u16; 2],
    proto: u8,
) -> &'a FlowKey {
    let key = out.as_mut_ptr();
    // SAFETY: every field of `out` is written before it is read, through
    // pointers into it; the padding is written too, as the map hashes it.
    unsafe {
        copy_addr(&raw mut (*key).src_ip, src_ip);
        copy_addr(&raw mut (*key).dst_ip, dst_ip);
        (&raw mut (*key).src_port).write_volatile(src_port);
        (&raw mut (*key).dst_port).write_volatile(dst_port);
        (&raw mut (*key).proto).write_volatile(proto);
        let pad = (&raw mut (*key)._pad).cast::<u8>();
        for i in 0..3 {
            pad.add(i).write_volatile(0);
        }
        out.assume_init_ref()
    }
}

/// A service key (address, port network order, protocol), written into `out`.
#[inline(always)]
pub fn service_key<'a>(
    out: &'a mut MaybeUninit<ServiceKey>,
    addr: &Addr,
    port: u16,
    proto: u8,
) -> &'a ServiceKey {
    let key = out.as_mut_ptr();
    // SAFETY: as in `flow_key`.
    unsafe {
        copy_addr(&raw mut (*key).vip, addr);
        (&raw mut (*key).port).write_volatile(port);
        (&raw mut (*key).proto).write_volatile(proto);
        (&raw mut (*key)._pad).write_volatile(0);
        out.assume_init_ref()
    }
}

/// The compact key of an IPv4 flow (see `lb_common::family`), written into `out`.
#[inline(always)]
pub fn flow_key4<'a>(out: &'a mut MaybeUninit<FlowKey4>, flow: &FlowKey) -> &'a FlowKey4 {
    let key = out.as_mut_ptr();
    // SAFETY: as in `flow_key`.
    unsafe {
        (&raw mut (*key).src_ip).write_volatile(flow.src_ip[3]);
        (&raw mut (*key).dst_ip).write_volatile(flow.dst_ip[3]);
        (&raw mut (*key).src_port).write_volatile(flow.src_port);
        (&raw mut (*key).dst_port).write_volatile(flow.dst_port);
        (&raw mut (*key).proto).write_volatile(flow.proto);
        let pad = (&raw mut (*key)._pad).cast::<u8>();
        for i in 0..3 {
            pad.add(i).write_volatile(0);
        }
        out.assume_init_ref()
    }
}

/// The compact key of an IPv4 service (address network order), written into `out`.
#[inline(always)]
pub fn service_key4(
    out: &mut MaybeUninit<ServiceKey4>,
    addr: u32,
    port: u16,
    proto: u8,
) -> &ServiceKey4 {
    let key = out.as_mut_ptr();
    // SAFETY: as in `flow_key`.
    unsafe {
        (&raw mut (*key).vip).write_volatile(addr);
        (&raw mut (*key).port).write_volatile(port);
        (&raw mut (*key).proto).write_volatile(proto);
        (&raw mut (*key)._pad).write_volatile(0);
        out.assume_init_ref()
    }
}
