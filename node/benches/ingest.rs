//! Ingest benchmark: how close does the node's ingest path (the service's gossip ingest, run as
//! the engine thread runs it: one group per batch, one flush) come to the physical ceiling of
//! the three costs it cannot avoid (signature check, Automerge apply, durable write)?
//!
//! Run with `cargo bench -p agora-node --bench ingest`. Environment:
//! - `AGORA_BENCH_N`: number of contributions (default 20,000);
//! - `AGORA_BENCH_NAIVE`: how many of them the naive path handles (default 2,000);
//! - `AGORA_BENCH_ONLY=engine`: run only the engine path (to profile it with `perf record`).
//!
//! What is generated (`agora_testkit::history::delivery`), measured and printed is described in
//! `docs/BENCHMARKS.md`.

use agora_node::engine::{run_group, Clock, MAX_BATCH};
use agora_node::service::{Input, NetAction, Output, Verdict};
use agora_node::store::{SledStorage, Store};
use agora_protocol::automerge::{AutoCommit, Change};
use agora_protocol::contribution::{signing_message, verify_batch};
use agora_protocol::{Contribution, DocId, SpaceId};
use agora_testkit::history::{self, WINDOW};
use agora_testkit::Rng;
use ed25519_dalek::{Signature, VerifyingKey};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Each measurement runs this many times; the median is reported.
const REPEATS: usize = 3;
/// The node's default sled page cache (`Config::cache_bytes`).
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// CPU time of the whole process so far (every thread, user + system), from `/proc/self/stat`;
/// `None` where that file does not exist. Resolution: one clock tick (10 ms).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Wall-clock and CPU time of a measured section.
#[derive(Clone, Copy, Default)]
struct Sample {
    wall: Duration,
    cpu: Option<Duration>,
}

struct Stopwatch {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            cpu: process_cpu(),
            wall: Instant::now(),
        }
    }

    fn stop(self) -> Sample {
        let wall = self.wall.elapsed();
        let cpu = process_cpu()
            .zip(self.cpu)
            .map(|(now, then)| now.saturating_sub(then));
        Sample { wall, cpu }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .replace(['_', ','], "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// One contribution in delivery order, with everything the ceiling measurements need prepared.
struct Item {
    doc: usize,
    bytes: Vec<u8>,
    change: Change,
    message: Vec<u8>,
    signature: Signature,
    key: VerifyingKey,
}

struct Workload {
    space: SpaceId,
    docs: Vec<DocId>,
    items: Vec<Item>,
    mix: String,
}

fn generate(n: usize, rng: &mut Rng) -> Workload {
    let d = history::delivery(rng, n);
    let items = d
        .items
        .into_iter()
        .map(|(doc, bytes)| {
            let c = Contribution::decode(&bytes).expect("we encoded it");
            let change = Change::from_bytes(c.change.clone()).expect("a valid change");
            let message = signing_message(&c.space, &c.doc, c.kind, &change.hash());
            Item {
                doc,
                signature: Signature::from_bytes(&c.signature),
                key: VerifyingKey::from_bytes(&c.author.0).expect("a valid key"),
                bytes,
                change,
                message,
            }
        })
        .collect();
    Workload {
        space: d.space,
        docs: d.docs,
        items,
        mix: d.mix,
    }
}

/// (a) ed25519 batch verification of every signature, in batches of the engine's size.
fn measure_verify(w: &Workload) -> Sample {
    type Batch<'a> = (Vec<&'a [u8]>, Vec<Signature>, Vec<VerifyingKey>);
    let batches: Vec<Batch> = w
        .items
        .chunks(MAX_BATCH)
        .map(|chunk| {
            (
                chunk.iter().map(|i| i.message.as_slice()).collect(),
                chunk.iter().map(|i| i.signature).collect(),
                chunk.iter().map(|i| i.key).collect(),
            )
        })
        .collect();
    let t = Stopwatch::start();
    for (messages, signatures, keys) in &batches {
        ed25519_dalek::verify_batch(messages, signatures, keys).expect("all signatures valid");
    }
    t.stop()
}

/// (b) Automerge apply: one `apply_changes` call per document per batch, into fresh documents.
fn measure_apply(w: &Workload) -> Sample {
    let mut batches: Vec<Vec<(usize, Vec<Change>)>> = Vec::new();
    for chunk in w.items.chunks(MAX_BATCH) {
        let mut by_doc: HashMap<usize, Vec<Change>> = HashMap::new();
        let mut order = Vec::new();
        for i in chunk {
            by_doc
                .entry(i.doc)
                .or_insert_with(|| {
                    order.push(i.doc);
                    Vec::new()
                })
                .push(i.change.clone());
        }
        batches.push(
            order
                .into_iter()
                .map(|d| (d, by_doc.remove(&d).expect("inserted")))
                .collect(),
        );
    }
    let mut docs: Vec<AutoCommit> = (0..w.docs.len())
        .map(|d| AutoCommit::new().with_actor(vec![d as u8; 16].into()))
        .collect();
    let t = Stopwatch::start();
    for batch in batches {
        for (d, changes) in batch {
            docs[d].apply_changes(changes).expect("valid changes apply");
        }
    }
    let elapsed = t.stop();
    for d in &mut docs {
        assert!(d.get_missing_deps(&[]).is_empty(), "every change applied");
    }
    elapsed
}

/// Breakdown: the protocol's `Contribution::decode` of every input (the engine's first step).
fn measure_decode(w: &Workload) -> Sample {
    let t = Stopwatch::start();
    let mut ok = 0;
    for i in &w.items {
        ok += usize::from(Contribution::decode(&i.bytes).is_ok());
    }
    let elapsed = t.stop();
    assert_eq!(ok, w.items.len());
    elapsed
}

/// Breakdown: the protocol's `verify_batch` (parse the change, check the actor and the document
/// rules, decompress the key, batch-verify) in batches of `MAX_BATCH`, as the engine calls it.
fn measure_protocol_verify(w: &Workload) -> Sample {
    let batches: Vec<Vec<Contribution>> = w
        .items
        .chunks(MAX_BATCH)
        .map(|c| {
            c.iter()
                .map(|i| Contribution::decode(&i.bytes).expect("valid"))
                .collect()
        })
        .collect();
    let t = Stopwatch::start();
    let mut ok = 0;
    for batch in batches {
        ok += verify_batch(batch).iter().filter(|r| r.is_ok()).count();
    }
    let elapsed = t.stop();
    assert_eq!(ok, w.items.len());
    elapsed
}

fn contribution_key(space: &SpaceId, doc: &DocId, seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..16].copy_from_slice(&space.0);
    k[16..32].copy_from_slice(&doc.0);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn open_sled(dir: &std::path::Path) -> (sled::Db, sled::Tree) {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_BYTES)
        .flush_every_ms(Some(1000))
        .open()
        .expect("open sled");
    let tree = db.open_tree("contributions").expect("open tree");
    (db, tree)
}

/// Storage keys as the store makes them: space, doc, per-document sequence in arrival order.
fn keys(w: &Workload, items: &[Item]) -> Vec<[u8; 40]> {
    let mut seq = vec![0u64; w.docs.len()];
    items
        .iter()
        .map(|i| {
            seq[i.doc] += 1;
            contribution_key(&w.space, &w.docs[i.doc], seq[i.doc])
        })
        .collect()
}

/// (c) sled: insert every encoded contribution, one flush at the end, fresh database.
fn measure_sled(w: &Workload) -> Sample {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tree) = open_sled(dir.path());
    let keys = keys(w, &w.items);
    let t = Stopwatch::start();
    for (k, i) in keys.iter().zip(&w.items) {
        tree.insert(k, i.bytes.as_slice()).expect("insert");
    }
    db.flush().expect("flush");
    let elapsed = t.stop();
    assert_eq!(tree.len(), w.items.len());
    elapsed
}

#[derive(Default)]
struct EngineRun {
    elapsed: Sample,
    first_pending: usize,
}

/// The engine path: a fresh store and service, fed gossip in batches of `MAX_BATCH`, each run as
/// one group (handle, writes, one flush, commit) exactly as the engine thread does. Every
/// contribution must end up accepted and stored.
fn measure_engine(w: &Workload) -> EngineRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = SledStorage::open(dir.path(), CACHE_BYTES).expect("open store");
    let store = Store::new(storage).expect("open store");
    let clock = Clock::new();
    let (mut service, storage) = agora_testkit::store::joined_service(store, w.space, &clock);
    let batches: Vec<Input> = w
        .items
        .chunks(MAX_BATCH)
        .map(|c| agora_testkit::store::gossip(w.space, c.iter().map(|i| i.bytes.as_slice())))
        .collect();
    let mut run = EngineRun::default();
    let mut outputs: Vec<Output> = Vec::new();
    let t = Stopwatch::start();
    for batch in batches {
        outputs.extend(run_group(&mut service, &storage, vec![batch], clock.now()));
    }
    run.elapsed = t.stop();
    for o in &outputs {
        match o {
            Output::Net(NetAction::Verdict { verdict, .. }) => match verdict {
                Verdict::Accept => {}
                // Arrived a batch before its dependencies (no duplicates or rejections, checked
                // below): accepted later, when they came.
                Verdict::Ignore => run.first_pending += 1,
                Verdict::Reject => panic!("a contribution was rejected"),
            },
            Output::Event(_) => {}
            other => panic!("unexpected output {other:?}"),
        }
    }
    let status = service.status();
    let c = status.counters;
    assert_eq!(c.pending, 0, "nothing may stay pending");
    assert_eq!(c.duplicates, 0);
    assert_eq!(c.rejected_total(), 0);
    assert_eq!(status.contributions, w.items.len() as u64);
    run
}

/// The same workload's shape in a private space: its contributions sealed by their authors,
/// all of them admitted members of a space the measured service owns.
struct SealedWorkload {
    members: Vec<agora_protocol::Identity>,
    space: SpaceId,
    items: Vec<Vec<u8>>,
}

/// A fresh store whose service owns the private space with every member admitted (the same
/// space and keys each time: the service's randomness is seeded), with its storage.
fn private_store(
    dir: &std::path::Path,
    members: &[agora_protocol::Identity],
    clock: &Clock,
) -> (
    agora_testkit::store::SledService,
    SledStorage,
    agora_testkit::private::SealingKey,
) {
    let storage = SledStorage::open(dir, CACHE_BYTES).expect("open store");
    let store = Store::new(storage).expect("open store");
    agora_testkit::private::private_service(
        store,
        clock,
        members,
        agora_protocol::membership::Role::Member,
    )
}

fn generate_sealed(n: usize, seed: u64) -> SealedWorkload {
    let mut rng = Rng::new(seed);
    let writers = history::writers(&mut rng, history::DELIVERY_AUTHORS);
    let members: Vec<agora_protocol::Identity> =
        writers.iter().map(|w| w.identity.clone()).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, _, key) = private_store(dir.path(), &members, &Clock::new());
    let d = history::delivery_by(&mut rng, n, key.space, writers);
    let items = agora_testkit::private::seal_delivery(&d, &key, &mut rng)
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    SealedWorkload {
        members,
        space: key.space,
        items,
    }
}

/// The engine path on sealed contributions (decrypt, batch-verify, the membership's write rule,
/// apply, store), as [`measure_engine`] runs the plain ones.
fn measure_engine_sealed(w: &SealedWorkload) -> Sample {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::new();
    let (mut service, storage, key) = private_store(dir.path(), &w.members, &clock);
    assert_eq!(key.space, w.space, "the same space each time");
    let batches: Vec<Input> = w
        .items
        .chunks(MAX_BATCH)
        .map(|c| agora_testkit::store::gossip(w.space, c.iter().map(Vec::as_slice)))
        .collect();
    let mut outputs: Vec<Output> = Vec::new();
    let t = Stopwatch::start();
    for batch in batches {
        outputs.extend(run_group(&mut service, &storage, vec![batch], clock.now()));
    }
    let elapsed = t.stop();
    for o in &outputs {
        if let Output::Net(NetAction::Verdict {
            verdict: Verdict::Reject,
            ..
        }) = o
        {
            panic!("a sealed contribution was rejected");
        }
    }
    let status = service.status();
    assert_eq!(status.counters.rejected_total(), 0, "{:?}", status.counters);
    assert_eq!(status.counters.pending, 0);
    assert_eq!(status.contributions, w.items.len() as u64);
    elapsed
}

/// The naive path on the first `m` contributions: decode, verify, apply and store+flush each
/// one on its own.
fn measure_naive(w: &Workload, m: usize) -> Sample {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, tree) = open_sled(dir.path());
    let items = &w.items[..m];
    let keys = keys(w, items);
    let mut docs: Vec<AutoCommit> = (0..w.docs.len())
        .map(|d| AutoCommit::new().with_actor(vec![d as u8; 16].into()))
        .collect();
    let inputs: Vec<Vec<u8>> = items.iter().map(|i| i.bytes.clone()).collect();
    let t = Stopwatch::start();
    for ((bytes, k), i) in inputs.iter().zip(&keys).zip(items) {
        let c = Contribution::decode(bytes).expect("valid");
        let (_, change) = c.verify().expect("valid").into_parts();
        docs[i.doc].apply_changes([change]).expect("applies");
        tree.insert(k, bytes.as_slice()).expect("insert");
        db.flush().expect("flush");
    }
    t.stop()
}

/// The rates of one measurement over its runs: by wall-clock time and by CPU time.
#[derive(Default)]
struct Rates {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

impl Rates {
    fn push(&mut self, n: usize, s: Sample) {
        self.wall.push(n as f64 / s.wall.as_secs_f64());
        if let Some(cpu) = s.cpu {
            // A section shorter than one clock tick would divide by zero.
            self.cpu
                .push(n as f64 / cpu.as_secs_f64().max(CPU_TICK.as_secs_f64()));
        }
    }

    fn median_wall(&self) -> f64 {
        median(&self.wall)
    }

    fn median_cpu(&self) -> Option<f64> {
        (self.cpu.len() == self.wall.len()).then(|| median(&self.cpu))
    }
}

const CPU_TICK: Duration = Duration::from_millis(10);

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ceiling_of(parts: [f64; 3]) -> f64 {
    1.0 / parts.iter().map(|r| 1.0 / r).sum::<f64>()
}

fn fmt_rate(r: f64) -> String {
    let r = r.round() as u64;
    let s = r.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn main() {
    let n = env_usize("AGORA_BENCH_N", 20_000).max(1);
    let m = env_usize("AGORA_BENCH_NAIVE", 2_000).clamp(1, n);
    let started = Instant::now();
    let mut rng = Rng::new(0x5EED_A60A_2026_0001);
    let w = generate(n, &mut rng);
    let gen_time = started.elapsed();
    let avg_bytes = w.items.iter().map(|i| i.bytes.len()).sum::<usize>() as f64 / n as f64;
    println!("Agora ingest benchmark");
    println!(
        "  {n} contributions in {} documents: {}",
        w.docs.len(),
        w.mix
    );
    println!(
        "  avg {avg_bytes:.0} bytes per contribution; delivery shuffled in windows of {WINDOW}; \
         engine batch {MAX_BATCH}; median of {REPEATS} runs; generated in {:.1} s",
        gen_time.as_secs_f64()
    );

    let sealed = generate_sealed(n, 0x5EED_A60A_2026_0001);
    let sealed_bytes =
        sealed.items.iter().map(Vec::len).sum::<usize>() as f64 / sealed.items.len() as f64;
    println!(
        "  sealed (private space, {} members): avg {sealed_bytes:.0} bytes per contribution",
        sealed.members.len() + 1
    );

    if std::env::var("AGORA_BENCH_ONLY").as_deref() == Ok("engine") {
        // For profiling (`perf record`): the engine path alone.
        for _ in 0..REPEATS {
            let mut r = Rates::default();
            r.push(n, measure_engine(&w).elapsed);
            println!(
                "engine.ingest: {} contrib/s, {} per CPU-second",
                fmt_rate(r.median_wall()),
                r.median_cpu().map_or("-".into(), fmt_rate)
            );
        }
        return;
    }
    let (mut a, mut b, mut c, mut e, mut naive) = (
        Rates::default(),
        Rates::default(),
        Rates::default(),
        Rates::default(),
        Rates::default(),
    );
    let (mut decode, mut verify) = (Rates::default(), Rates::default());
    let mut sealed_rates = Rates::default();
    let mut first_pending = 0;
    // Interleaved, so that a noisy moment hits one run of each rather than all runs of one.
    for _ in 0..REPEATS {
        a.push(n, measure_verify(&w));
        b.push(n, measure_apply(&w));
        c.push(n, measure_sled(&w));
        let run = measure_engine(&w);
        first_pending = run.first_pending;
        e.push(n, run.elapsed);
        sealed_rates.push(n, measure_engine_sealed(&sealed));
        naive.push(m, measure_naive(&w, m));
        decode.push(n, measure_decode(&w));
        verify.push(n, measure_protocol_verify(&w));
    }
    let ceiling = ceiling_of([a.median_wall(), b.median_wall(), c.median_wall()]);
    let cpu_ceiling = a
        .median_cpu()
        .zip(b.median_cpu())
        .zip(c.median_cpu())
        .map(|((a, b), c)| ceiling_of([a, b, c]));
    println!();
    println!(
        "| {:<46} | {:>9} | {:>8} | {:>10} | {:>8} | {:<26} |",
        "measurement", "contrib/s", "/ceiling", "per CPU-s", "/ceiling", "wall-clock runs"
    );
    println!(
        "|{:-<48}|{:->11}|{:->10}|{:->12}|{:->10}|{:-<28}|",
        "", "", "", "", "", ""
    );
    let row = |name: &str, wall: f64, cpu: Option<f64>, runs: &[f64]| {
        let cpu_cols = match (cpu, cpu_ceiling) {
            (Some(r), Some(ceil)) => format!("{:>10} | {:>8.2}", fmt_rate(r), r / ceil),
            _ => format!("{:>10} | {:>8}", "-", "-"),
        };
        let runs: Vec<String> = runs.iter().map(|r| fmt_rate(*r)).collect();
        println!(
            "| {:<46} | {:>9} | {:>8.2} | {cpu_cols} | {:<26} |",
            name,
            fmt_rate(wall),
            wall / ceiling,
            runs.join(" / ")
        );
    };
    let show = |name: &str, r: &Rates| row(name, r.median_wall(), r.median_cpu(), &r.wall);
    show("(a) ed25519 verify_batch, batches of MAX_BATCH", &a);
    show("(b) automerge apply, 1 call per doc per batch", &b);
    show("(c) sled insert, one flush at the end", &c);
    row("ceiling = 1/(1/a + 1/b + 1/c)", ceiling, cpu_ceiling, &[]);
    show("engine.ingest, batches of MAX_BATCH", &e);
    show("engine.ingest sealed (private space)", &sealed_rates);
    show(
        &format!("naive: one at a time, flush each (first {m})"),
        &naive,
    );
    println!(
        "| {:<46} | {:>9} | {:>8} | {:>10} | {:>8} | {:<26} |",
        "breakdown of the engine's other steps:", "", "", "", "", ""
    );
    show("protocol Contribution::decode", &decode);
    show("protocol verify_batch (includes a)", &verify);
    println!();
    println!(
        "sealed / plain engine.ingest = {:.2} by wall clock{} (goal >= 0.8)",
        sealed_rates.median_wall() / e.median_wall(),
        sealed_rates
            .median_cpu()
            .zip(e.median_cpu())
            .map_or(String::new(), |(s, p)| format!(
                ", {:.2} by CPU time",
                s / p
            ))
    );
    println!(
        "engine / ceiling = {:.2} by wall clock (goal >= 0.68, aim 0.8){}; {first_pending} contributions \
         were reported Pending first and accepted with a later batch; total time {:.1} s",
        e.median_wall() / ceiling,
        e.median_cpu()
            .zip(cpu_ceiling)
            .map_or(String::new(), |(r, c)| format!(
                ", {:.2} by CPU time",
                r / c
            )),
        started.elapsed().as_secs_f64()
    );
}
