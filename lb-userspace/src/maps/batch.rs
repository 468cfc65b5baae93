//! Many entries of an array map in one system call (`BPF_MAP_UPDATE_BATCH`,
//! Linux 5.6): a Maglev ring has hundreds of entries, and a `bpf()` call for
//! each was most of the time programming thousands of services took.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{Array, IterableMap as _, MapData, MapError},
    sys::SyscallError,
};

/// `enum bpf_cmd` in the kernel's `linux/bpf.h`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of the kernel's `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Sets `values` at consecutive indices of `map`, from `first` on.
pub fn set_range<V: Pod>(
    map: &mut Array<MapData, V>,
    first: u32,
    values: &[V],
) -> Result<(), MapError> {
    let count = u32::try_from(values.len()).map_err(|_| MapError::OutOfBounds {
        index: u32::MAX,
        max_entries: map.len(),
    })?;
    if u64::from(first) + u64::from(count) > u64::from(map.len()) {
        return Err(MapError::OutOfBounds {
            index: first.saturating_add(count),
            max_entries: map.len(),
        });
    }
    let keys: Vec<u32> = (first..first + count).collect();
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: map.map().fd().as_fd().as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: `attr` points at `count` keys and values that outlive the
    // call; the kernel reads them and writes back only `attr.count`.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if result < 0 {
        return Err(MapError::SyscallError(SyscallError {
            call: "bpf_map_update_batch",
            io_error: io::Error::last_os_error(),
        }));
    }
    Ok(())
}
