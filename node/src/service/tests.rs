//! Unit tests of the sync state machine: real services (Automerge replicas, real signature
//! checks) over in-memory stores, driven group by group as the engine drives them
//! ([`run_group`]), in virtual time. No sockets, threads or sleeps: every input names the
//! millisecond it arrives at.

use super::*;
use crate::engine::run_group;
use crate::store::MemoryStorage;
use agora_protocol::sync::{self, DocHeads, Hash, MAX_WANTS_ACCEPTED};
use agora_protocol::Contribution;
use std::collections::{BTreeSet, VecDeque};

// ----- fixtures -----

/// Short timers, so that the times in the tests read easily.
fn config() -> ServiceConfig {
    ServiceConfig {
        sync_every: 60_000,
        sync_timeout: 10_000,
        sync_recheck: 1_000,
        sync_retry: 2_000,
        max_exchanges: 8,
        fetch_bytes: 1024 * 1024,
        ban_for: 100_000,
        pending: PendingLimits::default(),
        verify_in_parallel: true,
        author_rate: AuthorRate::default(),
        op_rate: AuthorRate::OPS,
        transport_id: Vec::new(),
    }
}

/// [`config`] with at most `fetch_bytes` asked for in one Fetch (1: one contribution per
/// answer).
fn fetching(fetch_bytes: u32) -> ServiceConfig {
    ServiceConfig {
        fetch_bytes,
        ..config()
    }
}

/// [`config`] with at most `max_exchanges` outbound exchanges at once.
fn limited(max_exchanges: usize) -> ServiceConfig {
    ServiceConfig {
        max_exchanges,
        ..config()
    }
}

/// The time `mono` ms into the test.
fn at(mono: Millis) -> Now {
    Now {
        mono,
        wall_ms: 1_800_000_000_000 + mono as i64,
    }
}

/// A service over an in-memory store, and the handle its peers know it by.
struct Node {
    name: PeerHandle,
    service: Service<AutomergeReplica<MemoryStorage>>,
    storage: MemoryStorage,
}

impl Node {
    /// A fresh node; `seed` makes its identity, its randomness and its name.
    fn new(seed: u8, config: ServiceConfig) -> Node {
        let storage = MemoryStorage::new();
        let store = Store::new(storage.clone()).expect("memory store");
        let identity = Identity::from_seed([seed; 32]);
        // Its transport id is its name's byte (what a peer id's bytes are on the wire).
        let config = ServiceConfig {
            transport_id: vec![seed],
            ..config
        };
        let service = Service::open(store, identity, config, [seed; 32]).expect("service");
        Node {
            name: PeerHandle(u64::from(seed)),
            service,
            storage,
        }
    }

    /// One group of inputs, run as the engine runs it; its outputs.
    fn run(&mut self, inputs: Vec<Input>, now: Now) -> Vec<Output> {
        run_group(&mut self.service, &self.storage, inputs, now)
    }

    fn step(&mut self, input: Input, now: Now) -> Vec<Output> {
        self.run(vec![input], now)
    }

    fn tick(&mut self, now: Now) -> Vec<Output> {
        self.step(Input::Tick, now)
    }

    /// Runs commands in one group; their replies, in order (each must succeed).
    fn commands(&mut self, commands: Vec<Command>, now: Now) -> Vec<Reply> {
        let inputs = (0..)
            .zip(commands)
            .map(|(i, command)| Input::Command {
                id: RequestId(i),
                command,
            })
            .collect();
        replies(&self.run(inputs, now))
            .into_iter()
            .map(|r| r.expect("command failed"))
            .collect()
    }

    fn command(&mut self, command: Command, now: Now) -> Reply {
        self.commands(vec![command], now).remove(0)
    }

    /// `seed`'s node, owner of a new private space named `name`.
    fn owning(seed: u8, name: &str) -> (Node, SpaceId) {
        let mut node = Node::new(seed, config());
        let Reply::Space(space) =
            node.command(Command::CreatePrivateSpace { name: name.into() }, at(0))
        else {
            panic!()
        };
        (node, space)
    }

    /// `peer` connects and follows `space`.
    fn connect(&mut self, peer: PeerHandle, space: SpaceId, now: Now) -> Vec<Output> {
        self.run(
            vec![
                Input::PeerConnected { peer },
                Input::PeerSubscribed { peer, space },
            ],
            now,
        )
    }

    /// Our answer to `peer`'s sync request.
    fn answer(&mut self, peer: PeerHandle, request: SyncRequest, now: Now) -> SyncResponse {
        let inbound = InboundId(0);
        let out = self.step(
            Input::SyncRequest {
                peer,
                inbound,
                request,
            },
            now,
        );
        out.into_iter()
            .find_map(|o| match o {
                Output::Net(NetAction::SyncResponse { response, .. }) => Some(response),
                _ => None,
            })
            .expect("a sync response")
    }

    /// `peer`'s answer to our request `exchange`.
    fn receive(
        &mut self,
        peer: PeerHandle,
        exchange: ExchangeId,
        response: SyncResponse,
        now: Now,
    ) -> Vec<Output> {
        let result = Ok(response);
        self.step(
            Input::SyncResponse {
                peer,
                exchange,
                result,
                checked: None,
            },
            now,
        )
    }

    /// Whether the store holds exactly these contribution bytes.
    fn holds(&mut self, bytes: &[u8], now: Now) -> bool {
        let bytes = bytes.to_vec();
        self.command(Command::StoreContains { bytes }, now) == Reply::Contains(true)
    }

    /// Our sync state with `peer` in `space`, as status shows it.
    fn state(&self, peer: PeerHandle, space: SpaceId) -> Option<SyncState> {
        let sync = self.service.status().sync;
        sync.into_iter()
            .find(|p| p.peer == peer && p.space == space)
            .map(|p| p.state)
    }
}

/// A node (seed 1) holding a new space with `ideas` ideas, each followed by a chain of
/// `comments` comments.
fn seeded(config: ServiceConfig, ideas: usize, comments: usize) -> (Node, SpaceId) {
    let mut node = Node::new(1, config);
    let t = at(0);
    let name = "town hall".to_string();
    let Reply::Space(space) = node.command(Command::CreateSpace { name }, t) else {
        panic!("no space");
    };
    let drafts = (0..ideas)
        .map(|i| {
            let title = format!("idea {i}");
            let draft = IdeaDraft {
                title,
                ..IdeaDraft::default()
            };
            Command::CreateIdea { space, draft }
        })
        .collect();
    let ideas: Vec<DocId> = node
        .commands(drafts, t)
        .into_iter()
        .map(|r| match r {
            Reply::Created(idea) => idea,
            other => panic!("{other:?}"),
        })
        .collect();
    let notes = ideas
        .iter()
        .flat_map(|&idea| {
            (0..comments).map(move |c| Command::Comment {
                idea,
                text: format!("comment {c}"),
            })
        })
        .collect();
    node.commands(notes, t);
    (node, space)
}

/// A fresh node (seed 2) that joined `space` and holds nothing of it.
fn joined(space: SpaceId, config: ServiceConfig) -> Node {
    let mut node = Node::new(2, config);
    node.command(Command::JoinSpace { space }, at(0));
    node
}

/// Every contribution `node` holds in `space`, as it sends them (by document, causal order).
fn contributions(node: &mut Node, space: SpaceId) -> Vec<Vec<u8>> {
    let wants = node
        .service
        .heads(&space)
        .into_keys()
        .map(|doc| DocHeads {
            doc: doc.0,
            heads: vec![],
        })
        .collect();
    let request = SyncRequest::Fetch {
        v: 1,
        space: space.0,
        wants,
        max_bytes: u32::MAX,
    };
    match node.answer(PeerHandle(999), request, at(0)) {
        SyncResponse::Contributions { items, more: false } => {
            items.into_iter().map(|b| b.into_vec()).collect()
        }
        other => panic!("{other:?}"),
    }
}

/// A real contribution with its signature broken.
fn forge(bytes: &[u8]) -> Vec<u8> {
    let mut c = Contribution::decode(bytes).expect("a contribution");
    c.signature[0] ^= 0x80;
    c.encode()
}

/// The sync requests among `outputs`: to whom, their id, the request.
fn requests(outputs: &[Output]) -> Vec<(PeerHandle, ExchangeId, SyncRequest)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Net(NetAction::SyncRequest {
                peer,
                exchange,
                request,
            }) => Some((*peer, *exchange, request.clone())),
            _ => None,
        })
        .collect()
}

/// The one sync request among `outputs`, which must go to `peer`.
fn only_request(outputs: &[Output], peer: PeerHandle) -> (ExchangeId, SyncRequest) {
    let mut sent = requests(outputs);
    assert_eq!(sent.len(), 1, "one request expected: {outputs:?}");
    let (to, id, request) = sent.remove(0);
    assert_eq!(to, peer);
    (id, request)
}

/// The bans among `outputs`, with their reasons.
fn bans(outputs: &[Output]) -> Vec<(PeerHandle, &'static str)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Net(NetAction::Ban { peer, reason, .. }) => Some((*peer, *reason)),
            _ => None,
        })
        .collect()
}

/// The sync batches handed out to be ingested.
fn batches(outputs: &[Output]) -> Vec<SyncBatch> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Ingest(batch) => Some(batch.clone()),
            _ => None,
        })
        .collect()
}

/// The replies among `outputs`, in order.
fn replies(outputs: &[Output]) -> Vec<Result<Reply, ServiceError>> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Reply { result, .. } => Some(result.clone()),
            _ => None,
        })
        .collect()
}

/// The gossip verdicts among `outputs`, in order.
fn verdicts(outputs: &[Output]) -> Vec<Verdict> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Net(NetAction::Verdict { verdict, .. }) => Some(*verdict),
            _ => None,
        })
        .collect()
}

/// The contributions carried by the sync answers among `outputs`, in order.
fn carried(outputs: &[Output]) -> Vec<Vec<u8>> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Net(NetAction::SyncResponse {
                response: SyncResponse::Contributions { items, .. },
                ..
            }) => Some(items.iter().map(|b| b.to_vec())),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Sends `b`'s one request among `outputs` to `a` and hands `a`'s answer back to `b`; `b`'s
/// outputs.
fn answered(a: &mut Node, b: &mut Node, outputs: &[Output], now: Now) -> Vec<Output> {
    let (id, request) = only_request(outputs, a.name);
    let response = a.answer(b.name, request, now);
    b.receive(a.name, id, response, now)
}

/// `b` starts a round with `a` and receives `a`'s answer to its first Fetch: `b`'s outputs
/// then (the next request, if any, and one batch to ingest) and that batch.
fn first_batch(a: &mut Node, b: &mut Node, space: SpaceId, now: Now) -> (Vec<Output>, SyncBatch) {
    let out = b.connect(a.name, space, now);
    let out = answered(a, b, &out, now);
    let out = answered(a, b, &out, now);
    let [batch] = &batches(&out)[..] else {
        panic!("one batch expected: {out:?}");
    };
    let batch = batch.clone();
    (out, batch)
}

/// `a` holding two ideas of three comments each, and `b` catching up from it one contribution
/// per answer, at time 0, just after its [`first_batch`]: `b`'s outputs and the batch.
fn mid_catch_up() -> (Node, Node, SpaceId, Vec<Output>, SyncBatch) {
    let (mut a, space) = seeded(config(), 2, 3);
    let mut b = joined(space, fetching(1));
    let (out, batch) = first_batch(&mut a, &mut b, space, at(0));
    (a, b, space, out, batch)
}

/// Carries sync messages between two nodes, and each node's sync batches back to it, one input
/// per group, until none is left, starting from outputs already produced. Returns every output
/// of both, in order.
fn relay(
    a: &mut Node,
    b: &mut Node,
    from_a: Vec<Output>,
    from_b: Vec<Output>,
    now: Now,
) -> Vec<Output> {
    let names = [a.name, b.name];
    let nodes = [a, b];
    let mut queue: VecDeque<(usize, Input)> = VecDeque::new();
    let mut produced = vec![(0, from_a), (1, from_b)];
    let mut log = Vec::new();
    loop {
        for (from, outputs) in produced.drain(..) {
            let to = 1 - from;
            for output in outputs {
                // A request becomes the peer's input (its inbound id is our exchange id), an
                // answer ours again (the other way round), and a batch is fed back.
                let next = match output.clone() {
                    Output::Net(NetAction::SyncRequest {
                        peer,
                        exchange: ExchangeId(id),
                        request,
                    }) if peer == names[to] => Some((
                        to,
                        Input::SyncRequest {
                            peer: names[from],
                            inbound: InboundId(id),
                            request,
                        },
                    )),
                    Output::Net(NetAction::SyncResponse {
                        peer,
                        inbound: InboundId(id),
                        response,
                    }) if peer == names[to] => Some((
                        to,
                        Input::SyncResponse {
                            peer: names[from],
                            exchange: ExchangeId(id),
                            result: Ok(response),
                            checked: None,
                        },
                    )),
                    Output::Ingest(batch) => Some((from, Input::Ingest(batch))),
                    _ => None,
                };
                queue.extend(next);
                log.push(output);
            }
        }
        let Some((to, input)) = queue.pop_front() else {
            return log;
        };
        produced.push((to, nodes[to].step(input, now)));
    }
}

/// `a` and `b` connect and follow `space`; their sync rounds run to the end. Every output.
fn link(a: &mut Node, b: &mut Node, space: SpaceId, now: Now) -> Vec<Output> {
    let from_a = a.connect(b.name, space, now);
    let from_b = b.connect(a.name, space, now);
    relay(a, b, from_a, from_b, now)
}

/// Brings an exchange with a new `peer` to its Fetch phase (the peer shows a document we
/// lack); returns the Fetch's id.
fn to_fetch(node: &mut Node, peer: PeerHandle, space: SpaceId, now: Now) -> ExchangeId {
    let (summary, _) = only_request(&node.connect(peer, space, now), peer);
    let docs = vec![DocHeads {
        doc: [7; 16],
        heads: vec![Hash([7; 32])],
    }];
    let out = node.receive(peer, summary, SyncResponse::Heads { docs }, now);
    let (fetch, request) = only_request(&out, peer);
    assert!(matches!(request, SyncRequest::Fetch { .. }), "{request:?}");
    fetch
}

/// Delivers `items` as the (last) `Contributions` answer to `exchange`, at 1 s.
fn deliver(
    node: &mut Node,
    peer: PeerHandle,
    exchange: ExchangeId,
    items: impl Iterator<Item = Vec<u8>>,
    checked: Option<Checked>,
) -> Vec<Output> {
    let response = SyncResponse::Contributions {
        items: items.map(serde_bytes::ByteBuf::from).collect(),
        more: false,
    };
    node.step(
        Input::SyncResponse {
            peer,
            exchange,
            result: Ok(response),
            checked,
        },
        at(1_000),
    )
}

// ----- timeouts -----

/// A silent peer: the Summary fails at exactly `sync_timeout` (no ban), a late answer to it is
/// dropped unread, and the pair's next round comes `sync_retry` later (then twice that), not
/// before.
#[test]
fn a_silent_peer_times_out_and_is_retried_after_the_retry_delay() {
    let (mut a, space) = seeded(config(), 1, 0);
    let forged = forge(&contributions(&mut a, space)[0]);
    let mut b = joined(space, config());
    let staller = PeerHandle(9);
    let (summary, _) = only_request(&b.connect(staller, space, at(0)), staller);
    let timeout = config().sync_timeout;

    assert!(b.tick(at(timeout - 1)).is_empty());
    assert_eq!(b.service.status().sync_failures, 0);
    let out = b.tick(at(timeout));
    assert!(out.is_empty(), "no ban, no new round yet: {out:?}");
    assert_eq!(b.service.status().sync_failures, 1);

    let late = SyncResponse::Contributions {
        items: vec![forged.clone().into()],
        more: false,
    };
    assert!(b
        .receive(staller, summary, late, at(timeout + 1))
        .is_empty());
    assert!(b.service.status().counters.rejected.is_empty());
    assert!(!b.holds(&forged, at(timeout + 1)));

    let retry = timeout + config().sync_retry;
    assert!(requests(&b.tick(at(retry - 1))).is_empty());
    let (again, request) = only_request(&b.tick(at(retry)), staller);
    assert!(matches!(request, SyncRequest::Summary { .. }) && again != summary);

    // Silent again: the next delay doubles.
    let failed = retry + timeout;
    assert!(b.tick(at(failed)).is_empty());
    let doubled = failed + 2 * config().sync_retry;
    assert!(requests(&b.tick(at(doubled - 1))).is_empty());
    only_request(&b.tick(at(doubled)), staller);
}

/// A Fetch has its own deadline: when it passes, the exchange ends, and a late batch of
/// contributions (here a forged one) is never ingested: not rejected, not stored, no ban.
#[test]
fn a_late_batch_after_a_fetch_timed_out_is_never_ingested() {
    let (mut a, space) = seeded(config(), 1, 0);
    let forged = forge(&contributions(&mut a, space)[0]);
    let mut b = joined(space, config());
    let staller = PeerHandle(9);
    let fetch = to_fetch(&mut b, staller, space, at(100));
    let deadline = 100 + config().sync_timeout;

    assert!(b.tick(at(deadline - 1)).is_empty());
    assert!(b.tick(at(deadline)).is_empty());
    assert_eq!(b.service.status().sync_failures, 1);
    let late = SyncResponse::Contributions {
        items: vec![forged.clone().into()],
        more: false,
    };
    assert!(b.receive(staller, fetch, late, at(deadline + 1)).is_empty());
    let status = b.service.status();
    assert!(status.counters.rejected.is_empty());
    assert_eq!((status.banned, status.contributions), (0, 0));
    assert!(!b.holds(&forged, at(deadline + 1)));
}

// ----- bans -----

/// An answer of the wrong kind (Contributions to a Summary, Heads or InSync to a Fetch) bans the
/// peer: it is disconnected if it comes back during `ban_for`, and unbanned by the tick at its
/// end.
#[test]
fn an_answer_of_the_wrong_kind_bans_the_peer() {
    let space = SpaceId([5; 16]);
    let mut b = joined(space, config());
    let t = at(0);
    let first = PeerHandle(11);
    let (summary, _) = only_request(&b.connect(first, space, t), first);
    let nothing = SyncResponse::Contributions {
        items: vec![],
        more: false,
    };
    let out = b.receive(first, summary, nothing, t);
    assert_eq!(bans(&out), [(first, "sync_protocol_violation")]);
    let docs = vec![];
    for (peer, wrong) in [
        (PeerHandle(12), SyncResponse::Heads { docs }),
        (PeerHandle(13), SyncResponse::InSync),
    ] {
        let fetch = to_fetch(&mut b, peer, space, t);
        let out = b.receive(peer, fetch, wrong, t);
        assert_eq!(bans(&out), [(peer, "sync_protocol_violation")]);
    }
    assert_eq!(b.service.status().banned, 3);

    let back = b.step(Input::PeerConnected { peer: first }, at(1));
    assert_eq!(back, [Output::Net(NetAction::Disconnect { peer: first })]);

    let ban_for = config().ban_for;
    assert!(b.tick(at(ban_for - 1)).is_empty());
    let unbanned: Vec<Output> = (11..=13)
        .map(|p| {
            Output::Net(NetAction::Unban {
                peer: PeerHandle(p),
            })
        })
        .collect();
    assert_eq!(b.tick(at(ban_for)), unbanned);
    assert_eq!(b.service.status().banned, 0);
    assert!(b
        .step(Input::PeerConnected { peer: first }, at(ban_for + 1))
        .is_empty());
}

/// An oversize or unreadable answer bans; a transport failure or a timeout reported by the
/// network only ends the exchange (a failure, retried after `sync_retry`).
#[test]
fn failed_answers_ban_only_when_the_answer_is_the_peers_fault() {
    let space = SpaceId([5; 16]);
    let mut b = joined(space, config());
    let t = at(0);
    let cases = [
        (SyncFailure::TooLarge, Some("sync_oversize_answer")),
        (
            SyncFailure::Malformed("cbor".into()),
            Some("sync_malformed_answer"),
        ),
        (SyncFailure::Unavailable("connection reset".into()), None),
        (SyncFailure::Timeout, None),
    ];
    for (peer, (failure, ban)) in (20..).map(PeerHandle).zip(cases) {
        let exchange = to_fetch(&mut b, peer, space, t);
        let result = Err(failure);
        let out = b.step(
            Input::SyncResponse {
                peer,
                exchange,
                result,
                checked: None,
            },
            t,
        );
        assert_eq!(bans(&out), Vec::from_iter(ban.map(|r| (peer, r))));
    }
    let status = b.service.status();
    assert_eq!((status.banned, status.sync_failures), (2, 2));

    let retry = config().sync_retry;
    assert!(requests(&b.tick(at(retry - 1))).is_empty());
    let again: Vec<PeerHandle> = requests(&b.tick(at(retry)))
        .into_iter()
        .map(|(peer, _, _)| peer)
        .collect();
    assert_eq!(again, [PeerHandle(22), PeerHandle(23)]);
}

// ----- the concurrency limit -----

/// With `max_exchanges: 1`, a second peer's round waits in the queue and starts in the very
/// group in which the first exchange ends.
#[test]
fn a_full_exchange_limit_queues_the_round_and_starts_it_when_a_slot_frees() {
    let space = SpaceId([5; 16]);
    let mut b = joined(space, limited(1));
    let t = at(0);
    let (p, q) = (PeerHandle(31), PeerHandle(32));
    let out = b.run(
        vec![
            Input::PeerConnected { peer: p },
            Input::PeerSubscribed { peer: p, space },
            Input::PeerConnected { peer: q },
            Input::PeerSubscribed { peer: q, space },
        ],
        t,
    );
    let (first, _) = only_request(&out, p);
    let out = b.receive(p, first, SyncResponse::InSync, t);
    let (_, request) = only_request(&out, q);
    assert!(matches!(request, SyncRequest::Summary { .. }));
}

/// Many peers and a small limit: never more than the limit at once, and every pair gets its
/// round; none is dropped.
#[test]
fn every_queued_pair_gets_its_round() {
    let space = SpaceId([5; 16]);
    let limit = 3;
    let mut b = joined(space, limited(limit));
    let t = at(0);
    let peers: Vec<PeerHandle> = (40..50).map(PeerHandle).collect();
    let inputs = peers
        .iter()
        .flat_map(|&peer| {
            [
                Input::PeerConnected { peer },
                Input::PeerSubscribed { peer, space },
            ]
        })
        .collect();
    let mut running: VecDeque<_> = requests(&b.run(inputs, t)).into();
    assert_eq!(running.len(), limit);
    let mut rounds = Vec::new();
    while let Some((peer, id, _)) = running.pop_front() {
        rounds.push(peer);
        running.extend(requests(&b.receive(peer, id, SyncResponse::InSync, t)));
        assert!(running.len() <= limit);
    }
    rounds.sort();
    assert_eq!(rounds, peers);
    for &peer in &peers {
        assert_eq!(b.state(peer, space), Some(SyncState::InSync));
    }
}

// ----- a failed flush -----

/// A batch ingested in a group whose flush fails: nothing of that group is vouched for (the
/// command's reply is an error, accepted gossip is not relayed, the sync answer is refused), the
/// exchange ends without a verdict, and the pair's next round, after `sync_retry` with the store
/// working again, converges.
#[test]
fn a_failed_flush_ends_the_exchange_and_the_retry_converges() {
    let (mut a, mut b, space, out, batch) = mid_catch_up();
    let t = at(0);
    let (next, fetch) = only_request(&out, a.name);
    let draft = IdeaDraft {
        title: "fresh".into(),
        ..IdeaDraft::default()
    };
    let fresh = a
        .step(
            Input::Command {
                id: RequestId(0),
                command: Command::CreateIdea { space, draft },
            },
            t,
        )
        .into_iter()
        .find_map(|o| match o {
            Output::Net(NetAction::Publish { bytes, .. }) => Some(bytes),
            _ => None,
        })
        .expect("a publication");

    b.storage.set_failing(true);
    let gossip = GossipIn {
        token: 7,
        from: a.name,
        first_hop: true,
        topic: Some(space),
        bytes: fresh,
    };
    let summary = SyncRequest::Summary {
        v: 1,
        space: space.0,
        digest: [0; 32],
    };
    let name = "elsewhere".to_string();
    let out = b.run(
        vec![
            Input::Ingest(batch),
            Input::Gossip(vec![gossip]),
            Input::Command {
                id: RequestId(1),
                command: Command::CreateSpace { name },
            },
            Input::SyncRequest {
                peer: a.name,
                inbound: InboundId(3),
                request: summary,
            },
        ],
        at(1),
    );
    b.storage.set_failing(false);
    let verdict = NetAction::Verdict {
        token: 7,
        verdict: Verdict::Ignore,
    };
    assert!(out.contains(&Output::Net(verdict)), "{out:?}");
    assert!(matches!(replies(&out)[..], [Err(ServiceError::Store(_))]));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Net(NetAction::SyncResponse {
            response: SyncResponse::Refused { .. },
            ..
        })
    )));
    assert_eq!(b.service.status().contributions, 0);
    assert_eq!(b.state(a.name, space), None, "no verdict");
    // The exchange is over: the answer to its pipelined Fetch is dropped.
    let late = a.answer(b.name, fetch, at(1));
    assert!(b.receive(a.name, next, late, at(2)).is_empty());

    let retry = 1 + config().sync_retry;
    assert!(requests(&b.tick(at(retry - 1))).is_empty());
    let out = b.tick(at(retry));
    assert!(matches!(
        only_request(&out, a.name).1,
        SyncRequest::Summary { .. }
    ));
    relay(&mut a, &mut b, vec![], out, at(retry));
    assert_eq!(b.service.heads(&space), a.service.heads(&space));
    assert_eq!(b.state(a.name, space), Some(SyncState::InSync));
}

/// When the batch whose flush fails is the exchange's last one, the exchange still ends without
/// a verdict: the pair is not shown in sync with data it lost, and is retried after
/// `sync_retry`, not a whole `sync_every` later.
#[test]
fn a_failed_flush_of_the_last_batch_leaves_no_verdict() {
    let (mut a, space) = seeded(config(), 1, 0);
    let mut b = joined(space, config());
    let (out, batch) = first_batch(&mut a, &mut b, space, at(0));
    assert!(requests(&out).is_empty(), "nothing left to fetch: {out:?}");

    b.storage.set_failing(true);
    b.step(Input::Ingest(batch), at(1));
    b.storage.set_failing(false);
    assert_eq!(b.service.status().contributions, 0);
    assert_eq!(
        b.state(a.name, space),
        None,
        "a verdict on a batch that was not saved"
    );
    let retry = 1 + config().sync_retry;
    assert!(requests(&b.tick(at(retry - 1))).is_empty());
    only_request(&b.tick(at(retry)), a.name);
}

// ----- what counts as in sync -----

/// A peer that shows a document and sends only a change whose dependency is missing (an idea's
/// comment without the idea) leaves the pair `Incomplete`, not `InSync`; the change waits in the
/// pending set.
#[test]
fn contributions_that_all_wait_for_dependencies_leave_the_pair_incomplete() {
    let (mut a, space) = seeded(config(), 1, 1);
    let [_, comment] = &contributions(&mut a, space)[..] else {
        panic!("two contributions expected");
    };
    let mut b = joined(space, config());
    let t = at(0);
    let out = b.connect(a.name, space, t);
    let out = answered(&mut a, &mut b, &out, t);
    let (fetch, _) = only_request(&out, a.name);
    let only_the_comment = SyncResponse::Contributions {
        items: vec![comment.clone().into()],
        more: false,
    };
    let out = b.receive(a.name, fetch, only_the_comment, t);
    assert!(requests(&out).is_empty(), "{out:?}");
    let [batch] = &batches(&out)[..] else {
        panic!("one batch expected: {out:?}");
    };
    b.step(Input::Ingest(batch.clone()), t);
    let docs_left = 1;
    assert_eq!(
        b.state(a.name, space),
        Some(SyncState::Incomplete { docs_left })
    );
    let status = b.service.status();
    assert_eq!((status.counters.pending, status.contributions), (1, 0));
}

// ----- pipelining -----

/// When a batch arrives, the next Fetch leaves in the same step, before the batch is ingested,
/// and asks from the heads the node will have once it is.
#[test]
fn the_next_fetch_leaves_before_the_batch_is_ingested() {
    let (a, mut b, space, out, batch) = mid_catch_up();
    let t = at(0);
    let (_, SyncRequest::Fetch { wants, .. }) = only_request(&out, a.name) else {
        panic!("a Fetch expected: {out:?}");
    };
    assert_eq!(b.service.status().contributions, 0, "not ingested yet");

    b.step(Input::Ingest(batch), t);
    let heads = b.service.heads(&space);
    assert_eq!(wants.len(), 2);
    assert!(!wants[0].heads.is_empty(), "the first idea was received");
    for want in wants {
        let after: Vec<Hash> = heads
            .get(&DocId(want.doc))
            .into_iter()
            .flatten()
            .map(|h| Hash::from(*h))
            .collect();
        assert_eq!(want.heads, after);
    }
}

/// A catch-up of a few hundred contributions in many small batches converges, and no
/// contribution is sent twice.
#[test]
fn a_catch_up_in_many_batches_sends_each_contribution_once() {
    let (mut a, space) = seeded(config(), 6, 39);
    let mut b = joined(space, fetching(8_000));
    let log = link(&mut a, &mut b, space, at(0));
    let sent = carried(&log);
    let answers = log
        .iter()
        .filter(|o| {
            matches!(
                o,
                Output::Net(NetAction::SyncResponse {
                    response: SyncResponse::Contributions { .. },
                    ..
                })
            )
        })
        .count();
    assert!(answers >= 5, "{answers} answers");
    assert_eq!(sent.len(), 240);
    assert_eq!(
        sent.iter().collect::<BTreeSet<_>>().len(),
        240,
        "sent twice"
    );
    assert_eq!(b.service.heads(&space), a.service.heads(&space));
    assert_eq!(b.service.status().contributions, 240);
    assert_eq!(b.state(a.name, space), Some(SyncState::InSync));
}

// ----- the responder -----

/// The responder: an equal digest gets `InSync` (and the pair shows in sync), another gets
/// heads; an unknown space and a Fetch of too many documents get `Refused`.
#[test]
fn the_responder_answers_in_sync_heads_or_refused() {
    let (mut a, space) = seeded(config(), 2, 1);
    let t = at(0);
    let peer = PeerHandle(50);
    a.connect(peer, space, t);
    let heads = a.service.heads(&space);
    let digest = sync::space_digest(heads.iter().map(|(d, h)| (d, h.as_slice())));
    let summary = |space: SpaceId, digest| SyncRequest::Summary {
        v: 1,
        space: space.0,
        digest,
    };

    assert_eq!(
        a.answer(peer, summary(space, digest), t),
        SyncResponse::InSync
    );
    assert_eq!(a.state(peer, space), Some(SyncState::InSync));
    let other = a.answer(peer, summary(space, [0; 32]), t);
    assert!(matches!(other, SyncResponse::Heads { docs } if docs.len() == 2));
    let unknown = a.answer(peer, summary(SpaceId([9; 16]), digest), t);
    assert!(matches!(unknown, SyncResponse::Refused { .. }));
    let wants = (0..=MAX_WANTS_ACCEPTED)
        .map(|i| DocHeads {
            doc: (i as u128).to_be_bytes(),
            heads: vec![],
        })
        .collect();
    let fetch = SyncRequest::Fetch {
        v: 1,
        space: space.0,
        wants,
        max_bytes: 1 << 20,
    };
    assert!(matches!(
        a.answer(peer, fetch, t),
        SyncResponse::Refused { .. }
    ));
}

// ----- determinism -----

/// The same inputs at the same times, with the same seeds, give byte-identical outputs (the
/// jitter of periodic rounds included).
#[test]
fn the_same_inputs_give_the_same_outputs() {
    let run = || {
        let (mut a, space) = seeded(config(), 2, 2);
        let mut b = joined(space, fetching(1));
        let mut log = link(&mut a, &mut b, space, at(0));
        for s in 40..=60 {
            let now = at(s * 1_000);
            let (from_a, from_b) = (a.tick(now), b.tick(now));
            log.extend(relay(&mut a, &mut b, from_a, from_b, now));
        }
        log.iter().map(|o| format!("{o:?}")).collect::<Vec<_>>()
    };
    let first = run();
    assert!(first.len() > 20, "{first:?}");
    assert_eq!(first, run());
}

/// A batch large enough to be verified on a second thread gives the same verdicts, counters,
/// pending set and stored contributions as the same batch verified on the calling thread:
/// forged signatures, duplicates, a wrong topic, early arrivals resolved inside the batch and
/// ones whose dependencies never come.
#[test]
fn verifying_on_a_second_thread_changes_no_outcome() {
    let (mut a, space) = seeded(config(), 40, 30);
    let mut items = contributions(&mut a, space);
    assert!(items.len() > 4 * 256, "{} contributions", items.len());
    // Each document's contributions come in causal order: reverse them in windows, so that
    // many arrive before what they depend on.
    for window in items.chunks_mut(7) {
        window.reverse();
    }
    let mut batch: Vec<(Vec<u8>, Option<SpaceId>)> = Vec::new();
    for (i, bytes) in items.iter().enumerate() {
        match i % 97 {
            // The creation of some ideas never comes: their comments wait.
            3 => continue,
            5 => batch.push((forge(bytes), Some(space))),
            11 => {
                batch.push((bytes.clone(), Some(space)));
                batch.push((bytes.clone(), Some(space)));
            }
            13 => batch.push((bytes.clone(), Some(SpaceId([7; 16])))),
            _ => batch.push((bytes.clone(), Some(space))),
        }
    }
    let run = |parallel: bool| {
        let mut b = joined(
            space,
            ServiceConfig {
                verify_in_parallel: parallel,
                // The whole batch from one author: the bound on its gossip is not what this
                // test is about.
                author_rate: AuthorRate {
                    burst: u32::MAX,
                    per_second: u32::MAX,
                },
                ..config()
            },
        );
        let gossip = batch
            .iter()
            .enumerate()
            .map(|(i, (bytes, topic))| GossipIn {
                token: i as u64,
                from: PeerHandle(1),
                first_hop: true,
                topic: *topic,
                bytes: bytes.clone(),
            })
            .collect();
        let outputs = b.step(Input::Gossip(gossip), at(1_000));
        let status = b.service.status();
        let held: Vec<bool> = items.iter().map(|c| b.holds(c, at(1_000))).collect();
        (format!("{outputs:?}"), format!("{status:?}"), held)
    };
    let inline = run(false);
    let parallel = run(true);
    assert_eq!(inline, parallel);
    let held = inline.2.iter().filter(|h| **h).count();
    assert!(held > items.len() / 2 && held < items.len(), "{held}");
    for code in ["bad_signature", "wrong_topic"] {
        assert!(inline.1.contains(code), "{code}: {}", inline.1);
    }
}

/// A sync answer whose contributions the shell verified as they arrived ([`Checked`]) gives
/// the same outputs, verdicts, ban and stored contributions as the same answer verified by the
/// service: forged signatures, duplicates, early arrivals, garbage, each rejection in the same
/// order of precedence; whether the shell's verifier finished before ingest, runs during it
/// (the service verifies the chunks it has not taken), or never runs.
#[test]
fn verification_on_arrival_changes_no_outcome() {
    let (mut a, space) = seeded(config(), 40, 30);
    let items = contributions(&mut a, space);
    let mut batch: Vec<Vec<u8>> = Vec::new();
    for window in items.chunks(7) {
        batch.extend(window.iter().rev().cloned());
    }
    let clean = batch.clone();
    let mut faulty = batch;
    faulty[700] = forge(&faulty[700]);
    faulty[900] = b"not a contribution".to_vec();
    let dup = faulty[10].clone();
    faulty.insert(20, dup);
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Arrival {
        /// Not verified on arrival.
        None,
        /// Verified before the service sees it.
        Verified,
        /// Headers read; the verifier runs on another thread while the service ingests.
        Racing,
        /// Headers read; the verifier is dropped unrun.
        Dropped,
    }
    for (case, batch) in [("clean", clean), ("faulty", faulty)] {
        let run = |arrival: Arrival| {
            let mut b = joined(space, config());
            let peer = PeerHandle(30);
            let exchange = to_fetch(&mut b, peer, space, at(0));
            let (checked, verifier) = match arrival {
                Arrival::None => (None, None),
                Arrival::Verified => (Some(Checked::of(&batch)), None),
                Arrival::Racing | Arrival::Dropped => {
                    let (checked, verifier) = Checked::arrive(&batch);
                    (Some(checked), Some(verifier))
                }
            };
            let out = deliver(&mut b, peer, exchange, batch.iter().cloned(), checked);
            let mut sent = batches(&out);
            assert_eq!(sent.len(), 1, "{case}");
            let batch = sent.remove(0);
            assert_eq!(batch.checked.is_some(), arrival != Arrival::None, "{case}");
            let racing = match (arrival, verifier) {
                (Arrival::Racing, Some(v)) => Some(std::thread::spawn(move || v.run())),
                _ => None,
            };
            let out = b.step(Input::Ingest(batch), at(1_000));
            if let Some(racing) = racing {
                racing.join().expect("the verifier finishes");
            }
            let status = format!("{:?}", b.service.status());
            let held: Vec<bool> = items.iter().map(|c| b.holds(c, at(1_000))).collect();
            (format!("{out:?}"), status, held)
        };
        let inline = run(Arrival::None);
        for arrival in [Arrival::Verified, Arrival::Racing, Arrival::Dropped] {
            assert_eq!(inline, run(arrival), "{case}, {arrival:?}");
        }
        if case == "clean" {
            assert!(
                inline.2.iter().all(|h| *h),
                "a clean catch-up stores everything"
            );
        } else {
            assert!(inline.0.contains("Ban"), "{}", inline.0);
        }
    }
}

/// A document asked for with no heads is answered from one range read, in the order its
/// changes were applied: the same contributions as a lookup per change, in a causal order, even
/// when they arrived in reverse.
#[test]
fn a_whole_document_answer_is_complete_and_causal() {
    let (mut a, space) = seeded(config(), 6, 40);
    let items = contributions(&mut a, space);
    let mut b = joined(space, config());
    let peer = PeerHandle(30);
    let exchange = to_fetch(&mut b, peer, space, at(0));
    let out = deliver(&mut b, peer, exchange, items.iter().rev().cloned(), None);
    for batch in batches(&out) {
        b.step(Input::Ingest(batch), at(1_000));
    }
    let answer = contributions(&mut b, space);
    let (mut sent, mut held) = (answer.clone(), items.clone());
    sent.sort();
    held.sort();
    assert_eq!(sent, held, "every contribution, once");
    let mut seen: BTreeMap<DocId, Vec<ChangeHash>> = BTreeMap::new();
    for bytes in &answer {
        let c = Contribution::decode(bytes).expect("stored contributions decode");
        let (hash, deps) =
            agora_protocol::contribution::change_preview(&c.change).expect("a change header");
        let before = seen.entry(c.doc).or_default();
        assert!(
            deps.iter().all(|d| before.contains(d)),
            "a change comes after its dependencies"
        );
        before.push(hash);
    }
    for (doc, hashes) in &seen {
        let whole = b
            .service
            .replica
            .stored_after(&space, doc, &[], usize::MAX)
            .expect("read");
        let mut by_hash =
            super::replica::stored_by_hash(&mut b.service.replica, &space, doc, &[], usize::MAX)
                .expect("read");
        assert_eq!(whole.len(), hashes.len());
        let mut whole_sorted = whole.clone();
        whole_sorted.sort();
        by_hash.sort();
        assert_eq!(whole_sorted, by_hash, "the same contributions either way");
    }
}

/// A document asked for from known heads is answered by a lookup per change hash: through an
/// index made from the store the first time, kept up to date as later contributions are
/// stored, and made again from the store after a restart.
#[test]
fn a_delta_answer_finds_each_change_by_its_hash() {
    let (mut a, space) = seeded(config(), 1, 20);
    let doc = *a.service.heads(&space).keys().next().expect("one idea");
    let read = |service: &mut Service<AutomergeReplica<MemoryStorage>>, have: &[ChangeHash]| {
        service
            .replica
            .stored_after(&space, &doc, have, usize::MAX)
            .expect("read")
    };
    let hash_of = |bytes: &Vec<u8>| {
        let c = Contribution::decode(bytes).expect("stored contributions decode");
        agora_protocol::contribution::change_preview(&c.change)
            .expect("a change header")
            .0
    };
    // One author's idea and its comments: a chain, so "after the tenth" is the rest in order.
    let all = read(&mut a.service, &[]);
    assert_eq!(all.len(), 21);
    assert_eq!(read(&mut a.service, &[hash_of(&all[9])]), all[10..]);
    let before = a.service.heads(&space)[&doc].clone();
    assert!(read(&mut a.service, &before).is_empty());
    let idea = doc;
    let more = (0..3)
        .map(|c| Command::Comment {
            idea,
            text: format!("later {c}"),
        })
        .collect();
    a.commands(more, at(1));
    let all = read(&mut a.service, &[]);
    assert_eq!(all.len(), 24);
    assert_eq!(
        read(&mut a.service, &before),
        all[21..],
        "the index saw them"
    );
    let store = Store::new(a.storage.clone()).expect("memory store");
    let mut restarted =
        Service::open(store, Identity::from_seed([1; 32]), config(), [1; 32]).expect("service");
    assert_eq!(read(&mut restarted, &before), all[21..], "made again");
    assert_eq!(read(&mut restarted, &[hash_of(&all[9])]), all[10..]);
}

/// A validly signed change that Automerge refuses (its author reused a sequence number on a
/// fork) is rejected, and so is a change that depends on it: Automerge queues that one and
/// reports success, but it is not in the document, so it must not be stored (and then sent to
/// peers) as if it were.
#[test]
fn a_change_on_a_refused_change_is_not_stored() {
    use agora_protocol::automerge::{AutoCommit, Change};
    use agora_protocol::{idea, DocKind};
    let identity = Identity::from_seed([9; 32]);
    let author = identity.author();
    let space = SpaceId([7; 16]);
    let salt = [3; 16];
    let doc = DocId::idea(&space, &author, &salt);
    let mut main = AutoCommit::new().with_actor(idea::actor_for(&author, &[1; 16]));
    let draft = IdeaDraft {
        title: "forked".into(),
        ..IdeaDraft::default()
    };
    let t = 1_800_000_000_000;
    let created = idea::create_idea(&mut main, &draft, &author, &salt, t).expect("create");
    let mut fork = main.fork().with_actor(idea::actor_for(&author, &[1; 16]));
    let kept = idea::add_comment(&mut main, &author, "kept", t).expect("comment");
    let reused = idea::add_comment(&mut fork, &author, "same seq, other change", t).expect("c");
    let after = idea::add_comment(&mut fork, &author, "built on the reused one", t).expect("c");
    let sign =
        |change: &Change| Contribution::sign(&identity, space, doc, DocKind::Idea, change).encode();
    let [created, kept, reused, after] = [&created, &kept, &reused, &after].map(sign);
    let mut b = joined(space, config());
    let peer = PeerHandle(30);
    let exchange = to_fetch(&mut b, peer, space, at(0));
    let batch = vec![created.clone(), kept.clone(), reused.clone(), after.clone()];
    let out = deliver(&mut b, peer, exchange, batch.into_iter(), None);
    for batch in batches(&out) {
        b.step(Input::Ingest(batch), at(1_000));
    }
    assert!(b.holds(&created, at(1_000)) && b.holds(&kept, at(1_000)));
    assert!(
        !b.holds(&reused, at(1_000)),
        "Automerge refuses the reused sequence number"
    );
    assert!(
        !b.holds(&after, at(1_000)),
        "nor is what depends on it stored"
    );
}

/// Private spaces in the service: created, stored, listed, and rebuilt from the store after a
/// restart; membership actions refused to those whose role does not allow them; nothing of them
/// asked of the network on a version 1 topic.
mod private_spaces {
    use super::*;
    use agora_protocol::membership::Role;

    fn reopen(node: &Node, seed: u8) -> Service<AutomergeReplica<MemoryStorage>> {
        let store = Store::new(node.storage.clone()).expect("memory store");
        Service::open(store, Identity::from_seed([seed; 32]), config(), [seed; 32])
            .expect("service")
    }

    #[test]
    fn a_private_space_is_stored_listed_and_rebuilt_after_a_restart() {
        let mut node = Node::new(1, config());
        let outputs = node.run(
            vec![Input::Command {
                id: RequestId(0),
                command: Command::CreatePrivateSpace {
                    name: "Board".into(),
                },
            }],
            at(0),
        );
        let Some(Ok(Reply::Space(space))) = replies(&outputs).into_iter().next() else {
            panic!("no space: {outputs:?}")
        };
        // Of the network, it asks only to follow its own topic: no version 1 topic, nothing
        // that names the space.
        let net: Vec<&NetAction> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Net(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(net.len(), 1, "{outputs:?}");
        let NetAction::SubscribeTopics { topics, .. } = net[0] else {
            panic!("{net:?}")
        };
        assert!(topics[0].starts_with("agora/v2/") && !topics[0].contains(&space.to_hex()));
        let first_topic = topics[0].clone();
        let Reply::Spaces(spaces) = node.command(Command::Spaces, at(1)) else {
            panic!()
        };
        assert_eq!(spaces.len(), 1);
        assert_eq!(spaces[0].name.as_deref(), Some("Board"));
        let me = Identity::from_seed([1; 32]).author();
        let Reply::Members(members) = node.command(Command::Members { space }, at(2)) else {
            panic!()
        };
        assert_eq!(members.len(), 1);
        assert_eq!((members[0].author, members[0].role), (me, Role::Owner));

        // An invitation, a rename: both durable.
        let Reply::Invitation(inv) = node.command(
            Command::Invite {
                space,
                role: Role::Member,
                expires: 2_000_000_000,
                uses: 1,
            },
            at(3),
        ) else {
            panic!()
        };
        assert_eq!(inv.space, space);
        node.command(
            Command::RenameSpace {
                space,
                name: "Board (2027)".into(),
            },
            at(4),
        );

        // After a restart, from the store alone: the same space, name, members, invitation.
        let mut again = Node {
            name: PeerHandle(1),
            service: reopen(&node, 1),
            storage: node.storage.clone(),
        };
        let outputs = again.step(
            Input::Command {
                id: RequestId(9),
                command: Command::Spaces,
            },
            at(5),
        );
        let Some(Ok(Reply::Spaces(spaces))) = replies(&outputs).into_iter().next() else {
            panic!("{outputs:?}")
        };
        assert_eq!(spaces[0].id, space);
        assert_eq!(spaces[0].name.as_deref(), Some("Board (2027)"));
        assert!(
            !outputs
                .iter()
                .any(|o| matches!(o, Output::Net(NetAction::Subscribe(s)) if *s == space)),
            "a private space is never subscribed on a version 1 topic"
        );
        assert!(
            outputs.iter().any(|o| matches!(
                o,
                Output::Net(NetAction::SubscribeTopics { topics, .. }) if topics[0] == first_topic
            )),
            "after a restart, the node follows the space's topic again: {outputs:?}"
        );
        let (records, _) = again.service.durable_state();
        assert!(records[&space].private);
    }

    #[test]
    fn membership_actions_follow_the_rule() {
        let (mut node, space) = Node::owning(2, "Ops");
        let outsider = Identity::from_seed([9; 32]).author();
        let run = |node: &mut Node, command| {
            replies(&node.step(
                Input::Command {
                    id: RequestId(1),
                    command,
                },
                at(1),
            ))
            .remove(0)
        };
        // Removing someone who is not a member, a name too long, an unknown space: each a clear
        // error.
        let e = run(
            &mut node,
            Command::RemoveMember {
                space,
                member: outsider,
            },
        );
        assert!(
            matches!(&e, Err(ServiceError::Membership(m)) if m.contains("not a member")),
            "{e:?}"
        );
        let e = run(
            &mut node,
            Command::RenameSpace {
                space,
                name: "x".repeat(100),
            },
        );
        assert!(matches!(e, Err(ServiceError::Schema(_))), "{e:?}");
        let e = run(
            &mut node,
            Command::Members {
                space: SpaceId([7; 16]),
            },
        );
        assert!(matches!(e, Err(ServiceError::UnknownSpace(_))), "{e:?}");
        // The owner cannot demote itself.
        let me = Identity::from_seed([2; 32]).author();
        let e = run(
            &mut node,
            Command::SetRole {
                space,
                member: me,
                role: Role::Member,
            },
        );
        assert!(matches!(e, Err(ServiceError::Membership(_))), "{e:?}");
    }
}

/// Two nodes' services in one private space: a join by redeem, operations by gossip, a removal.
mod private_gossip {
    use super::*;
    use agora_protocol::membership::{build, Role};

    /// What `outputs` publish on private topics, as gossip from `from` on `space`'s topic.
    /// What gossipsub would deliver of `msgs` to `node`: a node follows only the topics of the
    /// epochs it holds, so an envelope under a key it lacks never reaches it.
    pub(super) fn followed(node: &Node, space: SpaceId, msgs: &[GossipIn]) -> Vec<GossipIn> {
        let view = &node.service.private[&space];
        msgs.iter()
            .filter(|g| {
                agora_protocol::sealed::Envelope::decode(&g.bytes)
                    .map_or(true, |e| view.cipher(&e.key_id).is_some())
            })
            .cloned()
            .collect()
    }

    pub(super) fn gossip_from(
        outputs: &[Output],
        from: PeerHandle,
        space: SpaceId,
    ) -> Vec<GossipIn> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Net(NetAction::PublishTo { bytes, .. }) => Some(bytes.clone()),
                _ => None,
            })
            .enumerate()
            .map(|(i, bytes)| GossipIn {
                token: 1000 + i as u64,
                from,
                first_hop: true,
                topic: Some(space),
                bytes,
            })
            .collect()
    }

    fn topics(outputs: &[Output]) -> Vec<String> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Net(NetAction::SubscribeTopics { topics, .. }) => Some(topics.clone()),
                _ => None,
            })
            .next_back()
            .unwrap_or_default()
    }

    #[test]
    fn join_by_redeem_then_operations_by_gossip() {
        let mut a = Node::new(1, config());
        let mut b = Node::new(2, config());
        let outputs = a.run(
            vec![Input::Command {
                id: RequestId(0),
                command: Command::CreatePrivateSpace {
                    name: "Board".into(),
                },
            }],
            at(0),
        );
        let Some(Ok(Reply::Space(space))) = replies(&outputs).into_iter().next() else {
            panic!()
        };
        let a_topics = topics(&outputs);
        assert_eq!(a_topics.len(), 1);
        assert!(a_topics[0].starts_with("agora/v2/"));
        assert!(
            !a_topics[0].contains(&space.to_hex()),
            "the topic does not name the space"
        );

        let Reply::Invitation(inv) = a.command(
            Command::Invite {
                space,
                role: Role::Member,
                expires: 2_000_000_000,
                uses: 1,
            },
            at(1),
        ) else {
            panic!()
        };
        let b_keys = NodeKeys::new(Identity::from_seed([2; 32]));
        let redeem = build::redeem(
            &space,
            inv.invite,
            &Identity::from_seed(inv.secret),
            &b_keys.identity,
            &b_keys.device,
        );
        let Reply::Admitted(admitted) = a.command(
            Command::AdmitRedeem {
                space,
                redeem: Box::new(redeem.clone()),
            },
            at(2),
        ) else {
            panic!()
        };
        // The same ticket again: used up, with a clear reason.
        let again = replies(&a.step(
            Input::Command {
                id: RequestId(5),
                command: Command::AdmitRedeem {
                    space,
                    redeem: Box::new(redeem),
                },
            },
            at(3),
        ))
        .remove(0);
        assert!(
            matches!(&again, Err(ServiceError::Membership(m)) if m.contains("member of this space already")),
            "{again:?}"
        );
        let outputs = b.run(
            vec![Input::Command {
                id: RequestId(0),
                command: Command::JoinPrivate {
                    space,
                    ops: admitted.ops.clone(),
                },
            }],
            at(4),
        );
        assert!(matches!(replies(&outputs)[0], Ok(Reply::Done)));
        assert_eq!(topics(&outputs), a_topics, "B follows the same topic");
        let Reply::Spaces(spaces) = b.command(Command::Spaces, at(5)) else {
            panic!()
        };
        assert_eq!(spaces[0].name.as_deref(), Some("Board"));

        // A renames the space; the operation reaches B by gossip.
        let outputs = a.run(
            vec![Input::Command {
                id: RequestId(0),
                command: Command::RenameSpace {
                    space,
                    name: "Board 2027".into(),
                },
            }],
            at(6),
        );
        let msgs = gossip_from(&outputs, a.name, space);
        assert_eq!(msgs.len(), 1);
        let outputs = b.step(Input::Gossip(msgs.clone()), at(7));
        assert_eq!(verdicts(&outputs), vec![Verdict::Accept]);
        let Reply::Spaces(spaces) = b.command(Command::Spaces, at(8)) else {
            panic!()
        };
        assert_eq!(spaces[0].name.as_deref(), Some("Board 2027"));
        // The same again is a duplicate; a stranger's signed operation is refused and penalised.
        assert_eq!(
            verdicts(&b.step(Input::Gossip(msgs), at(9))),
            vec![Verdict::Ignore]
        );
        let stranger = Identity::from_seed([9; 32]);
        let heads = vec![agora_protocol::membership::Op::verify(&admitted.ops[0])
            .unwrap()
            .id()];
        let forged = agora_protocol::membership::Op::sign(
            &stranger,
            space,
            heads,
            agora_protocol::membership::OpBody::Revoke { invite: inv.invite },
        )
        .unwrap();
        let outputs = b.step(
            Input::Gossip(vec![GossipIn {
                token: 7,
                from: PeerHandle(9),
                first_hop: true,
                topic: Some(space),
                bytes: forged.bytes().to_vec(),
            }]),
            at(10),
        );
        assert_eq!(verdicts(&outputs), vec![Verdict::Reject]);
        let garbage = b.step(
            Input::Gossip(vec![GossipIn {
                token: 8,
                from: PeerHandle(9),
                first_hop: true,
                topic: Some(space),
                bytes: vec![0xa7, 0, 1, 2],
            }]),
            at(11),
        );
        assert_eq!(verdicts(&garbage), vec![Verdict::Reject]);

        // A removes B: the removal travels on the new topic and the old one; B takes it in.
        let outputs = a.run(
            vec![Input::Command {
                id: RequestId(0),
                command: Command::RemoveMember {
                    space,
                    member: b_keys.identity.author(),
                },
            }],
            at(12),
        );
        let published: Vec<&String> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Net(NetAction::PublishTo { topic, .. }) => Some(topic),
                _ => None,
            })
            .collect();
        assert_eq!(published.len(), 2, "new topic and previous one");
        assert_eq!(published[1], &a_topics[0]);
        let new_topics = topics(&outputs);
        assert_eq!(new_topics.len(), 2);
        assert_ne!(new_topics[0], a_topics[0], "a new epoch, a new topic");
        let msgs = gossip_from(&outputs, a.name, space);
        // The copy on the new topic is sealed under the new epoch, which B never gets (nor
        // follows its topic); the copy on the previous topic is sealed under the epoch B holds.
        assert!(followed(&b, space, &msgs[..1]).is_empty());
        let outputs = b.step(Input::Gossip(msgs[1..2].to_vec()), at(13));
        assert_eq!(verdicts(&outputs), vec![Verdict::Accept]);
        let Reply::Members(members) = b.command(Command::Members { space }, at(14)) else {
            panic!()
        };
        assert_eq!(members.len(), 1, "B sees itself removed");
        assert!(
            !topics(&outputs).contains(&new_topics[0]),
            "B does not learn the new epoch's topic"
        );
    }
}

/// A failed flush in a group that changed a private space: nothing of it is published or
/// followed, and memory agrees with the store again.
#[test]
fn a_failed_flush_undoes_a_private_space_change() {
    use agora_protocol::membership::Role;
    let (mut node, space) = Node::owning(3, "Ops");
    node.storage.set_failing(true);
    let outputs = node.step(
        Input::Command {
            id: RequestId(1),
            command: Command::Invite {
                space,
                role: Role::Member,
                expires: 2_000_000_000,
                uses: 1,
            },
        },
        at(1),
    );
    assert!(matches!(replies(&outputs)[0], Err(ServiceError::Store(_))));
    assert!(
        !outputs.iter().any(|o| matches!(
            o,
            Output::Net(NetAction::PublishTo { .. } | NetAction::SubscribeTopics { .. })
        )),
        "{outputs:?}"
    );
    // A failed creation leaves no space behind.
    let outputs = node.step(
        Input::Command {
            id: RequestId(2),
            command: Command::CreatePrivateSpace {
                name: "Lost".into(),
            },
        },
        at(2),
    );
    assert!(matches!(replies(&outputs)[0], Err(ServiceError::Store(_))));
    node.storage.set_failing(false);
    let Reply::Spaces(spaces) = node.command(Command::Spaces, at(3)) else {
        panic!()
    };
    assert_eq!(spaces.len(), 1, "{spaces:?}");
    // The invitation did not happen: the space holds only its creation, in memory as on disk.
    let Reply::Invitation(_) = node.command(
        Command::Invite {
            space,
            role: Role::Member,
            expires: 2_000_000_000,
            uses: 1,
        },
        at(4),
    ) else {
        panic!()
    };
    let store = Store::new(node.storage.clone()).unwrap();
    assert_eq!(
        store.ops(&space).unwrap().len(),
        2,
        "creation and one invitation"
    );
    assert_eq!(
        node.service.private[&space].log().len(),
        (2, 0),
        "memory agrees with the store"
    );
}

/// Ideas in private spaces: sealed, opened by members, refused from non-writers.
mod private_content {
    use super::*;
    use agora_protocol::automerge::AutoCommit;
    use agora_protocol::membership::{build, Role};
    use agora_protocol::DocKind;

    /// Contributions and operations `outputs` publish on private topics, as gossip from `from`.
    fn published(outputs: &[Output], from: PeerHandle, space: SpaceId) -> Vec<GossipIn> {
        assert!(
            !outputs
                .iter()
                .any(|o| matches!(o, Output::Net(NetAction::Publish { .. }))),
            "nothing of a private space goes on a version 1 topic"
        );
        super::private_gossip::gossip_from(outputs, from, space)
    }

    /// `owner` invites `seed`'s node with `role`; the newcomer joins with the owner's answer.
    pub(super) fn admit(owner: &mut Node, space: SpaceId, seed: u8, role: Role, t: u64) -> Node {
        let mut node = Node::new(seed, config());
        let Reply::Invitation(inv) = owner.command(
            Command::Invite {
                space,
                role,
                expires: 2_000_000_000,
                uses: 1,
            },
            at(t),
        ) else {
            panic!()
        };
        let keys = NodeKeys::new(Identity::from_seed([seed; 32]));
        let redeem = build::redeem(
            &space,
            inv.invite,
            &Identity::from_seed(inv.secret),
            &keys.identity,
            &keys.device,
        );
        let Reply::Admitted(admitted) = owner.command(
            Command::AdmitRedeem {
                space,
                redeem: Box::new(redeem),
            },
            at(t + 1),
        ) else {
            panic!()
        };
        node.command(
            Command::JoinPrivate {
                space,
                ops: admitted.ops,
            },
            at(t + 2),
        );
        node
    }

    fn post(node: &mut Node, space: SpaceId, title: &str, t: u64) -> (DocId, Vec<Output>) {
        let outputs = node.step(
            Input::Command {
                id: RequestId(77),
                command: Command::CreateIdea {
                    space,
                    draft: draft(title),
                },
            },
            at(t),
        );
        match replies(&outputs).remove(0) {
            Ok(Reply::Created(id)) => (id, outputs),
            other => panic!("{other:?}"),
        }
    }

    fn draft(title: &str) -> IdeaDraft {
        IdeaDraft {
            title: title.into(),
            ..IdeaDraft::default()
        }
    }

    fn titles(node: &mut Node, space: SpaceId) -> Vec<String> {
        let Reply::Ideas(ideas) = node.command(Command::ListIdeas { space }, at(500)) else {
            panic!()
        };
        ideas.into_iter().map(|i| i.title).collect()
    }

    #[test]
    fn members_read_sealed_ideas_and_only_writers_write() {
        let (mut a, space) = Node::owning(1, "Board");
        let mut b = admit(&mut a, space, 2, Role::Member, 10);
        let mut c = admit(&mut a, space, 3, Role::Reader, 20);
        // A posts: sealed, on the private topic only, and nothing of it in the clear.
        let (idea, outputs) = post(&mut a, space, "Quarterly plan", 40);
        let msgs = published(&outputs, a.name, space);
        assert_eq!(msgs.len(), 1);
        assert!(replica::is_sealed(&msgs[0].bytes));
        let needle = b"Quarterly plan";
        assert!(
            !msgs[0].bytes.windows(needle.len()).any(|w| w == needle),
            "the title travels sealed"
        );
        assert!(
            !msgs[0].bytes.windows(16).any(|w| w == space.0),
            "the space id is not on the wire"
        );
        // B and C open it.
        assert_eq!(
            verdicts(&b.step(Input::Gossip(msgs.clone()), at(41))),
            vec![Verdict::Accept]
        );
        assert_eq!(
            verdicts(&c.step(Input::Gossip(msgs.clone()), at(41))),
            vec![Verdict::Accept]
        );
        assert_eq!(titles(&mut b, space), vec!["Quarterly plan"]);
        assert_eq!(titles(&mut c, space), vec!["Quarterly plan"]);

        // B comments; A and C take it in.
        let outputs = b.step(
            Input::Command {
                id: RequestId(1),
                command: Command::Comment {
                    idea,
                    text: "Agreed".into(),
                },
            },
            at(50),
        );
        assert!(matches!(replies(&outputs)[0], Ok(Reply::Done)));
        let msgs = published(&outputs, b.name, space);
        assert_eq!(
            verdicts(&a.step(Input::Gossip(msgs.clone()), at(51))),
            vec![Verdict::Accept]
        );

        // C is a reader: its node refuses to post, and a post it forges anyway is refused by
        // A and penalised.
        let refused = c.step(
            Input::Command {
                id: RequestId(2),
                command: Command::CreateIdea {
                    space,
                    draft: draft("A reader's idea"),
                },
            },
            at(60),
        );
        assert!(
            matches!(&replies(&refused)[0], Err(ServiceError::Membership(m)) if m.contains("reader")),
            "{refused:?}"
        );
        let c_identity = Identity::from_seed([3; 32]);
        let forged = forge_sealed(&a, space, &c_identity, "Forged by a reader");
        // C's own node publishes it (the gossip message's source is the sender): C's node is to
        // blame.
        let outputs = a.step(
            Input::Gossip(vec![GossipIn {
                token: 9,
                from: c.name,
                first_hop: true,
                topic: Some(space),
                bytes: forged.clone(),
            }]),
            at(61),
        );
        assert_eq!(verdicts(&outputs), vec![Verdict::Reject]);
        assert_eq!(
            a.service.status().counters.rejected.get("not_writer"),
            Some(&1)
        );
        // A version 1 contribution naming the private space is refused too.
        let mut plain_doc = AutoCommit::new().with_actor(agora_protocol::idea::actor_for(
            &c_identity.author(),
            &[0; 16],
        ));
        let plain_id = DocId::idea(&space, &c_identity.author(), &[1; 16]);
        let change = agora_protocol::idea::create_idea(
            &mut plain_doc,
            &draft("In the clear"),
            &c_identity.author(),
            &[1; 16],
            1,
        )
        .unwrap();
        let plain =
            Contribution::sign(&c_identity, space, plain_id, DocKind::Idea, &change).encode();
        let outputs = a.step(
            Input::Gossip(vec![GossipIn {
                token: 10,
                from: c.name,
                first_hop: true,
                topic: Some(space),
                bytes: plain,
            }]),
            at(62),
        );
        assert_eq!(verdicts(&outputs), vec![Verdict::Reject]);
        assert_eq!(titles(&mut a, space), vec!["Quarterly plan"]);

        // Snapshots too are sealed: the store holds ciphertext only.
        a.command(Command::Checkpoint, at(70));
        for needle in [&b"Quarterly plan"[..], b"Agreed", b"Board"] {
            assert!(
                a.storage.trees_holding(needle).is_empty(),
                "{:?} in the clear on disk",
                String::from_utf8_lossy(needle)
            );
        }
        // Everything survives a restart: snapshots and sealed contributions open again.
        let store = Store::new(a.storage.clone()).unwrap();
        let mut again = Node {
            name: a.name,
            service: Service::open(store, Identity::from_seed([1; 32]), config(), [1; 32])
                .expect("reopen"),
            storage: a.storage.clone(),
        };
        let Reply::Ideas(ideas) = again.command(Command::ListIdeas { space }, at(80)) else {
            panic!()
        };
        assert_eq!(ideas.len(), 1);
        assert_eq!(ideas[0].comments.len(), 1);
    }

    /// An envelope a node cannot open on a private space's topic is the sender's fault: a node
    /// follows only the topics of epochs it holds, and members seal what they publish on a topic
    /// under its epoch. Whoever's name is inside, a key nobody in the space holds is refused and
    /// penalised (PROTOCOL §14.6); so is garbage under a key the node holds.
    #[test]
    fn an_envelope_a_node_cannot_open_on_gossip_is_blamed_on_its_sender() {
        let (mut a, space) = Node::owning(1, "Keys");
        let _b = admit(&mut a, space, 2, Role::Member, 10);
        let secret = agora_protocol::keys::EpochSecret::from_bytes([3; 32]);
        let sealed_by = |who: &Identity, salt: u8| {
            let mut doc = AutoCommit::new()
                .with_actor(agora_protocol::idea::actor_for(&who.author(), &[0; 16]));
            let id = DocId::idea(&space, &who.author(), &[salt; 16]);
            let change = agora_protocol::idea::create_idea(
                &mut doc,
                &draft("Unknown key"),
                &who.author(),
                &[salt; 16],
                1,
            )
            .unwrap();
            agora_protocol::sealed::Envelope::seal(
                who,
                &space,
                secret.key_id(),
                &secret.content_key().cipher(),
                &id,
                DocKind::Idea,
                change.raw_bytes(),
                [salt; 24],
            )
            .encode()
        };
        let member = Identity::from_seed([2; 32]);
        let stranger = Identity::from_seed([66; 32]);
        let outputs = a.step(
            Input::Gossip(vec![
                GossipIn {
                    token: 1,
                    from: PeerHandle(2),
                    first_hop: true,
                    topic: Some(space),
                    bytes: sealed_by(&member, 1),
                },
                GossipIn {
                    token: 2,
                    from: PeerHandle(66),
                    first_hop: true,
                    topic: Some(space),
                    bytes: sealed_by(&stranger, 2),
                },
            ]),
            at(20),
        );
        assert_eq!(verdicts(&outputs), vec![Verdict::Reject, Verdict::Reject]);
        assert_eq!(
            a.service
                .status()
                .counters
                .rejected
                .get("sealed_unknown_key"),
            Some(&2)
        );
        // Under the space's own key, bytes that do not open are refused too.
        let (key_id, _) = a.service.private[&space].current().unwrap();
        let junk = agora_protocol::sealed::Envelope {
            key_id,
            nonce: [5; 24],
            ct: vec![7; 64],
        };
        let outputs = a.step(
            Input::Gossip(vec![GossipIn {
                token: 3,
                from: PeerHandle(66),
                first_hop: true,
                topic: Some(space),
                bytes: junk.encode(),
            }]),
            at(21),
        );
        assert_eq!(verdicts(&outputs), vec![Verdict::Reject]);
        assert_eq!(
            a.service
                .status()
                .counters
                .rejected
                .get("sealed_undecryptable"),
            Some(&1)
        );
        assert!(titles(&mut a, space).is_empty());
    }

    /// A sealed idea by `author` in `space`, under the current key of `holder`'s view (as a
    /// member who is not entitled to write would make it).
    fn forge_sealed(holder: &Node, space: SpaceId, author: &Identity, title: &str) -> Vec<u8> {
        let view = &holder.service.private[&space];
        let (key_id, cipher) = view.current().unwrap();
        let mut doc = AutoCommit::new()
            .with_actor(agora_protocol::idea::actor_for(&author.author(), &[0; 16]));
        let id = DocId::idea(&space, &author.author(), &[5; 16]);
        let change = agora_protocol::idea::create_idea(
            &mut doc,
            &draft(title),
            &author.author(),
            &[5; 16],
            1,
        )
        .unwrap();
        agora_protocol::sealed::Envelope::seal(
            author,
            &space,
            key_id,
            cipher,
            &id,
            DocKind::Idea,
            change.raw_bytes(),
            [7; 24],
        )
        .encode()
    }

    #[test]
    fn a_removed_member_is_refused_and_cannot_open_new_ideas() {
        let (mut a, space) = Node::owning(1, "Ops");
        let mut b = admit(&mut a, space, 2, Role::Member, 10);
        let b_identity = Identity::from_seed([2; 32]);
        // Before its removal B posts and comments on A's idea; A takes both in.
        let (a_idea, outputs) = post(&mut a, space, "A's plan", 12);
        b.step(Input::Gossip(published(&outputs, a.name, space)), at(13));
        let (_, outputs) = post(&mut b, space, "Before removal", 14);
        let mut msgs = published(&outputs, b.name, space);
        let outputs = b.step(
            Input::Command {
                id: RequestId(9),
                command: Command::Comment {
                    idea: a_idea,
                    text: "B was here".into(),
                },
            },
            at(15),
        );
        msgs.extend(published(&outputs, b.name, space));
        assert_eq!(
            verdicts(&a.step(Input::Gossip(msgs), at(16))),
            vec![Verdict::Accept, Verdict::Accept]
        );
        let outputs = a.run(
            vec![Input::Command {
                id: RequestId(3),
                command: Command::RemoveMember {
                    space,
                    member: b_identity.author(),
                },
            }],
            at(20),
        );
        let ops = published(&outputs, a.name, space);
        b.step(Input::Gossip(ops.clone()), at(21));
        // B's node knows it was removed and refuses to post.
        let refused = b.step(
            Input::Command {
                id: RequestId(4),
                command: Command::CreateIdea {
                    space,
                    draft: draft("After removal"),
                },
            },
            at(22),
        );
        assert!(matches!(
            &replies(&refused)[0],
            Err(ServiceError::Membership(_))
        ));
        // A post B seals under the key it still holds is refused by A as a late write (whoever
        // relays it may have taken it in before it heard of the removal: no penalty).
        let old = {
            let view = &b.service.private[&space];
            assert!(view.current().is_none(), "B holds no key of the new epoch");
            let (id, _) = view.secrets().iter().next().unwrap();
            *id
        };
        let cipher = b.service.private[&space].cipher(&old).unwrap().clone();
        let mut doc = AutoCommit::new().with_actor(agora_protocol::idea::actor_for(
            &b_identity.author(),
            &[0; 16],
        ));
        let id = DocId::idea(&space, &b_identity.author(), &[6; 16]);
        let change = agora_protocol::idea::create_idea(
            &mut doc,
            &draft("Late post"),
            &b_identity.author(),
            &[6; 16],
            1,
        )
        .unwrap();
        let late = agora_protocol::sealed::Envelope::seal(
            &b_identity,
            &space,
            old,
            &cipher,
            &id,
            DocKind::Idea,
            change.raw_bytes(),
            [8; 24],
        )
        .encode();
        let outputs = a.step(
            Input::Gossip(vec![GossipIn {
                token: 11,
                from: b.name,
                first_hop: true,
                topic: Some(space),
                bytes: late.clone(),
            }]),
            at(23),
        );
        assert_eq!(verdicts(&outputs), vec![Verdict::Ignore]);
        assert_eq!(
            a.service.status().counters.rejected.get("late_write"),
            Some(&1)
        );
        // A's next idea is sealed under the new epoch: B cannot open it.
        let (_, outputs) = post(&mut a, space, "After B left", 30);
        let msgs = published(&outputs, a.name, space);
        assert_eq!(msgs.len(), 1);
        assert!(
            super::private_gossip::followed(&b, space, &msgs).is_empty(),
            "B holds no key that opens it (nor follows its topic)"
        );
        // Were it put on a topic B follows, B could not open it, and would blame the sender.
        let sealed = agora_protocol::sealed::Envelope::decode(&msgs[0].bytes).unwrap();
        assert!(b.service.private[&space].cipher(&sealed.key_id).is_none());
        let outputs = b.step(Input::Gossip(msgs), at(31));
        assert_eq!(verdicts(&outputs), vec![Verdict::Reject]);
        assert_eq!(titles(&mut b, space), vec!["Before removal", "A's plan"]);

        // A newcomer admitted after the removal gets, by sync from A, everything B wrote before
        // its removal (the removal pinned it), and nobody is banned for it; B's late post
        // stays out.
        let mut c = admit(&mut a, space, 3, Role::Member, 40);
        let outputs = link_private(&mut a, &mut c, space, at(50));
        assert!(bans(&outputs).is_empty(), "{:?}", bans(&outputs));
        assert_eq!(
            titles(&mut c, space),
            vec!["After B left", "Before removal", "A's plan"]
        );
        let Reply::Idea(plan) = c.command(Command::ShowIdea { idea: a_idea }, at(51)) else {
            panic!()
        };
        assert_eq!(
            plan.comments.len(),
            1,
            "B's comment before its removal stays"
        );
        let outputs = c.step(
            Input::Gossip(vec![GossipIn {
                token: 12,
                from: a.name,
                first_hop: true,
                topic: Some(space),
                bytes: late,
            }]),
            at(52),
        );
        assert_eq!(verdicts(&outputs), vec![Verdict::Ignore]);
        assert_eq!(titles(&mut c, space).len(), 3);
    }

    /// `a` and `b` connect (each told the other's transport id; their hellos tell each other
    /// the member behind it), follow `space`, and run their sync rounds to the end. Every
    /// output.
    fn link_private(a: &mut Node, b: &mut Node, space: SpaceId, now: Now) -> Vec<Output> {
        let meet = |x: &mut Node, y: PeerHandle| {
            x.run(
                vec![
                    Input::PeerConnected { peer: y },
                    Input::PeerIdentified {
                        peer: y,
                        id: vec![y.0 as u8],
                    },
                    Input::PeerSubscribed { peer: y, space },
                ],
                now,
            )
        };
        let (an, bn) = (a.name, b.name);
        let from_a = meet(a, bn);
        let from_b = meet(b, an);
        relay(a, b, from_a, from_b, now)
    }

    #[test]
    fn a_member_catches_up_by_sync_and_a_stranger_learns_nothing() {
        let (mut a, space) = Node::owning(1, "Lab");
        let mut b = admit(&mut a, space, 2, Role::Member, 10);
        // While B is away: ideas, a comment, a rename, and a third member (whose admission
        // B must learn to accept its posts).
        let (idea, _) = post(&mut a, space, "Microscope booking", 20);
        post(&mut a, space, "Reagent order", 21);
        a.command(
            Command::Comment {
                idea,
                text: "Thursdays".into(),
            },
            at(22),
        );
        a.command(
            Command::RenameSpace {
                space,
                name: "Lab 2".into(),
            },
            at(23),
        );
        let mut c = admit(&mut a, space, 3, Role::Member, 30);
        let (_, _) = post(&mut c, space, "From C", 40);
        // C's post reaches A by gossip.
        let c_post = contributions_of_node(&mut c, space);
        for (i, bytes) in c_post.into_iter().enumerate() {
            let out = a.step(
                Input::Gossip(vec![GossipIn {
                    token: 50 + i as u64,
                    from: c.name,
                    first_hop: true,
                    topic: Some(space),
                    bytes,
                }]),
                at(41),
            );
            assert!(!verdicts(&out).contains(&Verdict::Reject));
        }

        let outputs = link_private(&mut a, &mut b, space, at(50));
        // Requests name the space by its locator, never by its id.
        for (_, _, request) in requests(&outputs) {
            assert_ne!(request.space(), space, "the space id is not on the wire");
        }
        assert!(
            bans(&outputs).is_empty(),
            "an honest member is not banned: {:?}",
            bans(&outputs)
        );
        let mut titles = titles(&mut b, space);
        titles.sort();
        assert_eq!(
            titles,
            vec!["From C", "Microscope booking", "Reagent order"]
        );
        let Reply::Spaces(spaces) = b.command(Command::Spaces, at(60)) else {
            panic!()
        };
        assert_eq!(spaces[0].name.as_deref(), Some("Lab 2"));
        assert_eq!(b.service.heads(&space), a.service.heads(&space));
        assert_eq!(b.service.digest(&space), a.service.digest(&space));

        // A stranger's node, even one that knows the locator (a removed member would), is
        // answered exactly as for a space A does not hold.
        let stranger = PeerHandle(9);
        a.run(
            vec![
                Input::PeerConnected { peer: stranger },
                Input::PeerIdentified {
                    peer: stranger,
                    id: vec![9],
                },
            ],
            at(70),
        );
        let locator = a.service.wire_name(&space);
        for name in [locator, space.0, [7; 16]] {
            let answer = a.answer(
                stranger,
                SyncRequest::Summary {
                    v: 1,
                    space: name,
                    digest: [0; 32],
                },
                at(71),
            );
            assert_eq!(
                answer,
                SyncResponse::Refused {
                    reason: "space not held here".into()
                }
            );
        }
    }

    /// A node's command, as one group: the gossip it publishes on the space's topics.
    fn said(node: &mut Node, space: SpaceId, command: Command, t: u64) -> Vec<GossipIn> {
        let outputs = node.step(
            Input::Command {
                id: RequestId(5),
                command,
            },
            at(t),
        );
        assert!(replies(&outputs)[0].is_ok(), "{:?}", replies(&outputs));
        published(&outputs, node.name, space)
    }

    /// An invitation `node` makes: the operation it publishes.
    fn invite_op(node: &mut Node, space: SpaceId, t: u64) -> Vec<GossipIn> {
        said(
            node,
            space,
            Command::Invite {
                space,
                role: Role::Member,
                expires: 2_000_000_000,
                uses: 1,
            },
            t,
        )
    }

    /// What a node shows of a space: each idea's title with its comments, and the heads that
    /// sync compares.
    fn shown(node: &mut Node, space: SpaceId) -> (Vec<(String, Vec<String>)>, String) {
        let Reply::Ideas(ideas) = node.command(Command::ListIdeas { space }, at(900)) else {
            panic!()
        };
        let mut shown: Vec<(String, Vec<String>)> = ideas
            .into_iter()
            .map(|i| {
                let mut comments: Vec<String> = i.comments.into_iter().map(|c| c.text).collect();
                comments.sort();
                (i.title, comments)
            })
            .collect();
        shown.sort();
        (shown, format!("{:?}", node.service.heads(&space)))
    }

    /// Every order of `n` items (n! of them, n small).
    fn orders(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![Vec::new()];
        }
        let mut out = Vec::new();
        for rest in orders(n - 1) {
            for at in 0..=rest.len() {
                let mut order = rest.clone();
                order.insert(at, n - 1);
                out.push(order);
            }
        }
        out
    }

    /// `node` meets `peer` (told its transport id, the peer's name byte) following `space`: the
    /// hello its sync round begins with.
    fn hello_to(node: &mut Node, peer: PeerHandle, space: SpaceId, t: u64) -> SyncRequest {
        let outputs = node.run(
            vec![
                Input::PeerConnected { peer },
                Input::PeerIdentified {
                    peer,
                    id: vec![peer.0 as u8],
                },
                Input::PeerSubscribed { peer, space },
            ],
            at(t),
        );
        let hellos: Vec<SyncRequest> = requests(&outputs)
            .into_iter()
            .filter(|(to, _, r)| *to == peer && matches!(r, SyncRequest::Hello { .. }))
            .map(|(_, _, r)| r)
            .collect();
        assert_eq!(hellos.len(), 1, "one hello, before any summary");
        hellos.into_iter().next().unwrap()
    }

    /// The hello of private-space sync (PROTOCOL §14.9) tells the member behind a peer only to
    /// the member it greets: nothing is answered before it; a member's hello is answered with
    /// the responder's, which only a holder of the key opens; the same hello from another
    /// connection, a stranger's, and a removed member's are answered as a space not held is.
    #[test]
    fn a_hello_tells_who_runs_a_node_only_to_a_member() {
        let (mut o, space) = Node::owning(1, "Hello");
        let mut m = admit(&mut o, space, 2, Role::Member, 10);
        let mut x = admit(&mut o, space, 3, Role::Member, 20);
        let not_held = SyncResponse::Refused {
            reason: "space not held here".into(),
        };
        for peer in [m.name, x.name, PeerHandle(9)] {
            o.run(
                vec![
                    Input::PeerConnected { peer },
                    Input::PeerIdentified {
                        peer,
                        id: vec![peer.0 as u8],
                    },
                ],
                at(30),
            );
        }
        // Before a hello, even a member's summary is refused: a peer id names no author.
        let summary = SyncRequest::Summary {
            v: 1,
            space: o.service.wire_name(&space),
            digest: [0; 32],
        };
        assert_eq!(o.answer(m.name, summary.clone(), at(31)), not_held);

        // M's hello is sealed (its author is nowhere in the clear) and O answers with its own.
        let hello = hello_to(&mut m, o.name, space, 32);
        let SyncRequest::Hello { key, ct, .. } = &hello else {
            unreachable!()
        };
        let m_author = Identity::from_seed([2; 32]).author();
        assert!(!ct.windows(32).any(|w| w == m_author.0));
        let SyncResponse::Hello { nonce, ct } = o.answer(m.name, hello.clone(), at(33)) else {
            panic!("O answers a member's hello with its own")
        };
        let key = agora_protocol::keys::KeyId(*key);
        let cipher = m.service.private[&space].cipher(&key).unwrap().clone();
        assert_eq!(
            agora_protocol::hello::open(&space, &key, &cipher, &nonce, &ct, &[1], &[2]),
            Ok(Identity::from_seed([1; 32]).author()),
            "O's hello, bound to this connection"
        );
        assert!(matches!(
            o.answer(m.name, summary.clone(), at(34)),
            SyncResponse::Heads { .. }
        ));

        // The same hello replayed by another peer proves nothing (it binds M's transport id).
        assert_eq!(o.answer(PeerHandle(9), hello, at(35)), not_held);
        assert_eq!(o.answer(PeerHandle(9), summary.clone(), at(35)), not_held);

        // A stranger's hello, under a key of its own making: a space not held.
        let made_up = agora_protocol::keys::EpochSecret::from_bytes([42; 32]);
        let stranger = Identity::from_seed([9; 32]);
        let forged = agora_protocol::hello::seal(
            &stranger,
            &space,
            &made_up.key_id(),
            &made_up.content_key().cipher(),
            &[9],
            &[1],
            &[5; 24],
        )
        .unwrap();
        let forged = SyncRequest::Hello {
            v: 2,
            space: o.service.wire_name(&space),
            key: made_up.key_id().0,
            nonce: [5; 24],
            ct: serde_bytes::ByteBuf::from(forged),
        };
        assert_eq!(o.answer(PeerHandle(9), forged, at(36)), not_held);

        // X is removed; its node has not heard of it and greets O under the key it holds.
        o.command(
            Command::RemoveMember {
                space,
                member: Identity::from_seed([3; 32]).author(),
            },
            at(40),
        );
        let hello = hello_to(&mut x, o.name, space, 41);
        assert_eq!(o.answer(x.name, hello, at(42)), not_held);
        assert_eq!(o.answer(x.name, summary, at(42)), not_held);
    }

    /// The requester checks the hello it is answered with: a valid hello from someone who is no
    /// longer a member in its view (removed while the hello travelled) ends the pair without
    /// blame and with no summary sent; a hello that does not open bans the peer; a member's
    /// goes on with the summary.
    #[test]
    fn a_requester_checks_the_hello_it_is_answered_with() {
        let (mut o, space) = Node::owning(1, "Hello back");
        let mut x = admit(&mut o, space, 3, Role::Member, 10);
        // (M joins after X: it holds X's admission, which X's removal builds on.)
        let mut m = admit(&mut o, space, 2, Role::Member, 20);
        let answer_from = |o: &mut Node, peer: &mut Node, t: u64| {
            let outputs = o.run(
                vec![
                    Input::PeerConnected { peer: peer.name },
                    Input::PeerIdentified {
                        peer: peer.name,
                        id: vec![peer.name.0 as u8],
                    },
                    Input::PeerSubscribed {
                        peer: peer.name,
                        space,
                    },
                ],
                at(t),
            );
            let (_, exchange, hello) = requests(&outputs).pop().expect("a hello");
            assert!(matches!(hello, SyncRequest::Hello { .. }));
            peer.step(
                Input::PeerIdentified {
                    peer: o.name,
                    id: vec![1],
                },
                at(t),
            );
            (exchange, peer.answer(o.name, hello, at(t)))
        };
        // X answers with a valid hello of its own; O removes X before the answer arrives.
        let (exchange, answer) = answer_from(&mut o, &mut x, 40);
        assert!(matches!(answer, SyncResponse::Hello { .. }), "{answer:?}");
        let removal = said(
            &mut o,
            space,
            Command::RemoveMember {
                space,
                member: Identity::from_seed([3; 32]).author(),
            },
            40,
        );
        let outputs = o.step(
            Input::SyncResponse {
                peer: x.name,
                exchange,
                result: Ok(answer),
                checked: None,
            },
            at(41),
        );
        assert!(bans(&outputs).is_empty());
        assert!(requests(&outputs).is_empty(), "no summary to a non-member");
        assert!(o.service.sync_status().iter().all(|p| p.peer != x.name));

        // M takes the removal in (and the new epoch with it), then answers O's hello with bytes
        // that do not open: banned.
        let removal = super::private_gossip::followed(&m, space, &removal);
        assert!(!verdicts(&m.step(Input::Gossip(removal), at(45))).contains(&Verdict::Reject));
        let (exchange, answer) = answer_from(&mut o, &mut m, 50);
        let SyncResponse::Hello { nonce, ct } = answer else {
            panic!("M greets O back")
        };
        let mut bad = ct.to_vec();
        bad[0] ^= 1;
        let outputs = o.step(
            Input::SyncResponse {
                peer: m.name,
                exchange,
                result: Ok(SyncResponse::Hello {
                    nonce,
                    ct: serde_bytes::ByteBuf::from(bad),
                }),
                checked: None,
            },
            at(51),
        );
        assert_eq!(bans(&outputs), vec![(m.name, "sync_bad_hello")]);

        // Unbanned and greeted again later, M's true answer lets the round go on.
        let later = 51 + config().ban_for + 1;
        o.step(Input::PeerDisconnected { peer: m.name }, at(later));
        let (exchange, answer) = answer_from(&mut o, &mut m, later + 1);
        let outputs = o.step(
            Input::SyncResponse {
                peer: m.name,
                exchange,
                result: Ok(answer),
                checked: None,
            },
            at(later + 2),
        );
        assert!(bans(&outputs).is_empty());
        assert!(matches!(
            requests(&outputs).as_slice(),
            [(_, _, SyncRequest::Summary { .. })]
        ));
    }

    /// A removal and the removed member's concurrent writes (a comment, a new idea), with or
    /// without a member's reply built on the late comment, reach observers in every order;
    /// after sync every node shows the same ideas and has the same heads: what the write rule
    /// keeps (PROTOCOL §14.7), whatever the order.
    fn concurrent_removal_and_writes(with_reply: bool) {
        let (mut o, space) = Node::owning(1, "Ops");
        let x_author = Identity::from_seed([3; 32]).author();
        let mut x = admit(&mut o, space, 3, Role::Member, 10);
        let mut m = admit(&mut o, space, 2, Role::Member, 20);
        let groups = if with_reply { 4 } else { 3 };
        let every = orders(groups);
        let mut observers: Vec<Node> = (0..every.len())
            .map(|i| admit(&mut o, space, 10 + i as u8, Role::Reader, 30 + 3 * i as u64))
            .collect();
        let deliver = |node: &mut Node, msgs: &[GossipIn], t: u64| {
            let msgs = super::private_gossip::followed(node, space, msgs);
            let outputs = node.step(Input::Gossip(msgs), at(t));
            assert!(
                !verdicts(&outputs).contains(&Verdict::Reject),
                "nobody here is at fault: {:?}",
                verdicts(&outputs)
            );
        };
        // Before: O's idea, and X's comment on it, which every node takes in (and the removal
        // pins).
        let (plan, outputs) = post(&mut o, space, "Plan", 200);
        let idea_msgs = published(&outputs, o.name, space);
        let c0 = {
            deliver(&mut x, &idea_msgs, 201);
            said(
                &mut x,
                space,
                Command::Comment {
                    idea: plan,
                    text: "X, before".into(),
                },
                202,
            )
        };
        deliver(&mut o, &c0, 204);
        for node in std::iter::once(&mut m).chain(observers.iter_mut()) {
            deliver(node, &idea_msgs, 203);
            deliver(node, &c0, 204);
        }
        // Concurrently: O removes X; X, not knowing, comments again and posts an idea; M takes
        // X's comment in and (in one variant) replies, building on it.
        let removal = {
            let outputs = o.run(
                vec![Input::Command {
                    id: RequestId(3),
                    command: Command::RemoveMember {
                        space,
                        member: x_author,
                    },
                }],
                at(300),
            );
            published(&outputs, o.name, space)
        };
        let late_comment = said(
            &mut x,
            space,
            Command::Comment {
                idea: plan,
                text: "X, late".into(),
            },
            301,
        );
        let (_, outputs) = post(&mut x, space, "X's late idea", 302);
        let late_idea = published(&outputs, x.name, space);
        deliver(&mut m, &late_comment, 303);
        let mut sent = vec![removal.clone(), late_comment.clone(), late_idea.clone()];
        if with_reply {
            sent.push(said(
                &mut m,
                space,
                Command::Comment {
                    idea: plan,
                    text: "M, on X's late comment".into(),
                },
                304,
            ));
        }
        deliver(&mut m, &late_idea, 305);
        deliver(&mut m, &removal, 306);
        // O hears of X's writes after its removal (and of M's reply, which needs one of them).
        for msgs in &sent[1..] {
            deliver(&mut o, msgs, 307);
        }
        for (observer, order) in observers.iter_mut().zip(&every) {
            for (k, &i) in order.iter().enumerate() {
                deliver(observer, &sent[i], 310 + k as u64);
            }
        }
        // Everyone syncs with M (who holds everything), O first.
        let outputs = link_private(&mut o, &mut m, space, at(400));
        assert!(bans(&outputs).is_empty(), "{:?}", bans(&outputs));
        for observer in observers.iter_mut() {
            let outputs = link_private(observer, &mut m, space, at(401));
            assert!(bans(&outputs).is_empty(), "{:?}", bans(&outputs));
        }
        let mut comments = vec!["X, before".to_string()];
        if with_reply {
            comments.extend(["M, on X's late comment".to_string(), "X, late".to_string()]);
        }
        comments.sort();
        let expected = vec![("Plan".to_string(), comments)];
        let (m_shows, m_heads) = shown(&mut m, space);
        assert_eq!(m_shows, expected, "M");
        let (o_shows, o_heads) = shown(&mut o, space);
        assert_eq!((o_shows, o_heads), (expected.clone(), m_heads.clone()), "O");
        for (observer, order) in observers.iter_mut().zip(&every) {
            assert_eq!(
                shown(observer, space),
                (expected.clone(), m_heads.clone()),
                "an observer that received {order:?}"
            );
        }
        // The same after a restart: what is hidden is found again from the membership.
        let mut again = Node {
            name: o.name,
            service: Service::open(
                Store::new(o.storage.clone()).unwrap(),
                Identity::from_seed([1; 32]),
                config(),
                [1; 32],
            )
            .unwrap(),
            storage: o.storage.clone(),
        };
        assert_eq!(shown(&mut again, space), (expected, m_heads), "O restarted");
    }

    #[test]
    fn a_removed_members_concurrent_writes_resolve_alike_in_every_order() {
        concurrent_removal_and_writes(false);
    }

    #[test]
    fn a_late_write_a_member_built_on_stands_in_every_order() {
        concurrent_removal_and_writes(true);
    }

    /// A rotation in a space larger than one operation's wraps spreads them over `share`
    /// operations; a member whose wrap is in one must be able to open it from gossip, so it
    /// travels sealed under the epoch before (regression: it was sealed under the epoch it
    /// wraps, which that member could not open, and only sync repaired it).
    #[test]
    fn a_member_whose_wrap_is_in_a_share_takes_a_removal_in_by_gossip() {
        let (o, mut m, space, msgs) = removal_in_a_big_space();
        let msgs = super::private_gossip::followed(&m, space, &msgs);
        let outputs = m.step(Input::Gossip(msgs), at(3));
        assert!(!verdicts(&outputs).contains(&Verdict::Reject));
        let current = |n: &Node| n.service.private[&space].current().map(|(k, _)| k);
        assert!(current(&o).is_some());
        assert_eq!(current(&m), current(&o), "the member holds the new epoch");
    }

    /// A space of more than `MAX_WRAPS` members whose owner's node (`o`) removes one: `m` is the
    /// member whose wrap of the new epoch is in the last share. What `o` publishes, in order
    /// (the removal, then the shares, each on the current topic then the previous one).
    fn removal_in_a_big_space() -> (Node, Node, SpaceId, Vec<GossipIn>) {
        use agora_protocol::membership::MAX_WRAPS;
        let owner = Identity::from_seed([1; 32]);
        let people: Vec<Identity> = (0..MAX_WRAPS as u64 + 10)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i + 1000).to_le_bytes());
                Identity::from_seed(seed)
            })
            .collect();
        let (space, ops) = agora_testkit::private::big_space(&owner, &people);
        let ops: Vec<Vec<u8>> = ops.iter().map(|o| o.bytes().to_vec()).collect();
        // Wraps are sorted by recipient: the last recipient's is in the last share.
        let last = people.iter().max_by_key(|p| p.author()).unwrap().clone();
        let last_author = last.author();
        let node = |seed: u8, identity: Identity| {
            let storage = MemoryStorage::new();
            let store = Store::new(storage.clone()).unwrap();
            let config = ServiceConfig {
                transport_id: vec![seed],
                ..config()
            };
            Node {
                name: PeerHandle(u64::from(seed)),
                service: Service::open(store, identity, config, [seed; 32]).unwrap(),
                storage,
            }
        };
        let mut o = node(1, owner);
        let mut m = node(2, last);
        for n in [&mut o, &mut m] {
            n.command(
                Command::JoinPrivate {
                    space,
                    ops: ops.clone(),
                },
                at(1),
            );
        }
        let gone = people.iter().find(|p| p.author() != last_author).unwrap();
        let outputs = o.run(
            vec![Input::Command {
                id: RequestId(1),
                command: Command::RemoveMember {
                    space,
                    member: gone.author(),
                },
            }],
            at(2),
        );
        let msgs = published(&outputs, o.name, space);
        assert!(msgs.len() > 2, "a removal, shares, each on two topics");
        (o, m, space, msgs)
    }

    /// A member whose wrap of the current epoch has not arrived (its share was lost) greets
    /// under the epoch before, which the others hold: it syncs, and the share comes with it.
    /// A pair with no hello possible (no transport id for the peer) is retried later, not in a
    /// loop.
    #[test]
    fn a_member_without_the_current_key_greets_under_the_one_before_and_catches_up() {
        let (mut o, mut m, space, msgs) = removal_in_a_big_space();
        // Only the removal reaches M (on the previous topic): its shares are lost.
        let removal = super::private_gossip::followed(&m, space, &msgs[..2]);
        assert_eq!(removal.len(), 1);
        m.step(Input::Gossip(removal), at(3));
        let view = &m.service.private[&space];
        assert!(
            view.current().is_none(),
            "M knows the new epoch, not its key"
        );
        let newest = view.topic_keys()[0].1;

        // Without O's transport id no hello can be made: a failed round, retried later.
        let outputs = m.run(
            vec![
                Input::PeerConnected { peer: o.name },
                Input::PeerSubscribed {
                    peer: o.name,
                    space,
                },
            ],
            at(4),
        );
        assert!(requests(&outputs).is_empty());
        assert!(
            m.service.next_wakeup().is_some_and(|t| t > 4),
            "no busy loop"
        );
        m.step(Input::PeerDisconnected { peer: o.name }, at(5));

        let outputs = link_private(&mut m, &mut o, space, at(10));
        assert!(bans(&outputs).is_empty(), "{:?}", bans(&outputs));
        let hello_key = requests(&outputs)
            .into_iter()
            .find_map(|(to, _, r)| match r {
                SyncRequest::Hello { key, .. } if to == o.name => Some(key),
                _ => None,
            });
        assert_eq!(
            hello_key,
            Some(newest.0),
            "M greets under the newest epoch it holds"
        );
        let current = |n: &Node| n.service.private[&space].current().map(|(k, _)| k);
        assert!(current(&m).is_some(), "the share came by sync");
        assert_eq!(current(&m), current(&o));
        assert_eq!(m.service.digest(&space), o.service.digest(&space));
    }

    /// One author's membership operations on gossip are bounded per space (PROTOCOL 14.12):
    /// a burst, then a steady rate; what is over is ignored and sync brings it; duplicates are
    /// not charged.
    #[test]
    fn an_authors_membership_operations_are_rate_limited_on_gossip() {
        let (mut o, space) = Node::owning(1, "Ops");
        let mut m = admit(&mut o, space, 2, Role::Member, 10);
        m.service.config.op_rate = AuthorRate {
            burst: 5,
            per_second: 1,
        };
        let invites: Vec<GossipIn> = (0..12)
            .flat_map(|i| invite_op(&mut o, space, 100 + i))
            .collect();
        assert_eq!(invites.len(), 12);
        let count =
            |outputs: &[Output], v: Verdict| verdicts(outputs).iter().filter(|x| **x == v).count();
        let outputs = m.step(Input::Gossip(invites.clone()), at(200));
        assert_eq!(
            (
                count(&outputs, Verdict::Accept),
                count(&outputs, Verdict::Ignore)
            ),
            (5, 7)
        );
        assert_eq!(
            count(&outputs, Verdict::Reject),
            0,
            "the owner's node is not penalised"
        );
        let limited = |n: &Node| {
            n.service
                .status()
                .counters
                .rejected
                .get("op_rate_limited")
                .copied()
        };
        assert_eq!(limited(&m), Some(7));
        // Three seconds later: three more tokens; a duplicate of an accepted one costs none.
        let mut again = vec![invites[0].clone()];
        again.extend(invites[5..].iter().cloned());
        let outputs = m.step(Input::Gossip(again), at(3_200));
        assert_eq!(
            (
                count(&outputs, Verdict::Accept),
                count(&outputs, Verdict::Ignore)
            ),
            (3, 5)
        );
        assert_eq!(limited(&m), Some(11));
        // Sync is not bounded per author: it brings the rest.
        link_private(&mut o, &mut m, space, at(4_000));
        assert_eq!(
            m.service.private[&space].log().len(),
            o.service.private[&space].log().len()
        );
    }

    /// What a former member could still open of a space, from `holder`'s operations.
    fn opens_current(holder: &Node, space: SpaceId, seed: u8) -> bool {
        use agora_protocol::keys::DeviceKey;
        use agora_protocol::membership::PrivateSpace;
        let ops: Vec<_> = holder.service.private[&space]
            .log()
            .ops()
            .cloned()
            .collect();
        let identity = Identity::from_seed([seed; 32]);
        let device = DeviceKey::for_identity(&identity);
        let view = PrivateSpace::from_ops(space, ops, &identity, &device).unwrap();
        view.current().is_some()
    }

    /// A member who leaves takes no key with it: the owner's node rotates as soon as it hears
    /// of the leave; when the owner is away, the next admin does after its turn comes (a
    /// minute), not before.
    #[test]
    fn a_leave_rotates_the_key_by_the_admins_in_turn() {
        for owner_hears in [true, false] {
            let (mut o, space) = Node::owning(1, "Ops");
            let mut d = admit(&mut o, space, 2, Role::Admin, 10);
            let mut l = admit(&mut o, space, 3, Role::Member, 20);
            // D learns of L's admission by sync with O.
            link_private(&mut o, &mut d, space, at(30));
            let before = o.service.private[&space].membership().current;
            let outputs = l.step(
                Input::Command {
                    id: RequestId(1),
                    command: Command::LeaveSpace { space },
                },
                at(40),
            );
            let leave = published(&outputs, l.name, space);
            assert!(!leave.is_empty(), "the leave is published");
            let invite = invite_op(&mut o, space, 45);
            let (upkeeper, turn) = if owner_hears {
                (&mut o, 0)
            } else {
                (&mut d, super::super::private::UPKEEP_STEP_MS)
            };
            let mut outputs = upkeeper.step(Input::Gossip(leave), at(50));
            assert_eq!(verdicts(&outputs)[0], Verdict::Accept);
            if turn > 0 {
                // The owner's turn first: the second admin waits a step.
                assert!(upkeeper.service.private[&space].membership().needs_rotation);
                assert_eq!(upkeeper.service.upkeep_next_wakeup(), Some(50 + turn));
                // An operation arriving meanwhile does not put the turn off (else a removed
                // member could keep the key from rotating by sending operations).
                let took = upkeeper.step(Input::Gossip(invite.clone()), at(50 + turn - 10));
                assert_eq!(verdicts(&took), vec![Verdict::Accept]);
                assert_eq!(upkeeper.service.upkeep_next_wakeup(), Some(50 + turn));
                upkeeper.tick(at(50 + turn - 1));
                assert!(upkeeper.service.private[&space].membership().needs_rotation);
                outputs = upkeeper.tick(at(50 + turn));
            }
            // (The owner rotates in the same group as it takes the leave in.)
            let view = &upkeeper.service.private[&space];
            assert!(!view.membership().needs_rotation);
            assert_ne!(view.membership().current, before, "a new epoch");
            assert!(!published(&outputs, upkeeper.name, space).is_empty());
            assert!(
                !opens_current(upkeeper, space, 3),
                "the leaver has no wrap of it"
            );
            assert!(opens_current(upkeeper, space, 2) && opens_current(upkeeper, space, 1));
        }
    }

    /// Every stored contribution of a node in a space (what it would send by sync).
    fn contributions_of_node(node: &mut Node, space: SpaceId) -> Vec<Vec<u8>> {
        let docs = node.service.heads(&space);
        let mut out = Vec::new();
        for doc in docs.keys() {
            out.extend(
                node.service
                    .replica_mut()
                    .stored_after(&space, doc, &[], usize::MAX)
                    .unwrap(),
            );
        }
        out
    }
}

/// One author's gossip in a space is bounded by a token bucket: a burst, then a steady rate.
/// What is over it is neither stored nor relayed; the author's own node is penalised for it, a
/// relay is not. Sync still brings it later, at the pace the receiver chooses.
#[test]
fn an_authors_gossip_is_rate_limited_per_space() {
    let rate = AuthorRate {
        burst: 50,
        per_second: 10,
    };
    let (mut a, space) = seeded(config(), 80, 0);
    let mut b = joined(
        space,
        ServiceConfig {
            author_rate: rate,
            ..config()
        },
    );
    let all = contributions(&mut a, space);
    assert_eq!(all.len(), 80);
    // The author's own node publishes; a relay forwards what it published.
    let own = a.name;
    let relay = PeerHandle(50);
    let gossip = |from: PeerHandle, items: &[Vec<u8>], first: u64| {
        Input::Gossip(
            items
                .iter()
                .enumerate()
                .map(|(i, bytes)| GossipIn {
                    token: first + i as u64,
                    from,
                    first_hop: from == own,
                    topic: Some(space),
                    bytes: bytes.clone(),
                })
                .collect(),
        )
    };
    // From the author's own node: the burst is taken in, the rest refused with a penalty.
    let out = b.step(gossip(own, &all[..60], 0), at(1_000));
    let v = verdicts(&out);
    assert_eq!(v.iter().filter(|v| **v == Verdict::Accept).count(), 50);
    assert_eq!(v.iter().filter(|v| **v == Verdict::Reject).count(), 10);
    assert_eq!(
        b.service.status().counters.rejected.get("rate_limited"),
        Some(&10)
    );
    // From a relay, at the same moment: still over, ignored without blame.
    let out = b.step(gossip(relay, &all[60..65], 100), at(1_000));
    assert_eq!(verdicts(&out), vec![Verdict::Ignore; 5]);
    // Two seconds on, twenty more tokens.
    let out = b.step(gossip(relay, &all[50..80], 200), at(3_000));
    let v = verdicts(&out);
    assert_eq!(
        v.iter().filter(|v| **v == Verdict::Accept).count(),
        20,
        "{v:?}"
    );
    // Nothing over the bound was stored; sync brings the rest.
    assert_eq!(b.service.replica().contributions(), 70);
    let outputs = link(&mut a, &mut b, space, at(4_000));
    assert!(bans(&outputs).is_empty());
    assert_eq!(b.service.replica().contributions(), 80);
}

/// An insider who holds a space's root secret makes a second space with the same secret and
/// invites a member of the first: the member's node refuses to hold it (the two would be
/// confused, since key ids, topics and the locator name a space).
#[test]
fn a_space_that_reuses_another_spaces_secret_is_refused() {
    use agora_protocol::keys::DeviceKey;
    use agora_protocol::membership::{build, PrivateSpace, Role};
    let (mut a, space) = Node::owning(1, "Real");
    // The victim (seed 5) joins the real space.
    let mut v = private_content::admit(&mut a, space, 5, Role::Member, 1);
    let v_keys = NodeKeys::new(Identity::from_seed([5; 32]));
    // The insider (seed 9) replays A's randomness to get the same root secret under its own
    // space id (A's service drew its actor nonce, then the creation's salt and secret).
    let insider = Identity::from_seed([9; 32]);
    let device = DeviceKey::for_identity(&insider);
    let mut rng = ServiceRng::from_seed([1; 32]);
    let _actor_nonce: [u8; 16] = rng.random();
    let fake = build::create(&insider, &device, "Fake", &mut rng).expect("create");
    assert_ne!(fake.space, space);
    let view =
        PrivateSpace::from_ops(fake.space, vec![fake.op.clone()], &insider, &device).expect("view");
    assert_eq!(
        view.locator(),
        a.service.private[&space].locator(),
        "the same secret"
    );
    let (invite, secret) = view
        .invite(&insider, Role::Member, 2_000_000_000, 1, &mut rng)
        .expect("invite");
    let mut log = vec![fake.op.clone(), invite.clone()];
    let view = PrivateSpace::from_ops(fake.space, log.clone(), &insider, &device).expect("view");
    let redeem = build::redeem(
        &fake.space,
        invite.id(),
        &Identity::from_seed(secret),
        &v_keys.identity,
        &v_keys.device,
    );
    log.push(view.admit(&insider, &redeem, 1, &mut rng).expect("admit"));
    let outputs = v.step(
        Input::Command {
            id: RequestId(7),
            command: Command::JoinPrivate {
                space: fake.space,
                ops: log.iter().map(|o| o.bytes().to_vec()).collect(),
            },
        },
        at(4),
    );
    assert!(
        matches!(&replies(&outputs)[0], Err(ServiceError::Membership(m)) if m.contains("reuses")),
        "{outputs:?}"
    );
    assert!(!v.service.private.contains_key(&fake.space));
}
