//! Taking a policy map out of the loaded object: its type and size checked, and its errors
//! named after it. Shared by `maps` (`PORT_POLICY` and the hash maps) and `local_table`.

use std::os::fd::{AsFd, OwnedFd};

use aya::maps::{Array, Map, MapData, MapError};

use crate::error::PolicyError;

/// A map error, named after the map `map`.
pub(super) fn map_err(map: &'static str) -> impl Fn(MapError) -> PolicyError {
    move |source| PolicyError::Map { map, source }
}

/// `map` as an array of `T` with exactly `len` slots, and a clone of its fd for batch
/// reads (`bpf_batch`); a map of another type or size is refused, naming `name`.
pub(super) fn sized_array<T: aya::Pod>(
    map: Map,
    name: &'static str,
    len: u32,
) -> Result<(Array<MapData, T>, OwnedFd), PolicyError> {
    let Map::Array(data) = &map else {
        return Err(PolicyError::WrongType { map: name, wanted: "an array" });
    };
    let fd =
        data.fd().as_fd().try_clone_to_owned().map_err(|source| PolicyError::Io { map: name, source })?;
    let array: Array<MapData, T> = map.try_into().map_err(map_err(name))?;
    if array.len() != len {
        return Err(PolicyError::WrongSize { map: name, len: array.len(), needed: len });
    }
    Ok((array, fd))
}
