//! The engine thread: the one owner of the service and the store.
//!
//! It feeds the [`Service`] its inputs in groups (whatever is queued, up to a bound, with
//! consecutive gossip messages merged into one batch), applies the service's writes after each
//! input, flushes **once per group**, and only then carries out the outputs: network actions go
//! to the network task, replies to their callers, events to API subscribers, and sync batches
//! back into its own queue (so that the request that follows them leaves before they are
//! ingested). It wakes the service when [`Service::next_wakeup`] says so.
//!
//! **Architecture Invariant:** no reply, relay or publication leaves before the writes it vouches
//! for were flushed; the service corrects what would after a failed flush.

use crate::service::{
    Command, Input, NetAction, NodeEvent, Now, Output, Replica, Reply, RequestId, Service,
    ServiceError,
};
use crate::store::Storage;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Most gossip messages ingested in one batch.
pub const MAX_BATCH: usize = 4096;
/// Most inputs (commands, peer events, sync messages) handled in one group, before one flush.
pub const MAX_GROUP: usize = 256;
/// How long (ms) writes that only relays wait for (gossip ingested, no caller waiting) may wait
/// for the next flush: a local write that comes meanwhile shares it (group commit).
pub const FLUSH_DELAY: u64 = 2;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The engine's clock: monotonic milliseconds since it started, and the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// The time now.
    pub fn now(&self) -> Now {
        Now {
            mono: self.start.elapsed().as_millis() as u64,
            wall_ms: now_ms(),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// A unit of work for the engine thread.
pub enum EngineInput {
    /// A command, with where its reply goes.
    Request {
        /// The command.
        command: Command,
        /// Where the reply goes.
        reply: oneshot::Sender<Result<Reply, ServiceError>>,
    },
    /// Something from the network.
    Net(Input),
    /// Checkpoint and stop after the work already queued.
    Stop,
}

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<EngineInput>,
}

impl EngineHandle {
    /// Runs a command and returns its reply (after its writes are durable).
    pub async fn request(&self, command: Command) -> Result<Reply, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(EngineInput::Request { command, reply })
            .await
            .map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)?
    }

    /// Asks the engine thread to checkpoint and stop after the work already queued.
    pub async fn stop(&self) {
        let _ = self.tx.send(EngineInput::Stop).await;
    }

    /// Hands an input from the network to the engine without waiting. Returns it back if the
    /// engine is saturated (or gone), so the caller can decide (ignore a gossip message, refuse
    /// a sync request, or retry a peer event later).
    pub fn try_input(&self, input: Input) -> Result<(), Input> {
        self.tx
            .try_send(EngineInput::Net(input))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(EngineInput::Net(i))
                | mpsc::error::TrySendError::Closed(EngineInput::Net(i)) => i,
                _ => unreachable!("we sent a Net input"),
            })
    }

    /// Waits until the engine can take one more input (for inputs that must not be lost).
    pub async fn reserve(&self) -> Option<mpsc::Permit<'_, EngineInput>> {
        self.tx.reserve().await.ok()
    }
}

/// A group of inputs with the reply channels of its commands.
struct Group {
    inputs: Vec<Input>,
    gossip: usize,
    stop: bool,
}

impl Group {
    fn add(
        &mut self,
        input: EngineInput,
        replies: &mut HashMap<RequestId, oneshot::Sender<Result<Reply, ServiceError>>>,
        next_id: &mut u64,
    ) {
        match input {
            EngineInput::Request { command, reply } => {
                *next_id += 1;
                let id = RequestId(*next_id);
                replies.insert(id, reply);
                self.inputs.push(Input::Command { id, command });
            }
            EngineInput::Net(Input::Gossip(batch)) => {
                self.gossip += batch.len();
                match self.inputs.last_mut() {
                    Some(Input::Gossip(current)) if current.len() + batch.len() <= MAX_BATCH => {
                        current.extend(batch)
                    }
                    _ => self.inputs.push(Input::Gossip(batch)),
                }
            }
            EngineInput::Net(input) => self.inputs.push(input),
            EngineInput::Stop => self.stop = true,
        }
    }

    fn full(&self) -> bool {
        self.stop || self.inputs.len() >= MAX_GROUP || self.gossip >= MAX_BATCH
    }
}

/// Starts the engine thread. It stops (after a checkpoint) on [`EngineHandle::stop`] or when
/// every handle is dropped.
pub fn spawn<R, S>(
    service: Service<R>,
    storage: S,
    net: mpsc::Sender<NetAction>,
    events: broadcast::Sender<NodeEvent>,
    capacity: usize,
) -> (EngineHandle, std::thread::JoinHandle<()>)
where
    R: Replica + Send + 'static,
    R::Item: Send,
    S: Storage,
{
    let (tx, rx) = mpsc::channel::<EngineInput>(capacity);
    let thread = std::thread::Builder::new()
        .name("agora-engine".into())
        .spawn(move || Engine::new(service, storage, net, events).run(rx))
        .expect("spawning a thread only fails when the OS is out of resources");
    (EngineHandle { tx }, thread)
}

/// Runs one group of inputs through a service, as the engine thread does: each input handled
/// and its writes applied, then a tick if one is due, **one** flush, then the commit. Returns
/// the outputs to carry out. (The simulation, benchmarks and tests drive services with it too.)
pub fn run_group<R: Replica, S: Storage>(
    service: &mut Service<R>,
    storage: &S,
    inputs: Vec<Input>,
    now: Now,
) -> Vec<Output> {
    let mut wrote = false;
    let mut failed = None;
    let mut apply = |service: &mut Service<R>| {
        let writes = service.take_writes();
        if writes.is_empty() || failed.is_some() {
            return;
        }
        wrote = true;
        if let Err(e) = storage.apply(writes) {
            failed = Some(e);
        }
    };
    for input in inputs {
        service.handle(input, now);
        apply(service);
    }
    if service.next_wakeup().is_some_and(|at| at <= now.mono) {
        service.handle(Input::Tick, now);
        apply(service);
    }
    let flushed = match failed {
        Some(e) => Err(e),
        None if wrote => storage.flush(),
        None => Ok(()),
    };
    service.commit(flushed, now)
}

struct Engine<R: Replica, S> {
    service: Service<R>,
    storage: S,
    net: mpsc::Sender<NetAction>,
    events: broadcast::Sender<NodeEvent>,
    clock: Clock,
    replies: HashMap<RequestId, oneshot::Sender<Result<Reply, ServiceError>>>,
    next_id: u64,
    /// Inputs the service fed back to itself (sync batches), handled before new ones.
    local: VecDeque<Input>,
    /// When the first input whose outputs wait for the next flush was handled.
    unflushed: Option<u64>,
    /// Whether anything was written since the last flush.
    wrote: bool,
    /// Whether someone waits for the next flush (a command's caller, a sync requester).
    urgent: bool,
    /// A write that failed since the last flush.
    failed: Option<crate::store::StoreError>,
}

impl<R: Replica, S: Storage> Engine<R, S> {
    fn new(
        service: Service<R>,
        storage: S,
        net: mpsc::Sender<NetAction>,
        events: broadcast::Sender<NodeEvent>,
    ) -> Self {
        Engine {
            service,
            storage,
            net,
            events,
            clock: Clock::new(),
            replies: HashMap::new(),
            next_id: 0,
            local: VecDeque::new(),
            unflushed: None,
            wrote: false,
            urgent: false,
            failed: None,
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<EngineInput>) {
        // A small runtime of its own, only to wait on the channel with a deadline.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds unless the OS is out of resources");
        // The outputs the service queued when it was created (subscriptions).
        self.settle();
        loop {
            if let Some(input) = self.local.pop_front() {
                self.absorb(vec![input]);
                self.settle();
                continue;
            }
            let now = self.clock.now().mono;
            let deadline = [self.service.next_wakeup(), self.flush_due()]
                .into_iter()
                .flatten()
                .min();
            let first = match deadline {
                Some(at) if at <= now => None,
                Some(at) => {
                    let wait = Duration::from_millis(at - now);
                    match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                        Ok(Some(input)) => Some(input),
                        Ok(None) => break,
                        Err(_) => None,
                    }
                }
                None => match rt.block_on(rx.recv()) {
                    Some(input) => Some(input),
                    None => break,
                },
            };
            let mut group = Group {
                inputs: Vec::new(),
                gossip: 0,
                stop: false,
            };
            if let Some(input) = first {
                group.add(input, &mut self.replies, &mut self.next_id);
            }
            while !group.full() {
                match rx.try_recv() {
                    Ok(input) => group.add(input, &mut self.replies, &mut self.next_id),
                    Err(_) => break,
                }
            }
            let stop = group.stop;
            self.absorb(group.inputs);
            // Flush now unless only relays wait for it and the flush can still wait for what
            // comes next (the next local write, usually).
            if stop
                || self
                    .flush_due()
                    .is_none_or(|at| at <= self.clock.now().mono)
            {
                self.settle();
            }
            if stop {
                break;
            }
        }
        self.settle();
        // Snapshot what has a tail, so the next start is fast.
        let (reply, _) = oneshot::channel();
        self.next_id += 1;
        self.replies.insert(RequestId(self.next_id), reply);
        self.absorb(vec![Input::Command {
            id: RequestId(self.next_id),
            command: Command::Checkpoint,
        }]);
        self.settle();
    }

    /// When the outputs waiting since the last flush must be released (after a flush if
    /// anything was written): at once if nothing was written or a caller waits, else
    /// `FLUSH_DELAY` after the first unflushed input (`None`: nothing waits).
    fn flush_due(&self) -> Option<u64> {
        let since = self.unflushed?;
        Some(if self.urgent || !self.wrote {
            since
        } else {
            since + FLUSH_DELAY
        })
    }

    /// Handles inputs (and a tick if one is due) and applies their writes, without flushing.
    fn absorb(&mut self, inputs: Vec<Input>) {
        let now = self.clock.now();
        let mut inputs = inputs;
        if self.service.next_wakeup().is_some_and(|at| at <= now.mono) {
            inputs.push(Input::Tick);
        }
        for input in inputs {
            // A caller waits for a command's writes, a requester for a sync answer.
            self.urgent |= matches!(
                input,
                Input::Command { .. } | Input::SyncRequest { .. } | Input::Ingest(_)
            );
            self.service.handle(input, now);
            let writes = self.service.take_writes();
            if !writes.is_empty() && self.failed.is_none() {
                self.wrote = true;
                if let Err(e) = self.storage.apply(writes) {
                    self.failed = Some(e);
                }
            }
            if self.unflushed.is_none() {
                self.unflushed = Some(now.mono);
            }
        }
    }

    /// Flushes what was written since the last time (once), commits, and carries out the
    /// outputs.
    fn settle(&mut self) {
        let now = self.clock.now();
        let flushed = match self.failed.take() {
            Some(e) => Err(e),
            None if self.wrote => self.storage.flush(),
            None => Ok(()),
        };
        self.wrote = false;
        self.urgent = false;
        self.unflushed = None;
        for output in self.service.commit(flushed, now) {
            match output {
                // The network task never waits on the engine, so waiting here cannot deadlock;
                // an error means it has stopped (the data is stored either way).
                Output::Net(action) => {
                    let _ = self.net.blocking_send(action);
                }
                Output::Reply { id, result } => {
                    if let Some(reply) = self.replies.remove(&id) {
                        let _ = reply.send(result);
                    }
                }
                Output::Event(event) => {
                    let _ = self.events.send(event);
                }
                Output::Ingest(batch) => self.local.push_back(Input::Ingest(batch)),
            }
        }
    }
}
