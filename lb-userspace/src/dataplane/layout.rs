//! Adoption's safety check: pinned maps compared, field by field, with what
//! the embedded program declares.

use aya::maps::{Array, MapData};
use lb_common::{maps, rings_len, LAYOUT_VERSION};

use super::{map_err, open_pinned, DataplaneError, Shape, PROGRAM_OBJECT};

/// How the kernel sees a map: what adoption compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// The first difference between a pinned map and what this program needs,
/// as (what, pinned, wanted). Pure.
pub fn layout_difference(pinned: MapShape, wanted: MapShape) -> Option<(&'static str, u32, u32)> {
    [
        ("map type", pinned.map_type, wanted.map_type),
        ("key size", pinned.key_size, wanted.key_size),
        ("value size", pinned.value_size, wanted.value_size),
        ("max entries", pinned.max_entries, wanted.max_entries),
    ]
    .into_iter()
    .find(|(_, p, w)| p != w)
}

/// Refuses pins this program cannot adopt, before anything is loaded: a
/// `VERSION` of another layout, or any pinned map whose type, key size,
/// value size or entry count differs from what the embedded program
/// declares (sized by `shape`, as the kernel reports it). Without this, a
/// pinned map of another size would be reopened and misread.
pub(super) fn check_pinned_layout(shape: &Shape) -> Result<(), DataplaneError> {
    let dir = &shape.pin_path;
    let version_pin = dir.join(maps::VERSION);
    if version_pin.exists() {
        let version: Array<MapData, u32> = open_pinned(dir, maps::VERSION)?;
        let pinned = version.get(&0, 0).map_err(map_err(maps::VERSION))?;
        if pinned != LAYOUT_VERSION {
            return Err(DataplaneError::LayoutVersion {
                path: dir.clone(),
                pinned,
                wanted: LAYOUT_VERSION,
            });
        }
    }
    let Ok(obj) = aya_obj::Object::parse(PROGRAM_OBJECT) else {
        return Ok(());
    };
    for (name, map) in &obj.maps {
        if map.pinning() != aya_obj::maps::PinningType::ByName {
            continue;
        }
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|md| md.info())
            .map_err(|e| DataplaneError::Layout {
                path: path.clone(),
                what: "cannot be read",
                pinned: 0,
                wanted: 0,
                reason: e.to_string(),
            })?;
        let max_entries = match name.as_str() {
            maps::RINGS => rings_len(shape.ring_size),
            maps::FLOWS => lb_common::flow_buckets(shape.flow_table_size),
            _ => map.max_entries(),
        };
        let pinned = MapShape {
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        let wanted = MapShape {
            map_type: map.map_type(),
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries,
        };
        // A different ring_size or flow_table_size alone has its own,
        // clearer message (below, in `load`).
        let sized_by_config = matches!(name.as_str(), maps::RINGS | maps::FLOWS);
        let same_but_size = (MapShape {
            max_entries: 0,
            ..pinned
        }) == (MapShape {
            max_entries: 0,
            ..wanted
        });
        if sized_by_config && same_but_size {
            continue;
        }
        if let Some((what, p, w)) = layout_difference(pinned, wanted) {
            return Err(DataplaneError::Layout {
                path,
                what,
                pinned: p,
                wanted: w,
                reason: String::new(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_differences_name_the_first_field_that_differs() {
        let want = MapShape {
            map_type: 2,
            key_size: 4,
            value_size: 64,
            max_entries: 4160,
        };
        assert_eq!(layout_difference(want, want), None);
        let older = MapShape {
            value_size: 32,
            max_entries: 100,
            ..want
        };
        assert_eq!(layout_difference(older, want), Some(("value size", 32, 64)));
        let hash = MapShape {
            map_type: 1,
            ..want
        };
        assert_eq!(layout_difference(hash, want), Some(("map type", 1, 2)));
    }
}
