//! The pinned flow table (`FLOWS`) from user space: set-associative
//! buckets of [`FlowSlot`]s keyed by a tag of the 5-tuple (see
//! `lb-ebpf/src/maps.rs` for why). The map is BPF_F_MMAPABLE, so it is
//! read through a shared mapping, the same memory the program writes:
//! counting a million flows is a 16 MiB scan, not two system calls an
//! entry. Words are read and cleared with atomics; the program never
//! takes a lock on a slot, so a slot read here can be mid-rewrite, which
//! only ever miscounts one flow once.
use std::{
    os::fd::{AsFd, AsRawFd},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{Array, MapData};
use lb_common::{
    flow_bucket_pair, flow_tag, flow_tag6, maps, FlowBucket, FlowKey, FlowKey6, FlowSlot, FLOW_WAYS,
};

use super::{map_err, open_pinned, DataplaneError};

/// Words per slot: the tag, then backend (low half) and seen (high half).
const SLOT_WORDS: usize = 2;

/// A shared mapping of the pinned `FLOWS`, with the table's tag seed.
pub struct FlowTable {
    words: *const AtomicU64,
    len_bytes: usize,
    buckets: u32,
    seed: u64,
    // Keeps the map open while mapped (the mapping holds its own reference
    // too, but the fd documents what this is).
    _map: MapData,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for FlowTable {}
unsafe impl Sync for FlowTable {}

impl Drop for FlowTable {
    fn drop(&mut self) {
        // SAFETY: unmapping what `open` mapped, with its length.
        unsafe { libc::munmap(self.words as *mut libc::c_void, self.len_bytes) };
    }
}

impl FlowTable {
    /// Maps the table pinned under `pin_path`.
    pub fn open(pin_path: &Path) -> Result<FlowTable, DataplaneError> {
        let seed_map: Array<MapData, u64> = open_pinned(pin_path, maps::FLOW_SEED)?;
        let seed = seed_map.get(&0, 0).map_err(map_err(maps::FLOW_SEED))?;
        let map = MapData::from_pin(pin_path.join(maps::FLOWS)).map_err(map_err(maps::FLOWS))?;
        let info = map.info().map_err(map_err(maps::FLOWS))?;
        let buckets = info.max_entries();
        if info.value_size() as usize != std::mem::size_of::<FlowBucket>() {
            return Err(DataplaneError::Layout {
                path: pin_path.join(maps::FLOWS),
                what: "value size",
                pinned: info.value_size(),
                wanted: std::mem::size_of::<FlowBucket>() as u32,
                reason: String::new(),
            });
        }
        let page = page_size();
        let len_bytes =
            (buckets as usize * std::mem::size_of::<FlowBucket>()).div_ceil(page) * page;
        // SAFETY: mapping a BPF_F_MMAPABLE array map's fd for its whole
        // data (rounded to pages, as the kernel allows); checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataplaneError::FlowTableMap {
                path: pin_path.join(maps::FLOWS),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(FlowTable {
            words: ptr as *const AtomicU64,
            len_bytes,
            buckets,
            seed,
            _map: map,
        })
    }

    /// Buckets in the table.
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// Flows the table holds at most.
    pub fn capacity(&self) -> usize {
        self.buckets as usize * FLOW_WAYS
    }

    /// The tag the program gives an IPv4 flow.
    pub fn tag(&self, key: &FlowKey) -> u64 {
        flow_tag(key, self.seed)
    }

    /// The tag the program gives an IPv6 flow.
    pub fn tag6(&self, key: &FlowKey6) -> u64 {
        flow_tag6(key, self.seed)
    }

    fn word(&self, slot: usize, word: usize) -> &AtomicU64 {
        assert!(slot < self.capacity() && word < SLOT_WORDS);
        // SAFETY: in bounds of the mapping (checked), which lives as long
        // as `self`; AtomicU64 has u64's layout and the data is 8-aligned.
        unsafe { &*self.words.add(slot * SLOT_WORDS + word) }
    }

    /// Slot `index` (bucket × FLOW_WAYS + way) as it is now.
    pub fn slot(&self, index: usize) -> FlowSlot {
        let tag = self.word(index, 0).load(Ordering::Acquire);
        let rest = self.word(index, 1).load(Ordering::Relaxed);
        FlowSlot {
            tag,
            backend: rest as u32,
            seen: (rest >> 32) as u32,
        }
    }

    /// The slot indices of the two buckets the flow of `tag` may be in.
    pub fn ways(&self, tag: u64) -> impl Iterator<Item = usize> {
        let (a, b) = flow_bucket_pair(tag, self.buckets);
        let (a, b) = (a as usize * FLOW_WAYS, b as usize * FLOW_WAYS);
        (a..a + FLOW_WAYS).chain(b..b + FLOW_WAYS)
    }

    /// Where the flow of `tag` is: its slot index.
    pub fn find(&self, tag: u64) -> Option<usize> {
        self.ways(tag).find(|&i| self.slot(i).holds(tag))
    }

    /// The entry of an IPv4 flow.
    pub fn get(&self, key: &FlowKey) -> Option<FlowSlot> {
        self.find(self.tag(key)).map(|i| self.slot(i))
    }

    /// The entry of an IPv6 flow.
    pub fn get6(&self, key: &FlowKey6) -> Option<FlowSlot> {
        self.find(self.tag6(key)).map(|i| self.slot(i))
    }

    /// Forgets the flow of `tag`; whether it was there.
    pub fn remove(&self, tag: u64) -> bool {
        match self.find(tag) {
            Some(i) => self.clear(i, self.slot(i).tag),
            None => false,
        }
    }

    /// Empties slot `index` if its tag word is still `word` (the program
    /// may have given the slot to another flow since it was read).
    pub fn clear(&self, index: usize, word: u64) -> bool {
        self.word(index, 0)
            .compare_exchange(word, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Writes `slot` for the flow of its tag: over the flow's own entry,
    /// else the first empty way of its buckets. For tests and tools that stage a
    /// table; the program never needs it. Whether there was room.
    pub fn put(&self, slot: FlowSlot) -> bool {
        let tag = slot.tag & !lb_common::FLOW_TAG_FLAGS;
        let Some(i) = self
            .find(tag)
            .or_else(|| self.ways(tag).find(|&i| self.slot(i).tag == 0))
        else {
            return false;
        };
        self.word(i, 1).store(
            slot.backend as u64 | (slot.seen as u64) << 32,
            Ordering::Relaxed,
        );
        self.word(i, 0).store(slot.tag, Ordering::Release);
        true
    }

    /// Records a flow a peer gateway pinned (flow sync): `word` (tag and
    /// flags) on `backend`, seen at `seen`, if the table does not hold the
    /// flow already (its own entry is this gateway's truth) and one of its
    /// buckets has an empty way. Never over a live entry. The data plane's
    /// publish order: the way is claimed by swapping its empty tag word
    /// for a word no flow has (bit 8 clear: `tag_of` sets it in every
    /// tag), then backend and time are written, then the tag, released
    /// last, so a reader that matches the tag finds this backend. Whether
    /// it was recorded.
    pub fn insert_absent(&self, word: u64, backend: u32, seen: u32) -> bool {
        /// Matches no flow; looks like an established entry (the program
        /// evicts those last) while it is being written.
        const CLAIMED: u64 =
            0xffff_fe00 | (lb_common::FLOW_F_ACKED | lb_common::FLOW_F_REPLIED) as u64;
        let tag = word & !lb_common::FLOW_TAG_FLAGS;
        if tag == 0 || tag & 0x100 == 0 || self.find(tag).is_some() {
            return false;
        }
        for i in self.ways(tag) {
            if self
                .word(i, 0)
                .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            self.word(i, 1)
                .store(backend as u64 | (seen as u64) << 32, Ordering::Relaxed);
            // Only our claim may be replaced: if the program took the way
            // meanwhile (it writes without a claim), leave its flow. (The
            // program picks an established-looking way only when both
            // buckets hold nothing else; if it does within the few
            // nanoseconds between the claim and the store above, its tag
            // may meet this backend: the same window two CPUs inserting
            // at once have today, which the atomic publish of issue 22
            // closes for both.)
            return self
                .word(i, 0)
                .compare_exchange(CLAIMED, word, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        }
        false
    }

    /// Every occupied slot, as (index, entry).
    pub fn occupied(&self) -> impl Iterator<Item = (usize, FlowSlot)> + '_ {
        (0..self.capacity())
            .map(|i| (i, self.slot(i)))
            .filter(|(_, s)| s.tag != 0)
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}
