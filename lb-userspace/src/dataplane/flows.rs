//! The pinned flow table (`FLOWS`) from user space: set-associative
//! buckets of [`FlowSlot`]s keyed by a tag of the 5-tuple (see
//! `lb-ebpf/src/maps.rs` for why). The map is BPF_F_MMAPABLE, so it is
//! read through a shared mapping, the same memory the program writes:
//! counting a million flows is a 16 MiB scan, not two system calls an
//! entry. Words are read and written with atomics, by the rules the
//! program follows (see [`FlowSlot`]): a tag word changes only by
//! compare-and-swap against the word judged, and a slot's backend is
//! taken only with a tag that held still around its read.
use std::{
    os::fd::{AsFd, AsRawFd},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{Array, MapData};
use lb_common::{
    flow_bucket_pair, flow_tag, flow_tag6, maps, FlowBucket, FlowKey, FlowKey6, FlowSlot,
    FLOW_CLAIMED, FLOW_TAG_FLAGS, FLOW_WAYS,
};

use super::{map_err, open_pinned, DataplaneError};

/// Words per slot: the tag, then backend (low half) and seen (high half).
const SLOT_WORDS: usize = 2;

/// Reads of a slot [`FlowTable::slot`] makes before it calls the slot
/// busy: an insert writes its three words in well under a microsecond.
const SLOT_READ_TRIES: usize = 64;

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

    /// Slot `index` (bucket × FLOW_WAYS + way) as it is now: a tag with
    /// the backend its flow was written with. The program may be writing
    /// the slot meanwhile (see [`FlowSlot`]): the tag is read before and
    /// after the rest and the read retried until they agree; a slot still
    /// changing after [`SLOT_READ_TRIES`] reads as [`FLOW_CLAIMED`] (being
    /// written), which nothing counts or clears.
    pub fn slot(&self, index: usize) -> FlowSlot {
        for _ in 0..SLOT_READ_TRIES {
            let tag = self.word(index, 0).load(Ordering::Acquire);
            let rest = self.word(index, 1).load(Ordering::Acquire);
            let again = self.word(index, 0).load(Ordering::Acquire);
            if tag & !FLOW_TAG_FLAGS == again & !FLOW_TAG_FLAGS {
                return FlowSlot {
                    tag,
                    backend: rest as u32,
                    seen: (rest >> 32) as u32,
                };
            }
        }
        FlowSlot {
            tag: FLOW_CLAIMED,
            ..FlowSlot::default()
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
    /// As the program inserts: claims the way from the word it found,
    /// then writes backend and seen, then the tag; false also when the
    /// program changed the way in between.
    pub fn put(&self, slot: FlowSlot) -> bool {
        let tag = slot.tag & !FLOW_TAG_FLAGS;
        let Some(i) = self
            .find(tag)
            .or_else(|| self.ways(tag).find(|&i| self.slot(i).tag == 0))
        else {
            return false;
        };
        let found = self.slot(i).tag;
        if found == FLOW_CLAIMED
            || self
                .word(i, 0)
                .compare_exchange(found, FLOW_CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        self.word(i, 1).store(
            slot.backend as u64 | (slot.seen as u64) << 32,
            Ordering::Release,
        );
        self.word(i, 0).store(slot.tag, Ordering::Release);
        true
    }

    /// Writes `word` into slot `index`'s tag word as it is, bypassing the
    /// publishing rules (for tests that stage a slot as another CPU would
    /// leave it: claimed, or reused).
    pub fn write_tag_word(&self, index: usize, word: u64) {
        self.word(index, 0).store(word, Ordering::Release);
    }

    /// Records a flow a peer gateway pinned (flow sync): `word` (tag and
    /// flags) on `backend`, seen at `seen`, if the table does not hold the
    /// flow already (its own entry is this gateway's truth) and one of its
    /// buckets has an empty way. Never over a live entry nor a claimed
    /// way. Whether it was recorded.
    ///
    /// The data plane's publish protocol (`lb-ebpf/src/select.rs`,
    /// `insert`; [`FlowSlot`]): the way is claimed by compare-and-swap of
    /// its tag word from the word judged (0: empty) to [`FLOW_CLAIMED`],
    /// then backend and seen are written, then the tag is published by
    /// compare-and-swap from the claim. Why no reader can pair this tag
    /// with another flow's backend, nor another flow's tag with this
    /// backend: only an empty way is claimed, and an empty word matches no
    /// flow, so no reader was using the way's backend; while claimed, the
    /// word matches no flow either ([`FLOW_CLAIMED`] has bits 8–63 clear,
    /// every tag has bit 8 set), and the program neither takes a claimed
    /// way as a victim nor flags it, census never reaps it; the tag appears
    /// only with the publishing swap, after the backend store (release
    /// order; x86 keeps stores in order and the swap is a full barrier), so
    /// a reader that matches it reads this backend, and re-checks the tag
    /// around that read as it does for the program's own inserts. A
    /// program insert of the same flow racing this one (its scan before
    /// our publish) may leave the flow in two ways: it then goes by
    /// whichever a lookup meets first, the peer's pin or this ring's
    /// choice, both backends of this flow's VIP; no other flow is touched.
    pub fn insert_absent(&self, word: u64, backend: u32, seen: u32) -> bool {
        let tag = word & !FLOW_TAG_FLAGS;
        if tag & 0x100 == 0 || self.find(tag).is_some() {
            return false;
        }
        for i in self.ways(tag) {
            if self
                .word(i, 0)
                .compare_exchange(0, FLOW_CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            self.word(i, 1)
                .store(backend as u64 | (seen as u64) << 32, Ordering::Release);
            // Nobody else writes a claimed tag word: this swap cannot
            // fail, and is a swap (not a store) so that, if that rule ever
            // changed, a claim taken over is left to its new owner.
            return self
                .word(i, 0)
                .compare_exchange(FLOW_CLAIMED, word, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        }
        false
    }

    /// Every slot holding a flow, as (index, entry): neither empty nor
    /// claimed by an insert under way.
    pub fn occupied(&self) -> impl Iterator<Item = (usize, FlowSlot)> + '_ {
        (0..self.capacity())
            .map(|i| (i, self.slot(i)))
            .filter(|(_, s)| s.tag != 0 && s.tag != FLOW_CLAIMED)
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
