//! An array map's values mapped into this process (`BPF_F_MMAPABLE`, Linux
//! 5.5), written with plain stores: a batch update copies each entry in on
//! its own, which for 10,000 Maglev rings was most of a start's programming.

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{Array, IterableMap as _, MapData, MapError},
    sys::SyscallError,
};

use super::batch::check_range;

/// The values of an array map created with `BPF_F_MMAPABLE`, shared with
/// the data path that reads them.
pub struct MappedArray<V> {
    values: *mut u8,
    len: usize,
    max_entries: u32,
    _values: PhantomData<V>,
}

// SAFETY: the mapping belongs to this value alone (nothing else in the
// process refers to it), and writes to it need `&mut self`.
unsafe impl<V: Send> Send for MappedArray<V> {}

impl<V: Pod> MappedArray<V> {
    /// Maps `map`'s values; fails (EINVAL) for a map created without
    /// `BPF_F_MMAPABLE`.
    pub fn new(map: &Array<MapData, V>) -> Result<Self, MapError> {
        let max_entries = map.len();
        let len = max_entries as usize * Self::STRIDE;
        // SAFETY: a new shared mapping of the map's descriptor, at an address
        // the kernel picks; the kernel checks `len` against the map's size.
        let values = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.map().fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if values == libc::MAP_FAILED {
            return Err(MapError::SyscallError(SyscallError {
                call: "mmap",
                io_error: io::Error::last_os_error(),
            }));
        }
        Ok(Self {
            values: values.cast(),
            len,
            max_entries,
            _values: PhantomData,
        })
    }

    /// The kernel lays an array's values out 8-byte aligned.
    const STRIDE: usize = size_of::<V>().next_multiple_of(8);

    /// Sets `values` at consecutive indices from `first` on.
    pub fn set_range(&mut self, first: u32, values: &[V]) -> Result<(), MapError> {
        check_range(self.max_entries, first, values.len())?;
        for (index, value) in (first as usize..).zip(values) {
            // SAFETY: `check_range` keeps `index` below `max_entries`, so the
            // value's bytes lie inside the mapping; volatile, as the data
            // path reads this memory.
            unsafe {
                let at = self.values.add(index * Self::STRIDE);
                std::ptr::write_volatile(at.cast::<V>(), *value);
            }
        }
        Ok(())
    }
}

impl<V> Drop for MappedArray<V> {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, unmapped once.
        unsafe { libc::munmap(self.values.cast(), self.len) };
    }
}
