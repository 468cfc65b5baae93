//! Many entries of a map in one system call (`BPF_MAP_UPDATE_BATCH` and
//! `BPF_MAP_LOOKUP_BATCH`, Linux 5.6): a Maglev ring has hundreds to
//! thousands of entries, a flow table up to millions, and a `bpf()` call for
//! each (two, for a hash map's next key and its value) was most of the time
//! reading them back for a listing or a metrics scrape took. Rings are
//! written this way only into a map that cannot be mapped (see `mapped`).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{Array, HashMap, IterableMap as _, MapData, MapError, PerCpuArray},
    sys::SyscallError,
};

/// `enum bpf_cmd` in the kernel's `linux/bpf.h`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
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

impl BatchAttr {
    /// A batch of `count` entries of `map`, their keys and values at the
    /// addresses `keys` and `values`, from the map's start.
    fn of(map: &MapData, keys: u64, values: u64, count: u32) -> Self {
        Self {
            in_batch: 0,
            out_batch: 0,
            keys,
            values,
            count,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        }
    }
}

/// Sets `values` at consecutive indices of `map`, from `first` on.
pub fn set_range<V: Pod>(
    map: &mut Array<MapData, V>,
    first: u32,
    values: &[V],
) -> Result<(), MapError> {
    let count = check_range(map.len(), first, values.len())?;
    let keys: Vec<u32> = (first..first + count).collect();
    let mut attr = BatchAttr::of(
        map.map(),
        keys.as_ptr() as u64,
        values.as_ptr() as u64,
        count,
    );
    // SAFETY: `attr` points at `count` keys and values that outlive the
    // call; the kernel reads them and writes back only `attr.count`.
    unsafe { batch(BPF_MAP_UPDATE_BATCH, &mut attr, "bpf_map_update_batch") }
}

/// The `count` entries of `map` at consecutive indices from `first` on.
pub fn get_range<V: Pod>(
    map: &Array<MapData, V>,
    first: u32,
    count: u32,
) -> Result<Vec<V>, MapError> {
    let count = check_range(map.len(), first, count as usize)?;
    let mut keys = vec![0u32; count as usize];
    let mut values: Vec<V> = Vec::with_capacity(count as usize);
    // SAFETY: room for `count` keys and values.
    let written = unsafe {
        lookup_batch(
            map.map(),
            first.checked_sub(1),
            keys.as_mut_ptr().cast(),
            values.as_mut_ptr().cast(),
            count,
        )?
        .written
    };
    if written != count {
        return Err(MapError::OutOfBounds {
            index: first + written,
            max_entries: map.len(),
        });
    }
    // SAFETY: the kernel wrote `count` values, and any bytes are a `Pod`.
    unsafe { values.set_len(count as usize) };
    Ok(values)
}

/// Every entry of the per-CPU array `map` on each of `cpus` CPUs, in one
/// call: CPU `c`'s value of entry `i` at `i * cpus + c`. The kernel lays
/// the values out 8-byte aligned, so `V`'s size must be a multiple of 8.
pub fn get_all_per_cpu<V: Pod>(
    map: &PerCpuArray<MapData, V>,
    cpus: usize,
) -> Result<Vec<V>, MapError> {
    if !size_of::<V>().is_multiple_of(8) {
        return Err(MapError::InvalidValueSize {
            size: size_of::<V>(),
            expected: size_of::<V>().next_multiple_of(8),
        });
    }
    let count = map.len();
    let values_len = count as usize * cpus;
    let mut keys = vec![0u32; count as usize];
    let mut values: Vec<V> = Vec::with_capacity(values_len);
    // SAFETY: room for `count` keys, and `count` values per CPU.
    let written = unsafe {
        lookup_batch(
            map.map(),
            None,
            keys.as_mut_ptr().cast(),
            values.as_mut_ptr().cast(),
            count,
        )?
        .written
    };
    if written != count {
        return Err(MapError::OutOfBounds {
            index: written,
            max_entries: count,
        });
    }
    // SAFETY: the kernel wrote every CPU's value of `count` entries, and any
    // bytes are a `Pod`.
    unsafe { values.set_len(values_len) };
    Ok(values)
}

/// Every entry of the hash map `map`, `CHUNK` at a time. An entry added or
/// removed meanwhile (a flow the LRU evicts) may be missed; none is read
/// twice.
pub fn get_all_entries<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
) -> Result<Vec<(K, V)>, MapError> {
    const CHUNK: u32 = 4096;
    let mut keys: Vec<K> = Vec::new();
    let mut values: Vec<V> = Vec::new();
    // Where the last call stopped: a bucket index (a `u32` for hash maps).
    let mut after: Option<u32> = None;
    loop {
        keys.reserve(CHUNK as usize);
        values.reserve(CHUNK as usize);
        // SAFETY: room for `CHUNK` more keys and values.
        let looked = unsafe {
            lookup_batch(
                map.map(),
                after,
                keys.spare_capacity_mut().as_mut_ptr().cast(),
                values.spare_capacity_mut().as_mut_ptr().cast(),
                CHUNK,
            )?
        };
        let written = (looked.written as usize).min(CHUNK as usize);
        // SAFETY: the kernel wrote `written` keys and values, and any bytes
        // are a `Pod`.
        unsafe {
            keys.set_len(keys.len() + written);
            values.set_len(values.len() + written);
        }
        match looked.next {
            Some(next) => after = Some(next),
            None => return Ok(keys.into_iter().zip(values).collect()),
        }
    }
}

/// What one `BPF_MAP_LOOKUP_BATCH` call read.
struct Looked {
    /// How many keys and values the kernel wrote.
    written: u32,
    /// Where to go on from (an array's last index, a hash map's bucket);
    /// `None` at the map's end.
    next: Option<u32>,
}

/// Looks up at most `count` entries of `map` (an array, or a hash map, whose
/// batch positions are both a `u32`) into `keys` and `values`: from the
/// first, or from the one after the position `after` an earlier call
/// returned (for an array, an index).
///
/// # Safety
/// `keys` and `values` must have room for `count` keys and values (each
/// CPU's, for a per-CPU map).
unsafe fn lookup_batch(
    map: &MapData,
    after: Option<u32>,
    keys: *mut u8,
    values: *mut u8,
    count: u32,
) -> Result<Looked, MapError> {
    let mut next = 0u32;
    let mut attr = BatchAttr {
        in_batch: after.as_ref().map_or(0, |after| after as *const u32 as u64),
        out_batch: &raw mut next as u64,
        ..BatchAttr::of(map, keys as u64, values as u64, count)
    };
    // SAFETY: `attr` points at room for `count` keys and values (as the
    // caller vouches) and one `u32` each for `in_batch` and `out_batch`, all
    // outliving the call; the kernel writes at most that many and says in
    // `attr.count` how many it wrote, also when it ends with ENOENT.
    match unsafe { batch(BPF_MAP_LOOKUP_BATCH, &mut attr, "bpf_map_lookup_batch") } {
        Ok(()) => Ok(Looked {
            written: attr.count,
            next: Some(next),
        }),
        Err(error) if super::is_absent(&error) => Ok(Looked {
            written: attr.count,
            next: None,
        }),
        Err(error) => Err(error),
    }
}

/// `len` as a count of entries that fits in an array of `max_entries`
/// from `first` on.
pub(super) fn check_range(max_entries: u32, first: u32, len: usize) -> Result<u32, MapError> {
    let count = u32::try_from(len).map_err(|_| MapError::OutOfBounds {
        index: u32::MAX,
        max_entries,
    })?;
    if u64::from(first) + u64::from(count) > u64::from(max_entries) {
        return Err(MapError::OutOfBounds {
            index: first.saturating_add(count),
            max_entries,
        });
    }
    Ok(count)
}

/// Runs the batch command `command` on `attr`.
///
/// # Safety
/// `attr`'s pointers must be valid for what `command` reads and writes.
unsafe fn batch(
    command: libc::c_long,
    attr: &mut BatchAttr,
    call: &'static str,
) -> Result<(), MapError> {
    // SAFETY: as the caller vouches.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if result < 0 {
        return Err(MapError::SyscallError(SyscallError {
            call,
            io_error: io::Error::last_os_error(),
        }));
    }
    Ok(())
}
