//! The controller's view of the data plane, and the real one behind it.
use super::*;

/// The controller's view of the data plane: what it writes and reads back.
/// [`Dataplane`] is the real one; tests use a fake.
pub trait DataplaneOps: Send {
    /// `flags`: `lb_common::VIP_F_*` bits (see [`vip_flags`]).
    /// `flow_idle_ms`: the pool's (0: flows never idle out).
    fn publish_vip(
        &mut self,
        vip: Endpoint,
        vip_index: u32,
        ring: &[u32],
        flags: u32,
        flow_idle_ms: u32,
    ) -> Result<(), DataplaneError>;
    /// Writes what the program must know about this host: the attached
    /// interfaces' MACs and redirect targets, and this network namespace's
    /// local addresses (so replies to the controller's own probes are told
    /// apart from client traffic). Addresses change: called again every
    /// [`HOST_SYNC_EVERY`].
    fn sync_host(&mut self, interfaces: &[String]) -> Result<(), DataplaneError>;
    /// Writes the host's other MACs (`[dataplane] extra_macs`): frames to
    /// them are this host's too.
    fn sync_extra_macs(&mut self, macs: &[[u8; 6]]) -> Result<(), DataplaneError>;
    fn remove_vip(&mut self, vip: Endpoint) -> Result<(), DataplaneError>;
    fn write_backend(&mut self, slot: &BackendSlot) -> Result<(), DataplaneError>;
    fn free_backend(&mut self, slot: u32) -> Result<(), DataplaneError>;
    /// Replies from `backend` (a pool's backend address and protocol) are
    /// rewritten to come from `vip`.
    fn write_reply(
        &mut self,
        backend: Endpoint,
        vip: SocketAddr,
        slot: u32,
        vip_index: u32,
    ) -> Result<(), DataplaneError>;
    fn remove_reply(&mut self, backend: Endpoint) -> Result<(), DataplaneError>;
    fn write_name(&mut self, index: u32, name: &str) -> Result<(), DataplaneError>;
    /// (pool name, vip, vip index) of every VIP in the map.
    fn adopt_vips(&self) -> Result<Vec<(String, Endpoint, u32)>, DataplaneError>;
    /// (backend name, slot) of every slot in use.
    fn adopt_backends(&self) -> Result<Vec<(String, BackendSlot)>, DataplaneError>;
    /// Every reply entry: (backend endpoint, what it says).
    fn adopt_replies(&self) -> Result<Vec<(Endpoint, ReplyImage)>, DataplaneError>;
    /// Where each of `interfaces` stands with the program: an interface
    /// deleted (and maybe created again) leaves its link defunct; `xdplb
    /// down --force` can take every link away under a running controller,
    /// which must then stop announcing what it no longer forwards.
    fn links(&self, interfaces: &[String]) -> Vec<(String, LinkState)>;
    /// Attaches the program again to an interface whose link is defunct,
    /// if it exists again; whether it did.
    fn reattach(&mut self, iface: &str, mode: AttachMode) -> Result<bool, DataplaneError>;
}

impl DataplaneOps for Dataplane {
    fn publish_vip(
        &mut self,
        vip: Endpoint,
        idx: u32,
        ring: &[u32],
        flags: u32,
        flow_idle_ms: u32,
    ) -> Result<(), DataplaneError> {
        Dataplane::publish_vip_idle(self, vip, idx, ring, flags, flow_idle_ms)
    }
    fn sync_host(&mut self, interfaces: &[String]) -> Result<(), DataplaneError> {
        Dataplane::sync_host(self, interfaces)
    }
    fn sync_extra_macs(&mut self, macs: &[[u8; 6]]) -> Result<(), DataplaneError> {
        Dataplane::sync_extra_macs(self, macs)
    }
    fn remove_vip(&mut self, vip: Endpoint) -> Result<(), DataplaneError> {
        Dataplane::remove_vip(self, vip)
    }
    fn write_backend(&mut self, slot: &BackendSlot) -> Result<(), DataplaneError> {
        Dataplane::write_backend(self, slot)
    }
    fn free_backend(&mut self, slot: u32) -> Result<(), DataplaneError> {
        Dataplane::free_backend(self, slot)
    }
    fn write_reply(
        &mut self,
        backend: Endpoint,
        vip: SocketAddr,
        slot: u32,
        vip_index: u32,
    ) -> Result<(), DataplaneError> {
        Dataplane::write_reply(self, backend, vip, slot, vip_index)
    }
    fn remove_reply(&mut self, backend: Endpoint) -> Result<(), DataplaneError> {
        Dataplane::remove_reply(self, backend)
    }
    fn write_name(&mut self, index: u32, name: &str) -> Result<(), DataplaneError> {
        Dataplane::write_name(self, index, name)
    }
    fn adopt_vips(&self) -> Result<Vec<(String, Endpoint, u32)>, DataplaneError> {
        self.read_vips()?
            .into_iter()
            .map(|(vip, meta)| Ok((self.read_name(meta.index)?, vip, meta.index)))
            .collect()
    }
    fn adopt_backends(&self) -> Result<Vec<(String, BackendSlot)>, DataplaneError> {
        self.read_backends()?
            .into_iter()
            .map(|b| Ok((self.read_name(backend_name_index(b.slot))?, b)))
            .collect()
    }
    fn adopt_replies(&self) -> Result<Vec<(Endpoint, ReplyImage)>, DataplaneError> {
        Ok(self
            .read_replies()?
            .into_iter()
            .map(|(backend, vip, slot, vip_index)| {
                (
                    backend,
                    ReplyImage {
                        vip,
                        slot,
                        vip_index,
                    },
                )
            })
            .collect())
    }
    fn links(&self, interfaces: &[String]) -> Vec<(String, LinkState)> {
        interfaces
            .iter()
            .map(|i| (i.clone(), self.link_state(i)))
            .collect()
    }
    fn reattach(&mut self, iface: &str, mode: AttachMode) -> Result<bool, DataplaneError> {
        Dataplane::reattach(self, iface, mode)
    }
}
