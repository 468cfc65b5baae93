//! The XDP programs: the entry point and the programs it tail-calls for
//! what is neither TCP nor UDP (`lb_common::SIDE_PATH_PROGRAMS`), set in
//! the program array that names them (`SIDE_PATHS`). The array stays in the
//! loaded object: its entries last only while a file descriptor or a pin
//! refers to it.

use aya::{
    Ebpf,
    maps::ProgramArray,
    programs::{Program, Xdp},
};
use lb_common::{MAP_SIDE_PATHS, PROGRAM_NAME, SIDE_PATH_PROGRAMS};

use super::DataplaneError;
use crate::maps::{MapsError, map_error};

/// Loads the entry point and the side paths, each in a thread of its own:
/// the verifier, which takes most of a load's time, runs in the thread that
/// loads, so the four are verified side by side.
pub fn load(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let wanted: Vec<&'static str> = std::iter::once(PROGRAM_NAME)
        .chain(SIDE_PATH_PROGRAMS)
        .collect();
    let programs: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| wanted.contains(name))
        .collect();
    if let Some(missing) = wanted
        .iter()
        .find(|&&wanted| !programs.iter().any(|(name, _)| *name == wanted))
    {
        return Err(DataplaneError::MissingProgram(missing));
    }
    std::thread::scope(|scope| {
        let loads: Vec<_> = programs
            .into_iter()
            .map(|(_, program)| scope.spawn(move || load_xdp(program)))
            .collect();
        loads.into_iter().try_for_each(|load| {
            load.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
}

fn load_xdp(program: &mut Program) -> Result<(), DataplaneError> {
    let xdp: &mut Xdp = program.try_into().map_err(DataplaneError::Program)?;
    xdp.load().map_err(DataplaneError::Program)
}

/// Sets each side path, loaded, at its index. A pinned array is shared with
/// the program that serves until this load's is attached, so a load does
/// this last, once the maps the new side paths read are set.
pub fn set_side_paths(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    for (index, name) in (0..).zip(SIDE_PATH_PROGRAMS) {
        let fd = xdp(ebpf, name)?
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(DataplaneError::Program)?;
        let map = ebpf
            .map_mut(MAP_SIDE_PATHS)
            .ok_or(MapsError::Missing(MAP_SIDE_PATHS))?;
        ProgramArray::try_from(map)
            .and_then(|mut array| array.set(index, &fd, 0))
            .map_err(|e| map_error(MAP_SIDE_PATHS, e))?;
    }
    Ok(())
}

/// The loaded object's XDP program `name`.
pub(super) fn xdp<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .try_into()
        .map_err(DataplaneError::Program)
}
