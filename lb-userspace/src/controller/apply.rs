//! The applier: writes the difference between the live image and a target
//! image into the data plane, in [`diff`]'s order, and keeps the live image
//! as the writes succeed (a failure half-way leaves it saying exactly what
//! was written, so the next apply starts from the truth).
use super::*;

/// The data plane writer and what it knows the maps hold.
pub(super) struct Applier<D: DataplaneOps> {
    pub(super) dp: D,
    pub(super) live: Image,
    /// `[announce]`: keeps BIRD's routes file in step (see [`crate::announce`]).
    pub(super) announcer: Option<crate::announce::Announcer>,
    /// `[sync]`: told after every ring published, so the peers hear of
    /// the flows the new ring would move at once.
    pub(super) flow_sync: Option<crate::flowsync::task::Handle>,
    ring_size: u32,
}

impl<D: DataplaneOps> Applier<D> {
    /// Adopts what `dp` holds: VIP entries (their rings' inputs unknown),
    /// slots, reply entries and the names of the indices in use.
    pub(super) fn adopt(dp: D, ring_size: u32) -> Result<Applier<D>, DataplaneError> {
        let mut live = Image::default();
        for (pool, endpoint, index) in dp.adopt_vips()? {
            live.names.insert(index, pool.clone());
            // Flags and idle time as unknown as the ring: it is published
            // again whole.
            live.vips.insert(
                index,
                VipImage {
                    pool,
                    endpoint,
                    flags: 0,
                    flow_idle_ms: 0,
                    ring: None,
                },
            );
        }
        for (name, b) in dp.adopt_backends()? {
            live.names.insert(backend_name_index(b.slot), name);
            live.slots.insert(b.slot, b);
        }
        for (backend, reply) in dp.adopt_replies()? {
            live.replies.insert(backend, reply);
        }
        Ok(Applier {
            dp,
            live,
            announcer: None,
            flow_sync: None,
            ring_size,
        })
    }

    /// Makes the data plane hold `target` and hands the announcer its set;
    /// `announce` is the config's `[announce]`. Returns how many writes it
    /// took.
    pub(super) fn apply(
        &mut self,
        target: &Image,
        announce: Option<&AnnounceConfig>,
    ) -> Result<usize, ControllerError> {
        let writes = self.write(target)?;
        // Every apply: a changed `[announce]` with the same set still needs
        // its announcer replaced (or stopped).
        crate::announce::Announcer::sync(
            &mut self.announcer,
            announce,
            self.live.announced.clone().unwrap_or_default(),
        );
        Ok(writes)
    }

    /// Makes the maps hold `target`, leaving the announcer alone (a
    /// restart waiting for its first probes announces nothing anew and
    /// withdraws nothing). Returns how many writes it took.
    pub(super) fn write(&mut self, target: &Image) -> Result<usize, ControllerError> {
        let changes = diff(&self.live, target);
        let mut published = false;
        let written = changes.iter().try_for_each(|change| {
            self.write_one(change)?;
            self.live.record(change);
            published |= matches!(change, Change::Publish { .. });
            Ok::<_, DataplaneError>(())
        });
        // Also when a later write failed: the rings published stand.
        if published {
            if let Some(sync) = &self.flow_sync {
                sync.ring_changed();
            }
        }
        written?;
        Ok(changes.len())
    }

    fn write_one(&mut self, change: &Change) -> Result<(), DataplaneError> {
        match change {
            Change::Name { index, name } => self.dp.write_name(*index, name),
            Change::Backend(meta) => self.dp.write_backend(meta),
            Change::Free(slot) => self.dp.free_backend(*slot),
            Change::Reply { backend, reply } => {
                self.dp
                    .write_reply(*backend, reply.vip, reply.slot, reply.vip_index)
            }
            Change::RemoveReply(backend) => self.dp.remove_reply(*backend),
            Change::Publish { index, vip } => {
                let members = vip.ring.as_deref().unwrap_or_default();
                let entries: Vec<MaglevEntry> = members
                    .iter()
                    .map(|m| MaglevEntry {
                        id: m.slot,
                        key: &m.name,
                        weight: m.weight,
                    })
                    .collect();
                let ring = maglev::build(&entries, self.ring_size);
                self.dp
                    .publish_vip(vip.endpoint, *index, &ring, vip.flags, vip.flow_idle_ms)?;
                debug!(
                    pool = vip.pool,
                    active = members.len(),
                    flags = vip.flags,
                    "ring published"
                );
                if members.is_empty() {
                    warn!(
                        pool = vip.pool,
                        "no usable backend: the VIP's ring is empty"
                    );
                }
                Ok(())
            }
            Change::RemoveVip(endpoint) => self.dp.remove_vip(*endpoint),
            // Handed over at the end of `apply`.
            Change::Announce(_) => Ok(()),
        }
    }
}
