//! Who is who: the `PeerId` behind each opaque `PeerHandle`, the open connections, and the
//! peers mDNS found.

use crate::service::PeerHandle;
use libp2p::{Multiaddr, PeerId};
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Default)]
pub(crate) struct Peers {
    handles: HashMap<PeerId, PeerHandle>,
    ids: BTreeMap<PeerHandle, PeerId>,
    next: u64,
    /// Open connections' remote addresses, per peer.
    pub connected: HashMap<PeerId, Vec<Multiaddr>>,
    /// Peers the service banned (they keep their handle until the ban ends).
    pub banned: HashSet<PeerId>,
    /// Peers found by mDNS and not expired: redialled while unconnected.
    pub mdns: HashMap<PeerId, Multiaddr>,
    /// The addresses connected peers say they listen on (identify), for tickets.
    pub listen: HashMap<PeerId, Vec<Multiaddr>>,
}

impl Peers {
    /// The handle of a peer, made on first sight.
    pub fn handle(&mut self, peer: PeerId) -> PeerHandle {
        if let Some(h) = self.handles.get(&peer) {
            return *h;
        }
        self.next += 1;
        let h = PeerHandle(self.next);
        self.handles.insert(peer, h);
        self.ids.insert(h, peer);
        h
    }

    /// The handle of a peer, if it has one.
    pub fn known(&self, peer: &PeerId) -> Option<PeerHandle> {
        self.handles.get(peer).copied()
    }

    /// The peer behind a handle.
    pub fn id(&self, handle: PeerHandle) -> Option<PeerId> {
        self.ids.get(&handle).copied()
    }

    /// Forgets a peer's handle unless it is connected or banned (its next connection gets a
    /// new one; the service forgot it when it disconnected).
    pub fn forget_if_idle(&mut self, peer: &PeerId) {
        if self.connected.contains_key(peer) || self.banned.contains(peer) {
            return;
        }
        if let Some(h) = self.handles.remove(peer) {
            self.ids.remove(&h);
        }
    }

    /// Every handle with its peer id, for status.
    pub fn names(&self) -> BTreeMap<PeerHandle, String> {
        self.ids.iter().map(|(h, p)| (*h, p.to_string())).collect()
    }
}
