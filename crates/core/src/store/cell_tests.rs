//! Model tests of the cell protocol: many writers interleaved one store call at a time on a simulated store
//! with only `get`/`set`/`delete`/`increment` (what Spin's backends guarantee), with crashes at every step.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;

use super::*;

/// A store with Spin's trustworthy operations: linearizable per key, `increment` atomic.
#[derive(Default)]
struct Sim {
    values: HashMap<String, Vec<u8>>,
    counters: HashMap<String, i64>,
}

impl Sim {
    fn apply(&mut self, op: Op) -> Reply {
        match op {
            Op::Get(k) => Reply::Value(self.values.get(&k).cloned()),
            Op::Set(k, v) => {
                self.values.insert(k, v);
                Reply::Done
            }
            Op::Delete(k) => {
                self.values.remove(&k);
                Reply::Done
            }
            Op::Increment(k, d) => {
                let c = self.counters.entry(k).or_default();
                *c += d;
                Reply::Counter(*c)
            }
        }
    }

    fn head(&self, key: &str) -> Stored {
        Stored::from_head(self.values.get(key).map(Vec::as_slice)).unwrap()
    }
}

/// An update function that adds 1 to a decimal counter and returns the value it saw.
type PlusOne = Box<dyn FnMut(Option<&[u8]>) -> Result<(Next, u64), ()>>;

/// An update that adds 1 to a decimal counter and records the value it saw.
type AddOne = Update<PlusOne, u64, ()>;

fn plus_one() -> PlusOne {
    Box::new(|cur: Option<&[u8]>| {
        let n: u64 = cur.map_or(0, |b| std::str::from_utf8(b).unwrap().parse().unwrap());
        Ok((Next::Put((n + 1).to_string().into_bytes()), n))
    })
}

fn add_one(key: &str, seed: u64) -> AddOne {
    Update::new(key, seed, plus_one())
}

/// [`add_one`] whose first attempt starts from `head` instead of reading the cell.
fn add_one_after(key: &str, seed: u64, head: Stored) -> AddOne {
    Update::after(key, seed, plus_one(), head)
}

/// Run `m` to completion alone, recording every operation and pause.
fn run_logged<R, E, F>(
    sim: &mut Sim,
    m: &mut Update<F, R, E>,
) -> (Result<Committed<R>, CellError<E>>, Vec<String>)
where
    F: FnMut(Option<&[u8]>) -> Result<(Next, R), E>,
{
    let mut reply = None;
    let mut log = Vec::new();
    loop {
        match m.resume(reply.take()) {
            Step::Op(op) => {
                log.push(
                    match &op {
                        Op::Get(_) => "get",
                        Op::Set(..) => "set",
                        Op::Delete(_) => "delete",
                        Op::Increment(..) => "increment",
                    }
                    .to_owned(),
                );
                reply = Some(sim.apply(op));
            }
            Step::Pause(_) => log.push("pause".to_owned()),
            Step::Done(r) => return (r, log),
        }
    }
}

/// Run `m` to completion alone.
fn run<R, E, F>(sim: &mut Sim, m: &mut Update<F, R, E>) -> Result<Committed<R>, CellError<E>>
where
    F: FnMut(Option<&[u8]>) -> Result<(Next, R), E>,
{
    let mut reply = None;
    loop {
        match m.resume(reply.take()) {
            Step::Op(op) => reply = Some(sim.apply(op)),
            Step::Pause(_) => {}
            Step::Done(r) => return r,
        }
    }
}

fn value(s: &Stored) -> u64 {
    s.data
        .as_deref()
        .map_or(0, |b| std::str::from_utf8(b).unwrap().parse().unwrap())
}

struct Writer {
    m: AddOne,
    reply: Option<Reply>,
    /// The claim counter value this writer got, and its token when it won.
    won: bool,
}

/// xorshift for schedules.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// `writers` concurrent add-ones, interleaved by `seed`; each writer crashes at a random step with
/// probability `crash_per_mille`/1000 per step. Returns (committed by survivors, committed by the dead).
/// With `assume_absent`, every writer's first attempt starts from [`Stored::absent`] (stale for all
/// but the first to claim version 1) instead of reading the cell.
fn race(
    seed: u64,
    writers: usize,
    crash_per_mille: u64,
    assume_absent: bool,
) -> (Sim, u64, u64, Vec<u64>) {
    let mut sim = Sim::default();
    let mut rng = seed | 1;
    let mut live: Vec<Writer> = (0..writers)
        .map(|i| Writer {
            m: if assume_absent {
                add_one_after(
                    "cell",
                    seed.wrapping_mul(31).wrapping_add(i as u64),
                    Stored::absent(),
                )
            } else {
                add_one("cell", seed.wrapping_mul(31).wrapping_add(i as u64))
            },
            reply: None,
            won: false,
        })
        .collect();
    let (mut ok, mut dead_winners) = (0u64, 0u64);
    let mut seen = Vec::new();
    while !live.is_empty() {
        let i = (next(&mut rng) % live.len() as u64) as usize;
        if next(&mut rng) % 1000 < crash_per_mille {
            let w = live.swap_remove(i);
            dead_winners += u64::from(w.won);
            continue;
        }
        let w = &mut live[i];
        match w.m.resume(w.reply.take()) {
            Step::Op(op) => {
                let is_claim =
                    matches!(&op, Op::Increment(k, d) if k.starts_with("cell@v") && *d > 0);
                let r = sim.apply(op);
                if is_claim && let Reply::Counter(c) = r {
                    // A positive increment is a claim; the winner sees its own token back.
                    w.won = c == w.m.core.token_i64();
                }
                w.reply = Some(r);
            }
            Step::Pause(_) => {}
            Step::Done(r) => {
                let c = r.unwrap();
                seen.push(c.by_product);
                ok += 1;
                live.swap_remove(i);
            }
        }
    }
    (sim, ok, dead_winners, seen)
}

#[test]
fn envelope_round_trips() {
    for s in [
        Stored {
            version: 1,
            token: 42,
            data: Some(b"{\"a\":1}\n".to_vec()),
        },
        Stored {
            version: 9,
            token: (1 << TOKEN_BITS) - 1,
            data: None,
        },
        Stored {
            version: 3,
            token: 1,
            data: Some(Vec::new()),
        },
    ] {
        assert_eq!(Stored::decode(&s.encode()).unwrap(), s);
    }
    // A plain value from before cells is version 0.
    let legacy = Stored::decode(b"{\"x\":2}").unwrap();
    assert_eq!(
        (legacy.version, legacy.data.as_deref()),
        (0, Some(&b"{\"x\":2}"[..]))
    );
    for bad in [
        &b"@kv1 1\n"[..],
        b"@kv1 x 1 +\n",
        b"@kv1 1 1 ?\n",
        b"@kv1 1 1 + extra\n",
        b"@kv1 1 1 +",
    ] {
        assert!(
            Stored::decode(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn a_lone_update_writes_version_one_then_two() {
    let mut sim = Sim::default();
    let c = run(&mut sim, &mut add_one("k", 1)).unwrap();
    assert_eq!((c.version, c.by_product), (1, 0));
    let c = run(&mut sim, &mut add_one("k", 2)).unwrap();
    assert_eq!((c.version, c.by_product), (2, 1));
    let head = sim.head("k");
    assert_eq!((head.version, value(&head)), (2, 2));
    // One claim counter per version, holding its winner's token (no loser left anything behind); a key written
    // once keeps only its head and its counter.
    assert_eq!(sim.counters.len(), 2);
    assert_eq!(sim.counters["k@v2"], i64::try_from(head.token).unwrap());
    let keys: Vec<&String> = sim
        .values
        .keys()
        .filter(|k| k.starts_with("k@v1"))
        .collect();
    assert!(keys.is_empty(), "{keys:?}");
}

#[test]
fn refusals_and_keeps_write_nothing() {
    let mut sim = Sim::default();
    run(&mut sim, &mut add_one("k", 1)).unwrap();
    let mut refuse = Update::new("k", 3, |_: Option<&[u8]>| -> Result<(Next, ()), &str> {
        Err("no")
    });
    assert_eq!(run(&mut sim, &mut refuse), Err(CellError::Refused("no")));
    let mut keep = Update::new("k", 4, |cur: Option<&[u8]>| -> Result<(Next, usize), ()> {
        Ok((Next::Keep, cur.map_or(0, <[u8]>::len)))
    });
    let c = run(&mut sim, &mut keep).unwrap();
    assert_eq!(
        (c.version, c.by_product, c.data.as_deref()),
        (1, 1, Some(&b"1"[..]))
    );
    assert_eq!(sim.counters.len(), 1, "no claim for a refusal or a keep");
}

#[test]
fn removal_is_a_tombstone_and_the_key_can_be_taken_again() {
    let mut sim = Sim::default();
    run(&mut sim, &mut add_one("k", 1)).unwrap();
    let mut remove = Update::new("k", 5, |_: Option<&[u8]>| -> Result<(Next, ()), ()> {
        Ok((Next::Remove, ()))
    });
    assert_eq!(run(&mut sim, &mut remove).unwrap().version, 2);
    assert_eq!(sim.head("k").data, None);
    // Removing what is absent writes nothing.
    let mut again = Update::new("k", 6, |_: Option<&[u8]>| -> Result<(Next, ()), ()> {
        Ok((Next::Remove, ()))
    });
    assert_eq!(run(&mut sim, &mut again).unwrap().version, 2);
    // An insert-if-absent sees nothing and takes version 3.
    let c = run(&mut sim, &mut add_one("k", 7)).unwrap();
    assert_eq!((c.version, c.by_product), (3, 0));
}

#[test]
fn concurrent_updates_are_never_lost() {
    for seed in 1..600u64 {
        let writers = 2 + (seed % 9) as usize;
        // Half the runs start every writer from an assumed (mostly stale) version instead of a read.
        let (sim, ok, dead, mut seen) = race(seed, writers, 0, seed % 2 == 0);
        assert_eq!((ok, dead), (writers as u64, 0));
        let head = sim.head("cell");
        assert_eq!(head.version, ok, "seed {seed}");
        assert_eq!(value(&head), ok, "seed {seed}");
        // Every writer saw a distinct predecessor: 0, 1, …, n-1 (a linearizable order).
        seen.sort_unstable();
        assert_eq!(seen, (0..ok).collect::<Vec<_>>(), "seed {seed}");
        // Losers undid their increments and withdrew their proposals; version 1's was tidied away, and each
        // later one by the owner of the version after it: only the newest version's proposal remains.
        for v in 1..=ok {
            let t = sim.counters[&claim_key("cell", v)];
            assert!(
                t > 0 && t < 1 << TOKEN_BITS,
                "seed {seed}: v{v} counter {t}"
            );
            let kept = sim.values.contains_key(&proposal_key("cell", v, t as u64));
            assert_eq!(kept, v > 1 && v == ok, "seed {seed}: proposal of v{v}");
        }
        let proposals = sim.values.keys().filter(|k| k.contains("@v")).count() as u64;
        assert_eq!(
            proposals,
            u64::from(ok > 1),
            "seed {seed}: only the newest version's proposal remains"
        );
    }
}

#[test]
fn crashes_at_any_step_lose_nothing_and_block_nobody() {
    let mut stuck = 0;
    for seed in 1..600u64 {
        let writers = 2 + (seed % 7) as usize;
        let (mut sim, ok, dead_winners, _) = race(seed, writers, 15, seed % 3 == 0);
        // A fresh writer after the dust settles commits on top of every claimed version: the winners that
        // died after claiming are adopted, not lost.
        match run(&mut sim, &mut add_one("cell", seed ^ 0xdead)) {
            Ok(c) => {
                assert_eq!(c.by_product, ok + dead_winners, "seed {seed}");
                assert_eq!(
                    value(&sim.head("cell")),
                    ok + dead_winners + 1,
                    "seed {seed}"
                );
            }
            // Only possible when a winner and a loser both died inside their claim windows: the stuck
            // version's counter holds more than one token, so it names no proposal.
            Err(CellError::Contended) => {
                let head = sim.head("cell");
                let c = sim.counters[&claim_key("cell", head.version + 1)];
                let named = u64::try_from(c).is_ok_and(|t| {
                    sim.values
                        .contains_key(&proposal_key("cell", head.version + 1, t))
                });
                assert!(
                    !named,
                    "seed {seed}: stuck although the counter names a proposal"
                );
                stuck += 1;
            }
            Err(e) => panic!("seed {seed}: {e}"),
        }
    }
    // About one writer in seven dies here; a double death inside one claim window stays rare.
    assert!(stuck < 30, "{stuck} of 600 runs ended stuck");
}

/// Writers that each make `rounds` add-ones, interleaved by `seed`, where writer 0 freezes (for 3 000 steps
/// of the others) half the times it is about to write the head, as its publication or as an adoption: the
/// others publish versions past it meanwhile, and then its write sets the head back. Returns the store, the
/// updates committed, the predecessors they saw, and how many head writes set the head back.
fn race_with_a_freezing_writer(
    seed: u64,
    writers: usize,
    rounds: u64,
) -> (Sim, u64, Vec<u64>, u64) {
    struct W {
        id: usize,
        m: AddOne,
        reply: Option<Reply>,
        /// A head write held back while frozen.
        held: Option<Op>,
    }
    let mut sim = Sim::default();
    let mut rng = seed | 1;
    let mut made = vec![0u64; writers];
    let mut live: Vec<W> = (0..writers)
        .map(|id| W {
            id,
            m: add_one("cell", seed * 131 + id as u64),
            reply: None,
            held: None,
        })
        .collect();
    let (mut ok, mut seen, mut set_back) = (0u64, Vec::new(), 0u64);
    let (mut step, mut frozen_until) = (0u64, 0u64);
    while !live.is_empty() {
        step += 1;
        let others = live.iter().any(|w| w.id != 0);
        let i = loop {
            let i = (next(&mut rng) % live.len() as u64) as usize;
            if live[i].id != 0 || step >= frozen_until || !others {
                break i;
            }
        };
        let w = &mut live[i];
        let op = match w.held.take() {
            Some(op) => op,
            None => match w.m.resume(w.reply.take()) {
                Step::Op(op) => {
                    let head_write = matches!(&op, Op::Set(k, _) if k == "cell");
                    if w.id == 0 && head_write && others && next(&mut rng).is_multiple_of(2) {
                        w.held = Some(op);
                        frozen_until = step + 3_000;
                        continue;
                    }
                    op
                }
                Step::Pause(_) => continue,
                Step::Done(r) => {
                    seen.push(r.unwrap().by_product);
                    ok += 1;
                    made[w.id] += 1;
                    if made[w.id] < rounds {
                        w.m = add_one("cell", seed * 131 + (w.id as u64) * 1000 + made[w.id]);
                    } else {
                        live.swap_remove(i);
                    }
                    continue;
                }
            },
        };
        let before = sim.head("cell").version;
        let head_write = matches!(&op, Op::Set(k, _) if k == "cell");
        w.reply = Some(sim.apply(op));
        set_back += u64::from(head_write && sim.head("cell").version < before);
    }
    (sim, ok, seen, set_back)
}

#[test]
fn slow_writers_that_set_the_head_back_lose_nothing() {
    let mut set_back = 0;
    for seed in 1..300u64 {
        let writers = 2 + (seed % 5) as usize;
        let (mut sim, ok, mut seen, back) = race_with_a_freezing_writer(seed, writers, 6);
        set_back += back;
        assert_eq!(ok, writers as u64 * 6);
        seen.sort_unstable();
        assert_eq!(seen, (0..ok).collect::<Vec<_>>(), "seed {seed}");
        // Whatever the head shows now, the next update builds on every one made.
        let c = run(&mut sim, &mut add_one("cell", seed ^ 0xbeef)).unwrap();
        assert_eq!((c.version, c.by_product), (ok + 1, ok), "seed {seed}");
        // Deleted as they were superseded: a few proposals at most stay (a set-back head's adopter
        // republishes without deleting, and a late winner's predecessor may already be gone).
        let proposals = sim.values.keys().filter(|k| k.contains("@v")).count() as u64;
        assert!(
            proposals <= 1 + 2 * back,
            "seed {seed}: {proposals} proposals"
        );
    }
    assert!(
        set_back > 0,
        "no schedule set the head back: the test tests nothing"
    );
}

/// A writer (seeded `seed`) that claims version 1 of `k` and stalls before publishing: its head write, held.
fn win_and_stall(sim: &mut Sim, seed: u64) -> Op {
    let mut a = add_one("k", seed);
    let mut reply = None;
    loop {
        match a.resume(reply.take()) {
            Step::Op(op @ Op::Set(..)) if matches!(a.core.state, State::Publishing) => return op,
            Step::Op(op) => reply = Some(sim.apply(op)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_winner_that_dies_before_publishing_is_adopted() {
    let mut sim = Sim::default();
    // A claims version 1 and dies before writing the head (its head write is never made).
    let _never = win_and_stall(&mut sim, 11);
    assert!(!sim.values.contains_key("k"), "A never published");
    // B loses version 1 until it adopts A's proposal, then commits version 2 on top of it.
    let c = run(&mut sim, &mut add_one("k", 12)).unwrap();
    assert_eq!((c.version, c.by_product), (2, 1));
}

#[test]
fn a_stalled_winner_that_publishes_late_only_delays_readers() {
    let mut sim = Sim::default();
    // A wins version 1 and stalls before publishing.
    let late_publish = win_and_stall(&mut sim, 21);
    // B adopts version 1 and writes 2; C writes 3.
    assert_eq!(run(&mut sim, &mut add_one("k", 22)).unwrap().version, 2);
    assert_eq!(run(&mut sim, &mut add_one("k", 23)).unwrap().version, 3);
    // A wakes up and writes its (old) version 1 over the head.
    sim.apply(late_publish);
    assert_eq!(sim.head("k").version, 1, "the head went back");
    // The next writer still builds on version 3: it finds 2 and 3 claimed, adopts them, and writes 4.
    let c = run(&mut sim, &mut add_one("k", 24)).unwrap();
    assert_eq!((c.version, c.by_product), (4, 3));
    assert_eq!(value(&sim.head("k")), 4);
}

#[test]
fn only_the_newest_version_keeps_its_proposal() {
    let mut sim = Sim::default();
    for seed in 1..=6 {
        let (c, log) = run_logged(&mut sim, &mut add_one("k", seed));
        let c = c.unwrap();
        assert_eq!(c.version, seed);
        // Version 1 deletes its own proposal; version 2 has none to delete (version 1's is gone); from
        // version 3 on, the owner deletes the proposal of the version it read.
        let tidy: &[&str] = match seed {
            1 => &["delete"],
            2 => &[],
            _ => &["delete"],
        };
        assert_eq!(log[..4], ["get", "set", "increment", "set"]);
        assert_eq!(&log[4..], tidy, "v{seed}");
    }
    let proposals: Vec<&String> = sim.values.keys().filter(|k| k.contains("@v")).collect();
    let head = sim.head("k");
    assert_eq!(proposals, [&proposal_key("k", 6, head.token)]);
    assert_eq!(sim.counters.len(), 6, "every version's counter stays");
    // A start taken from a committed update names its proposal: the next owner deletes it too.
    let c = run(&mut sim, &mut add_one("k", 7)).unwrap();
    let start = Stored {
        version: c.version,
        token: c.token,
        data: c.data,
    };
    let (c, log) = run_logged(&mut sim, &mut add_one_after("k", 8, start));
    assert_eq!(c.unwrap().version, 8);
    assert_eq!(log, ["set", "increment", "set", "delete"]);
    assert_eq!(
        sim.values.keys().filter(|k| k.contains("@v")).count(),
        1,
        "only version 8's proposal"
    );
}

#[test]
fn a_head_set_back_past_deleted_proposals_moves_forward_to_the_newest() {
    let mut sim = Sim::default();
    // A wins version 1 and stalls before publishing.
    let late_publish = win_and_stall(&mut sim, 31);
    // B adopts version 1 and writes 2; others write 3 to 5, each deleting its predecessor's proposal.
    for seed in 32..36 {
        run(&mut sim, &mut add_one("k", seed)).unwrap();
    }
    assert_eq!(sim.head("k").version, 5);
    for v in 2..5 {
        let t = sim.counters[&claim_key("k", v)] as u64;
        assert!(!sim.values.contains_key(&proposal_key("k", v, t)), "v{v}");
    }
    // A wakes up and writes its version 1 over the head: four versions back, past three deleted proposals.
    sim.apply(late_publish);
    assert_eq!(sim.head("k").version, 1, "the head went back");
    // The next writer loses version 2, finds its proposal gone, reads the counters forward (by 0) to the
    // last claimed version, adopts it, and builds on it: nothing is lost.
    let before = sim.counters.clone();
    let mut e = add_one("k", 36);
    let mut reply = None;
    let mut probed = Vec::new();
    let c = loop {
        match e.resume(reply.take()) {
            Step::Op(op) => {
                if let Op::Increment(k, 0) = &op {
                    probed.push(k.clone());
                }
                reply = Some(sim.apply(op));
            }
            Step::Pause(_) => {}
            Step::Done(r) => break r.unwrap(),
        }
    };
    assert_eq!((c.version, c.by_product), (6, 5));
    assert_eq!(value(&sim.head("k")), 6);
    // Read by 0: version 2's counter (its winner), then 3 to 6 (6 unclaimed: 5 is the last); no counter
    // changed but version 6's, which it then claimed.
    let probed: Vec<&str> = probed.iter().map(String::as_str).collect();
    assert_eq!(probed, ["k@v2", "k@v3", "k@v4", "k@v5", "k@v6"]);
    for (k, v) in &before {
        assert_eq!(sim.counters[k], *v, "{k}");
    }
    assert_eq!(sim.counters.len(), 6);
}

#[test]
fn tokens_fit_the_counter_and_differ() {
    let mut u = add_one("k", 99);
    let tokens: Vec<u64> = (0..1000).map(|_| u.core.token()).collect();
    assert!(tokens.iter().all(|&t| t > 0 && t < 1 << TOKEN_BITS));
    let mut sorted = tokens.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), tokens.len());
}

#[test]
fn a_current_start_skips_the_read() {
    let mut sim = Sim::default();
    run(&mut sim, &mut add_one("k", 1)).unwrap();
    let head = sim.head("k");
    let (c, log) = run_logged(&mut sim, &mut add_one_after("k", 2, head));
    let c = c.unwrap();
    assert_eq!((c.version, c.by_product), (2, 1));
    assert_eq!(
        log,
        ["set", "increment", "set"],
        "proposal, claim, head: no read"
    );
    // An absent key claims version 1 without a read, and tidies its proposal as a read update does.
    let (c, log) = run_logged(&mut sim, &mut add_one_after("fresh", 3, Stored::absent()));
    assert_eq!(c.unwrap().version, 1);
    assert_eq!(log, ["set", "increment", "set", "delete"]);
    assert_eq!(value(&sim.head("fresh")), 1);
}

#[test]
fn a_stale_start_loses_its_claim_and_reads_at_once() {
    let mut sim = Sim::default();
    run(&mut sim, &mut add_one("k", 1)).unwrap();
    let old = sim.head("k");
    run(&mut sim, &mut add_one("k", 2)).unwrap();
    run(&mut sim, &mut add_one("k", 3)).unwrap();
    let (c, log) = run_logged(&mut sim, &mut add_one_after("k", 4, old));
    let c = c.unwrap();
    // Built on version 3, not on the stale version 1.
    assert_eq!((c.version, c.by_product), (4, 3));
    assert_eq!(value(&sim.head("k")), 4);
    assert_eq!(
        log,
        [
            "set",
            "increment",
            "increment",
            "delete", // lost version 2: undo, withdraw
            "get",
            "set",
            "increment",
            "set",    // read, then version 4
            "delete", // version 3's proposal
        ]
    );
    // The lost proposal is gone, and so are those of versions 2 and 3: only version 4's remains.
    let proposals = sim.values.keys().filter(|k| k.contains("@v")).count();
    assert_eq!(proposals, 1);
}

#[test]
fn a_refusal_or_a_keep_on_an_assumed_start_is_decided_again_on_the_cell() {
    let mut sim = Sim::default();
    run(&mut sim, &mut add_one("k", 1)).unwrap();
    let old = sim.head("k");
    run(&mut sim, &mut add_one("k", 2)).unwrap();
    // Accepts only the current value "2": the stale start ("1") would refuse.
    let mut only_two = Update::after(
        "k",
        5,
        |cur: Option<&[u8]>| -> Result<(Next, ()), &str> {
            match cur {
                Some(b"2") => Ok((Next::Put(b"3".to_vec()), ())),
                _ => Err("not 2"),
            }
        },
        old.clone(),
    );
    let c = run(&mut sim, &mut only_two).unwrap();
    assert_eq!((c.version, c.data.as_deref()), (3, Some(&b"3"[..])));
    // Keeps on the stale start, writes on the current value: the write wins.
    let mut keep_unless_three = Update::after(
        "k",
        6,
        |cur: Option<&[u8]>| -> Result<(Next, ()), ()> {
            Ok(match cur {
                Some(b"3") => (Next::Put(b"4".to_vec()), ()),
                _ => (Next::Keep, ()),
            })
        },
        old,
    );
    assert_eq!(run(&mut sim, &mut keep_unless_three).unwrap().version, 4);
    // An insert-if-absent that assumes the key absent finds the value and refuses, having written nothing.
    let before = (sim.values.len(), sim.counters.clone());
    let mut insert = Update::after(
        "k",
        7,
        |cur: Option<&[u8]>| -> Result<(Next, ()), ()> {
            match cur {
                Some(_) => Err(()),
                None => Ok((Next::Put(b"new".to_vec()), ())),
            }
        },
        Stored::absent(),
    );
    assert_eq!(run(&mut sim, &mut insert), Err(CellError::Refused(())));
    assert_eq!((sim.values.len(), sim.counters.clone()), before);
    assert_eq!(value(&sim.head("k")), 4);
}
