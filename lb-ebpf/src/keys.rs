//! Map keys written in place, every word of a key in one 32-bit store.
//! Built as Rust values and moved, a key's bytes are copied by the compiler
//! as one block whose alignment it often cannot prove, which BPF does a byte
//! at a time. And a key's readers (the map's hash, the flow cache's compare,
//! the data path's own hashes) load it a word at a time: a word load over
//! narrower stores cannot take its value from the store buffer and waits
//! for them to reach the cache. So the two ports share one word store, and
//! the protocol with its padding another. (Written as two 16-bit stores,
//! the ports word was where the flow cache's key compare stalled most.)

use core::mem::MaybeUninit;

use lb_common::{Addr, FlowKey, FlowKey4, ServiceKey, ServiceKey4};

use crate::nat::{copy_addr, copy_words};

/// A flow key from its 5-tuple, written into `out`: the ports as the word
/// `parse::Transport` reads from the packet (see `Transport::join`).
#[inline(always)]
pub fn flow_key<'a>(
    out: &'a mut MaybeUninit<FlowKey>,
    [src_ip, dst_ip]: [&Addr; 2],
    ports: u32,
    proto: u8,
) -> &'a FlowKey {
    let key = out.as_mut_ptr();
    // SAFETY: every field of `out` is written before it is read, through
    // pointers into it; the padding is written too, as the map hashes it.
    unsafe {
        copy_addr(&raw mut (*key).src_ip, src_ip);
        copy_addr(&raw mut (*key).dst_ip, dst_ip);
        write_word(&raw mut (*key).src_port, ports);
        write_word(&raw mut (*key).proto, u32::from_ne_bytes([proto, 0, 0, 0]));
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
        write_word(&raw mut (*key).port, port_proto_word(port, proto));
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
        // The two keys end alike: the ports word, then the protocol's.
        copy_words::<[u32; 2], u32>(
            (&raw mut (*key).src_port).cast(),
            (&raw const flow.src_port).cast(),
        );
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
        write_word(&raw mut (*key).port, port_proto_word(port, proto));
        out.assume_init_ref()
    }
}

/// A service key's port and protocol, with the padding after them, as the
/// word they share.
#[inline(always)]
fn port_proto_word(port: u16, proto: u8) -> u32 {
    let [a, b] = port.to_ne_bytes();
    u32::from_ne_bytes([a, b, proto, 0])
}

/// Writes the key word that begins at `field` in one store.
///
/// # Safety
/// `field` must begin a word of a key being written (see the layout checks
/// below).
#[inline(always)]
unsafe fn write_word<F>(field: *mut F, word: u32) {
    // SAFETY: the caller vouches for the word.
    unsafe { field.cast::<u32>().write_volatile(word) }
}

// The words the functions above write whole: each begins 4-byte aligned
// and holds the fields they put in it; a key's last two words are its ports
// and its protocol's.
const _: () = {
    use core::mem::{align_of, offset_of};
    macro_rules! word_of {
        ($key:ty, $first:ident, $($rest:ident @ $at:literal),*) => {
            assert!(align_of::<$key>() >= 4 && offset_of!($key, $first) % 4 == 0);
            $(assert!(offset_of!($key, $rest) == offset_of!($key, $first) + $at);)*
        };
    }
    word_of!(FlowKey, src_port, dst_port @ 2);
    word_of!(FlowKey, proto, _pad @ 1);
    word_of!(FlowKey4, src_port, dst_port @ 2);
    word_of!(FlowKey4, proto, _pad @ 1);
    word_of!(ServiceKey, port, proto @ 2, _pad @ 3);
    word_of!(ServiceKey4, port, proto @ 2, _pad @ 3);
    assert!(size_of::<FlowKey>() == offset_of!(FlowKey, proto) + 4);
    assert!(size_of::<FlowKey4>() == offset_of!(FlowKey4, proto) + 4);
    assert!(offset_of!(FlowKey, proto) == offset_of!(FlowKey, src_port) + 4);
    assert!(offset_of!(FlowKey4, proto) == offset_of!(FlowKey4, src_port) + 4);
    assert!(size_of::<ServiceKey>() == offset_of!(ServiceKey, port) + 4);
    assert!(size_of::<ServiceKey4>() == offset_of!(ServiceKey4, port) + 4);
};
