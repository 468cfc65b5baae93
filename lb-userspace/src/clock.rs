//! The kernel's clocks read from userspace, in nanoseconds: what the data
//! path's own clock (`lb_common::clock`) is set from and compared with.

/// A `clock_gettime` or `clock_getres`.
pub type ClockCall = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;

/// What `call` (`clock_gettime`, `clock_getres`) gives for `clock`.
pub fn nanoseconds(call: ClockCall, clock: libc::clockid_t) -> std::io::Result<u64> {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec.
    if unsafe { call(clock, &mut time) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64)
}
