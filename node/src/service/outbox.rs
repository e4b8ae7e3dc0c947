//! The outbox: what one group of inputs asks the outside world to do, in the order it must
//! happen. Store writes come first; everything that depends on them (a reply to a write, a
//! relayed or published contribution, an event, a sync answer read from memory) waits until the
//! engine has flushed them, and is corrected by [`Outbox::release`] when the flush failed.

use super::{ExchangeId, NetAction, NodeEvent, Output, PeerHandle, ServiceError, Verdict};
use crate::store::{SpaceRecord, Write};
use agora_protocol::membership::PrivateSpace;
use agora_protocol::sync::SyncResponse;
use agora_protocol::{DocId, SpaceId};
use std::collections::BTreeMap;

/// Whether an output may leave before the group's writes are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// It does not depend on this group's writes.
    Now,
    /// It vouches for this group's writes: only after a successful flush.
    Durable,
}

/// What the current group has done so far, and what it must undo if its flush fails.
#[derive(Default)]
pub(crate) struct Outbox {
    pub writes: Vec<Write>,
    outputs: Vec<Output>,
    /// `whens[i]` says whether `outputs[i]` may leave before the flush.
    whens: Vec<When>,
    /// Documents changed in memory by this group.
    /// Documents changed in memory by this group (with repeats).
    pub touched: Vec<(SpaceId, DocId)>,
    /// Spaces joined by this group.
    pub joined: Vec<SpaceId>,
    /// The display name before this group changed it.
    pub previous_name: Option<Option<String>>,
    /// Contributions this group counted as accepted.
    pub accepted: u64,
    /// Sync exchanges that ingested a batch in this group.
    pub exchanges: Vec<((PeerHandle, SpaceId), ExchangeId)>,
    /// Private spaces this group changed, as they were before it (`None`: not held), with their
    /// records: what a failed flush restores.
    pub private_before: BTreeMap<SpaceId, (Option<PrivateSpace>, Option<SpaceRecord>)>,
}

impl Outbox {
    /// Queues an output.
    pub fn push(&mut self, output: Output, when: When) {
        self.outputs.push(output);
        self.whens.push(when);
    }

    /// Queues a network action that does not depend on this group's writes.
    pub fn net(&mut self, action: NetAction) {
        self.push(Output::Net(action), When::Now);
    }

    /// Queues an event for API subscribers (after the flush).
    pub fn event(&mut self, event: NodeEvent) {
        self.push(Output::Event(event), When::Durable);
    }

    /// Ends the group: its outputs, in order, as they may leave given whether the flush
    /// succeeded. After a failure nothing that vouches for the lost writes leaves: replies to
    /// writes become errors, accepted gossip is not relayed (`Ignore`, so peers offer it again),
    /// publications and events are dropped, and sync answers become refusals.
    pub fn release(&mut self, failure: Option<&str>) -> Vec<Output> {
        self.touched.clear();
        self.joined.clear();
        self.previous_name = None;
        self.accepted = 0;
        self.exchanges.clear();
        self.private_before.clear();
        let outputs = std::mem::take(&mut self.outputs);
        let whens = std::mem::take(&mut self.whens);
        let Some(failure) = failure else {
            return outputs;
        };
        outputs
            .into_iter()
            .zip(whens)
            .filter_map(|(o, when)| match (o, when) {
                (o, When::Now) => Some(o),
                (Output::Reply { id, result: Ok(_) }, When::Durable) => Some(Output::Reply {
                    id,
                    result: Err(ServiceError::Store(failure.to_string())),
                }),
                (
                    Output::Net(NetAction::Verdict {
                        token,
                        verdict: Verdict::Accept,
                    }),
                    When::Durable,
                ) => Some(Output::Net(NetAction::Verdict {
                    token,
                    verdict: Verdict::Ignore,
                })),
                (Output::Net(NetAction::SyncResponse { peer, inbound, .. }), When::Durable) => {
                    Some(Output::Net(NetAction::SyncResponse {
                        peer,
                        inbound,
                        response: SyncResponse::Refused {
                            reason: "temporarily unavailable".into(),
                        },
                    }))
                }
                (Output::Net(NetAction::JoinResponse { inbound, .. }), When::Durable) => {
                    Some(Output::Net(NetAction::JoinResponse {
                        inbound,
                        response: agora_protocol::join::JoinResponse::Refused("unavailable".into()),
                    }))
                }
                (
                    Output::Net(
                        NetAction::Publish { .. }
                        | NetAction::PublishTo { .. }
                        | NetAction::SubscribeTopics { .. },
                    )
                    | Output::Event(_),
                    When::Durable,
                ) => None,
                (o, When::Durable) => Some(o),
            })
            .collect()
    }
}
