//! Versioned cells: linearizable read-modify-write of one key over a key-value store whose only atomic that
//! can be trusted is `increment` — what Spin's stores really guarantee (`reference/spin-compat.md` §2: on
//! Spin's SQLite store a compare-and-swap on an absent key is an upsert both racers win; on its Redis store
//! every swap reports failure after writing, and a lost race can be reported as success).
//!
//! The protocol, for a cell at key `K` holding version `n` (absent = version 0):
//!
//! 1. read `K` (the *head*: version `n`, its data);
//! 2. compute the next data from it;
//! 3. write it as a *proposal* at `K@v<n+1>.<t>`, where `t` is a random 48-bit token;
//! 4. claim version `n+1`: `increment(K@v<n+1>, t)`. The counter starts at 0, so exactly one claimant — the
//!    first — sees its own token back: it owns version `n+1`. Every later claimant sees a larger sum, undoes
//!    its increment, deletes its proposal and starts again from 1;
//! 5. the owner publishes: `set(K, proposal)`.
//!
//! Invariants (checked by the model tests at the bottom, with crashes at every step):
//! - **One writer per version.** Only `increment` decides, and it is atomic on every Spin backend.
//! - **Updates are never lost.** The owner of `n+1` read version `n`, and `n` was the newest: had `n+1`
//!   existed, its claim would have been taken. So each update applies to the value the previous one wrote.
//! - **The head never goes back in normal operation.** The owner of `n+2` read version `n+1` from the head, so
//!   the head write of `n+1` happened first, and no version is written to the head by two owners.
//! - **A crash never blocks a cell.** The proposal is written *before* the claim, so a claimant that dies
//!   after winning leaves its data behind: the counter holds its token (losers undo theirs), which names the
//!   proposal. A writer that keeps losing version `n+1` while the head stays at `n` for [`ADOPT_AFTER_US`]
//!   *adopts* it: it copies the winner's proposal to the head (the same bytes the winner would have written).
//!   Only a second crash in the same microseconds-wide window (a loser between its increment and its undo)
//!   can hide the winner's token; the writer then reports [`CellError::Contended`] and the key needs an
//!   operator.
//! - **Reads are cheap and may lag**: a read is one `get` of the head. Between a claim and its publication (or
//!   until an adoption) a reader sees the previous version — which is why every decision that must not race is
//!   made inside an update, never on a plain read.
//!
//! A head write can go back only if a process stalls for longer than [`ADOPT_AFTER_US`] between two store
//! calls (a frozen VM): an adopter (or a winner publishing late) then copies version `n+1` after someone else
//! already published `n+2`, or later ones. Nothing is lost even then: the newest claimed version always has its
//! proposal, and a writer stuck behind the set-back head walks the claim counters forward (`increment` by 0,
//! which changes nothing) to the last claimed version, adopts that proposal and moves on. A read may briefly
//! see the older value.
//!
//! Stored format: the head and the proposals hold `@kv1 <version> <token>\n<data>`; a head without the prefix
//! (written before cells existed) reads as version 0. Counters are only ever touched through `increment`, so
//! the backends' counter encodings (little-endian on SQLite, decimal on Redis) never matter. Counters are kept
//! (a few bytes per version: deleting one would let a stale writer claim its version again). Proposals are
//! not: the owner of version `n+1`, once it has published, deletes the proposal of version `n` (named by the
//! head it read), and the owner of version 1 deletes its own, since no head can ever go back to version 0.
//! Only the newest version's proposal stays, which is what a writer behind a set-back head needs. So a key
//! costs its head, one counter per version and one proposal; a writer that dies between its publication and
//! that delete leaves one proposal behind.
//!
//! The protocol is sans-IO: [`Update`] yields [`Op`]s and pauses; a driver (the guest's `esim402_guest::kv`,
//! or the simulated store in the tests) performs them and feeds back each [`Reply`].

use std::fmt;

/// Tokens are below 2^48, so thousands of simultaneous claimants cannot overflow a signed 64-bit counter.
pub const TOKEN_BITS: u32 = 48;

/// A writer that has lost the same version for this long (in summed back-off pauses) while the head stayed
/// put adopts the winner's proposal.
pub const ADOPT_AFTER_US: u64 = 100_000;

/// An update gives up (with [`CellError::Contended`]) after this much summed back-off.
pub const GIVE_UP_AFTER_US: u64 = 3_000_000;

/// The longest single back-off pause.
const MAX_PAUSE_US: u64 = 8_000;

/// The most claim counters a writer behind a set-back head reads in one go before it pauses.
const MAX_PROBE: u64 = 4_096;

const MAGIC: &[u8] = b"@kv1 ";

/// The key of version `version`'s claim counter.
pub fn claim_key(key: &str, version: u64) -> String {
    format!("{key}@v{version}")
}

/// The key of a proposal for `version` by the claimant holding `token`.
pub fn proposal_key(key: &str, version: u64, token: u64) -> String {
    format!("{key}@v{version}.{token}")
}

/// One stored version of a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// 0 for a value written before cells existed (or none at all).
    pub version: u64,
    /// The token of the claimant that wrote it (0 for version 0).
    pub token: u64,
    /// The data; `None` is a removed value (a tombstone).
    pub data: Option<Vec<u8>>,
}

impl Stored {
    /// Encode for the store.
    pub fn encode(&self) -> Vec<u8> {
        let (flag, data) = match &self.data {
            Some(d) => ('+', d.as_slice()),
            None => ('-', &[][..]),
        };
        let mut out = format!("@kv1 {} {} {flag}\n", self.version, self.token).into_bytes();
        out.extend_from_slice(data);
        out
    }

    /// Decode what the store holds at a head or proposal key. Bytes without the envelope are a value written
    /// before cells existed: version 0.
    pub fn decode(bytes: &[u8]) -> Result<Self, CellError> {
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return Ok(Self {
                version: 0,
                token: 0,
                data: Some(bytes.to_vec()),
            });
        };
        let corrupt = || CellError::Corrupt("malformed cell envelope".into());
        let nl = rest.iter().position(|&b| b == b'\n').ok_or_else(corrupt)?;
        let header = std::str::from_utf8(&rest[..nl]).map_err(|_| corrupt())?;
        let mut parts = header.split(' ');
        let version = parts
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(corrupt)?;
        let token = parts
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(corrupt)?;
        let data = match parts.next() {
            Some("+") => Some(rest[nl + 1..].to_vec()),
            Some("-") => None,
            _ => return Err(corrupt()),
        };
        if parts.next().is_some() {
            return Err(corrupt());
        }
        Ok(Self {
            version,
            token,
            data,
        })
    }

    /// The head of a key that was never written (version 0, no data): a start for [`Update::after`].
    pub fn absent() -> Self {
        Self {
            version: 0,
            token: 0,
            data: None,
        }
    }

    /// Decode a head read: absent is version 0 without data.
    pub fn from_head(bytes: Option<&[u8]>) -> Result<Self, CellError> {
        match bytes {
            None => Ok(Self::absent()),
            Some(b) => Self::decode(b),
        }
    }
}

/// A key-value operation for the driver to perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read a key; reply [`Reply::Value`].
    Get(String),
    /// Overwrite a key; reply [`Reply::Done`].
    Set(String, Vec<u8>),
    /// Remove a key; reply [`Reply::Done`].
    Delete(String),
    /// Atomically add to a counter (absent = 0); reply [`Reply::Counter`] with the new value.
    Increment(String, i64),
}

/// What an [`Op`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A `Get`'s value.
    Value(Option<Vec<u8>>),
    /// A `Set` or `Delete` finished.
    Done,
    /// An `Increment`'s new value.
    Counter(i64),
}

/// The next thing a driver must do for an [`Update`].
#[derive(Debug)]
pub enum Step<R, E> {
    /// Perform this operation and pass its reply to [`Update::resume`].
    Op(Op),
    /// Wait this many microseconds, then call [`Update::resume`] with `None`.
    Pause(u64),
    /// Finished.
    Done(Result<Committed<R>, CellError<E>>),
}

/// What an update function wants written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Write this data as the next version.
    Put(Vec<u8>),
    /// Remove the value (a tombstone version: reads as absent, later inserts may take the key).
    Remove,
    /// Change nothing (no write; the update reports the version it read).
    Keep,
}

/// A finished update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed<R> {
    /// The version now holding the result (the one read, for [`Next::Keep`]).
    pub version: u64,
    /// That version's token (a start for [`Update::after`] names its proposal with it).
    pub token: u64,
    /// The data after the update.
    pub data: Option<Vec<u8>>,
    /// The update function's by-product from the attempt that was committed.
    pub by_product: R,
}

/// Why an update did not commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellError<E = ()> {
    /// The update function refused the current value.
    Refused(E),
    /// The cell kept changing (or a doubly-crashed claim hides its winner) past [`GIVE_UP_AFTER_US`].
    Contended,
    /// A stored envelope did not decode.
    Corrupt(String),
}

impl<E: fmt::Debug> fmt::Display for CellError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(e) => write!(f, "update refused: {e:?}"),
            Self::Contended => f.write_str("too much contention"),
            Self::Corrupt(m) => write!(f, "corrupt stored value: {m}"),
        }
    }
}

#[derive(Debug)]
enum State {
    /// Waiting for the head.
    Reading,
    /// Waiting for the proposal write.
    Proposing,
    /// Waiting for the claim's counter.
    Claiming,
    /// Won; waiting for the head write.
    Publishing,
    /// Published; waiting for the delete of a proposal no longer needed (version 1's own, or the one of the
    /// version read).
    Tidying,
    /// Lost; waiting for the undo increment.
    Undoing,
    /// Lost; waiting for the proposal delete.
    Withdrawing,
    /// Stuck: re-reading the head before adopting.
    Checking,
    /// Stuck: reading the claim counter (increment by 0) to learn the winner's token.
    FindingWinner,
    /// Stuck: reading the proposal of `version` by `token`.
    Adopting { version: u64, token: u64 },
    /// Stuck and the claimed version's proposal is gone (a later version was published over a set-back
    /// head): reading the counter of `version` (increment by 0); `last` is the last claimed version found and
    /// its counter.
    Probing {
        version: u64,
        last: Option<(u64, i64)>,
    },
    /// Stuck: waiting for the adopted head write.
    Republishing,
    /// Pausing before the next attempt.
    Pausing,
    /// Finished.
    Finished,
}

/// One read-modify-write of a cell, as a sans-IO state machine.
///
/// ```
/// use esim402_core::store::cell::{Next, Op, Reply, Step, Update};
/// let mut u = Update::new("k", 7, |cur: Option<&[u8]>| -> Result<(Next, ()), ()> {
///     assert!(cur.is_none());
///     Ok((Next::Put(b"1".to_vec()), ()))
/// });
/// let mut reply = None;
/// let mut store = std::collections::HashMap::<String, Vec<u8>>::new();
/// let mut counters = std::collections::HashMap::<String, i64>::new();
/// let done = loop {
///     match u.resume(reply.take()) {
///         Step::Op(Op::Get(k)) => reply = Some(Reply::Value(store.get(&k).cloned())),
///         Step::Op(Op::Set(k, v)) => { store.insert(k, v); reply = Some(Reply::Done) }
///         Step::Op(Op::Delete(k)) => { store.remove(&k); reply = Some(Reply::Done) }
///         Step::Op(Op::Increment(k, d)) => {
///             let c = counters.entry(k).or_default();
///             *c += d;
///             reply = Some(Reply::Counter(*c));
///         }
///         Step::Pause(_) => {}
///         Step::Done(r) => break r.unwrap(),
///     }
/// };
/// assert_eq!((done.version, done.data.as_deref()), (1, Some(&b"1"[..])));
/// ```
pub struct Update<F, R, E> {
    core: Core,
    update: F,
    /// What the update function returned with its last decision: the by-product of a write, or its refusal.
    outcome: Option<Result<R, E>>,
}

/// What an update function decided, without its by-product or error (kept by the [`Update`]): the protocol
/// runs in [`Core`], one copy of the code for every update function.
enum Decision {
    /// Write this data (`None`: a tombstone).
    Write(Option<Vec<u8>>),
    Keep,
    Refused,
}

/// A finished [`Core`]: the version now holding the result.
struct Done {
    version: u64,
    token: u64,
    data: Option<Vec<u8>>,
}

/// What [`Core::resume`] asks for next.
enum CoreStep {
    Op(Op),
    Pause(u64),
    /// Finished; a refusal is `CellError::Refused(())`, its error kept by the [`Update`].
    Done(Result<Done, CellError>),
}

/// The protocol of an [`Update`], apart from its update function.
struct Core {
    key: String,
    rng: u64,
    state: State,
    /// The head version this attempt read, and its token.
    read: u64,
    read_token: u64,
    /// This attempt's token and proposal bytes.
    token: u64,
    proposal: Vec<u8>,
    /// The attempt's data, kept until it is committed.
    result: Option<Option<Vec<u8>>>,
    /// Attempts so far and summed pauses.
    attempt: u32,
    paused_us: u64,
    /// The head version that has been losing (and since when, in summed pauses) — for adoption.
    stuck_at: Option<(u64, u64)>,
    /// A version the caller already holds, to start the first attempt from instead of reading ([`Update::after`]).
    start: Option<Stored>,
    /// This attempt started from `start`, not from a read.
    assumed: bool,
}

impl<F, R, E> Update<F, R, E>
where
    F: FnMut(Option<&[u8]>) -> Result<(Next, R), E>,
{
    /// An update of the cell at `key`; `seed` feeds the tokens and back-off jitter (use fresh randomness:
    /// two claimants with one token would share a proposal key).
    pub fn new(key: impl Into<String>, seed: u64, update: F) -> Self {
        Self {
            core: Core {
                key: key.into(),
                rng: seed,
                state: State::Reading,
                read: 0,
                read_token: 0,
                token: 0,
                proposal: Vec::new(),
                result: None,
                attempt: 0,
                paused_us: 0,
                stuck_at: None,
                start: None,
                assumed: false,
            },
            update,
            outcome: None,
        }
    }

    /// [`Self::new`], whose first attempt starts from `head` — a version of the cell the caller already holds
    /// (read earlier, or the result of its own last update) — instead of reading the cell: one `get` fewer.
    ///
    /// Any version the cell ever held is a correct start: each version's data is fixed once it is claimed, and
    /// the claim on the version after `head` is won only if no one has claimed it, that is, only if `head` is
    /// still the newest. A start that is no longer the newest costs a lost claim (its undo and withdrawal), and
    /// the next attempt reads the cell at once, without a pause. Only a write is decided on the start: if the
    /// update function refuses it or leaves it as it is, the cell is read and the function asked again.
    /// [`Stored::absent`] claims version 1 without a read: only for a key that cannot hold a value written
    /// before cells existed (version 0 with data), which such a claim would overwrite, or for a write that
    /// ignores what the key holds.
    pub fn after(key: impl Into<String>, seed: u64, update: F, head: Stored) -> Self {
        let mut u = Self::new(key, seed, update);
        u.core.start = Some(head);
        u
    }

    /// Advance with the reply to the last [`Step::Op`] (`None` to start and after a [`Step::Pause`]).
    pub fn resume(&mut self, reply: Option<Reply>) -> Step<R, E> {
        let Self {
            core,
            update,
            outcome,
        } = self;
        let mut decide = |current: Option<&[u8]>| match update(current) {
            Ok((next, by_product)) => {
                *outcome = Some(Ok(by_product));
                match next {
                    Next::Put(data) => Decision::Write(Some(data)),
                    Next::Remove => Decision::Write(None),
                    Next::Keep => Decision::Keep,
                }
            }
            Err(e) => {
                *outcome = Some(Err(e));
                Decision::Refused
            }
        };
        match core.resume(reply, &mut decide) {
            CoreStep::Op(op) => Step::Op(op),
            CoreStep::Pause(us) => Step::Pause(us),
            CoreStep::Done(Ok(done)) => Step::Done(match self.outcome.take() {
                Some(Ok(by_product)) => Ok(Committed {
                    version: done.version,
                    token: done.token,
                    data: done.data,
                    by_product,
                }),
                _ => Err(CellError::Corrupt("update lost its result".into())),
            }),
            CoreStep::Done(Err(CellError::Refused(()))) => Step::Done(match self.outcome.take() {
                Some(Err(e)) => Err(CellError::Refused(e)),
                _ => Err(CellError::Corrupt("update lost its refusal".into())),
            }),
            CoreStep::Done(Err(e)) => Step::Done(Err(widen(e))),
        }
    }
}

/// The update function as [`Core`] calls it.
type Decide<'a> = dyn FnMut(Option<&[u8]>) -> Decision + 'a;

impl Core {
    /// splitmix64.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn token(&mut self) -> u64 {
        loop {
            let t = self.random() >> (64 - TOKEN_BITS);
            if t != 0 {
                return t;
            }
        }
    }

    fn finish(&mut self, r: Result<Done, CellError>) -> CoreStep {
        self.state = State::Finished;
        CoreStep::Done(r)
    }

    fn read_head(&mut self) -> CoreStep {
        self.state = State::Reading;
        CoreStep::Op(Op::Get(self.key.clone()))
    }

    /// Back off before the next attempt, or give up.
    fn retry(&mut self) -> CoreStep {
        if self.paused_us >= GIVE_UP_AFTER_US {
            return self.finish(Err(CellError::Contended));
        }
        self.attempt += 1;
        let cap = (250u64 << self.attempt.min(6)).min(MAX_PAUSE_US);
        let pause = self.random() % cap;
        self.paused_us += pause;
        self.state = State::Pausing;
        CoreStep::Pause(pause)
    }

    /// [`Update::resume`], asking `decide` for the update function's decision on each version it starts from.
    fn resume(&mut self, reply: Option<Reply>, decide: &mut Decide<'_>) -> CoreStep {
        match (std::mem::replace(&mut self.state, State::Finished), reply) {
            (State::Reading, None) => match self.start.take() {
                Some(head) => {
                    self.assumed = true;
                    self.on_stored(head, decide)
                }
                None => self.read_head(),
            },
            (State::Pausing, None) => self.read_head(),
            (State::Reading, Some(Reply::Value(head))) => {
                self.assumed = false;
                self.on_head(head.as_deref(), decide)
            }
            (State::Proposing, Some(Reply::Done)) => {
                self.state = State::Claiming;
                let token = self.token_i64();
                CoreStep::Op(Op::Increment(claim_key(&self.key, self.read + 1), token))
            }
            (State::Claiming, Some(Reply::Counter(c))) => {
                if c == self.token_i64() {
                    self.state = State::Publishing;
                    CoreStep::Op(Op::Set(
                        self.key.clone(),
                        std::mem::take(&mut self.proposal),
                    ))
                } else {
                    self.state = State::Undoing;
                    let token = self.token_i64();
                    CoreStep::Op(Op::Increment(claim_key(&self.key, self.read + 1), -token))
                }
            }
            // Once published, version 1's own proposal is not needed (no head goes back to version 0), nor is
            // the version read's (this one's is the newest now). Version 1's was deleted by its owner.
            (State::Publishing, Some(Reply::Done)) if self.read == 0 => {
                self.state = State::Tidying;
                CoreStep::Op(Op::Delete(proposal_key(&self.key, 1, self.token)))
            }
            (State::Publishing, Some(Reply::Done)) if self.read >= 2 && self.read_token != 0 => {
                self.state = State::Tidying;
                CoreStep::Op(Op::Delete(proposal_key(
                    &self.key,
                    self.read,
                    self.read_token,
                )))
            }
            (State::Publishing | State::Tidying, Some(Reply::Done)) => {
                let Some(data) = self.result.take() else {
                    return self.finish(Err(CellError::Corrupt("update lost its result".into())));
                };
                let version = self.read + 1;
                self.finish(Ok(Done {
                    version,
                    token: self.token,
                    data,
                }))
            }
            (State::Undoing, Some(Reply::Counter(_))) => {
                self.state = State::Withdrawing;
                CoreStep::Op(Op::Delete(proposal_key(
                    &self.key,
                    self.read + 1,
                    self.token,
                )))
            }
            // A start the caller assumed was stale: read the cell now (no contention is shown by that).
            (State::Withdrawing, Some(Reply::Done)) if self.assumed => {
                self.assumed = false;
                self.result = None;
                self.proposal.clear();
                self.read_head()
            }
            (State::Withdrawing, Some(Reply::Done)) => self.on_lost(),
            (State::Checking, Some(Reply::Value(head))) => {
                match Stored::from_head(head.as_deref()) {
                    Ok(s) if s.version == self.read => {
                        self.state = State::FindingWinner;
                        CoreStep::Op(Op::Increment(claim_key(&self.key, self.read + 1), 0))
                    }
                    Ok(_) => self.retry(),
                    Err(e) => self.finish(Err(e)),
                }
            }
            (State::FindingWinner, Some(Reply::Counter(c))) => match token_of(c) {
                Some(token) => self.adopt(self.read + 1, token),
                // A loser's increment is in flight (or the claim's winner is hidden): try again later.
                None => self.retry(),
            },
            (State::Adopting { version, token }, Some(Reply::Value(Some(bytes)))) => {
                match Stored::decode(&bytes) {
                    Ok(s) if s.version == version && s.token == token => {
                        self.state = State::Republishing;
                        CoreStep::Op(Op::Set(self.key.clone(), bytes))
                    }
                    Ok(_) => self.finish(Err(CellError::Corrupt(format!(
                        "proposal {} does not hold version {version}",
                        proposal_key(&self.key, version, token),
                    )))),
                    Err(e) => self.finish(Err(e)),
                }
            }
            // The version claimed after the head has no proposal: it was deleted when a later version was
            // published (the head has been set back since), or the counter did not name the winner yet. Find
            // the last claimed version.
            (State::Adopting { version, .. }, Some(Reply::Value(None)))
                if version == self.read + 1 =>
            {
                self.probe(version + 1, None)
            }
            (State::Adopting { .. }, Some(Reply::Value(None))) => self.retry(),
            (State::Probing { version, last }, Some(Reply::Counter(c))) => match (c, last) {
                (0, Some((claimed, c))) => match token_of(c) {
                    Some(token) => self.adopt(claimed, token),
                    None => self.retry(),
                },
                // Nothing claimed after the version whose proposal was missing: a loser's increment was in
                // flight when its counter was read. Try again later.
                (0, None) => self.retry(),
                (c, _) => self.probe(version + 1, Some((version, c))),
            },
            (State::Republishing, Some(Reply::Done)) => {
                self.stuck_at = None;
                self.read_head()
            }
            (state, reply) => self.finish(Err(CellError::Corrupt(format!(
                "cell driver protocol error: {reply:?} in state {state:?}"
            )))),
        }
    }

    /// Read `version`'s proposal by `token`, to adopt it.
    fn adopt(&mut self, version: u64, token: u64) -> CoreStep {
        self.state = State::Adopting { version, token };
        CoreStep::Op(Op::Get(proposal_key(&self.key, version, token)))
    }

    /// Read the claim counter of `version` without changing it; `last`: the last claimed version so far.
    fn probe(&mut self, version: u64, last: Option<(u64, i64)>) -> CoreStep {
        if version - self.read > MAX_PROBE {
            return self.retry();
        }
        self.state = State::Probing { version, last };
        CoreStep::Op(Op::Increment(claim_key(&self.key, version), 0))
    }

    fn token_i64(&self) -> i64 {
        // Tokens are below 2^48.
        i64::try_from(self.token).unwrap_or(i64::MAX)
    }

    fn on_head(&mut self, head: Option<&[u8]>, decide: &mut Decide<'_>) -> CoreStep {
        match Stored::from_head(head) {
            Ok(s) => self.on_stored(s, decide),
            Err(e) => self.finish(Err(e)),
        }
    }

    fn on_stored(&mut self, stored: Stored, decide: &mut Decide<'_>) -> CoreStep {
        if self.stuck_at.is_some_and(|(v, _)| v != stored.version) {
            self.stuck_at = None;
        }
        let decision = decide(stored.data.as_deref());
        // Only a write is checked by its claim; a refusal or a no-op decided on an assumed start could be
        // decided on a stale version, so it is decided again on the cell as read.
        let writes = match &decision {
            Decision::Write(data) => data.is_some() || stored.data.is_some(),
            Decision::Keep | Decision::Refused => false,
        };
        if self.assumed && !writes {
            self.assumed = false;
            return self.read_head();
        }
        let data = match decision {
            Decision::Refused => return self.finish(Err(CellError::Refused(()))),
            Decision::Write(data) if writes => data,
            // Keep, or remove what is already absent: nothing to write.
            Decision::Keep | Decision::Write(_) => {
                return self.finish(Ok(Done {
                    version: stored.version,
                    token: stored.token,
                    data: stored.data,
                }));
            }
        };
        self.read = stored.version;
        self.read_token = stored.token;
        self.token = self.token();
        let proposal = Stored {
            version: self.read + 1,
            token: self.token,
            data: data.clone(),
        }
        .encode();
        self.proposal = proposal.clone();
        self.result = Some(data);
        self.state = State::Proposing;
        CoreStep::Op(Op::Set(
            proposal_key(&self.key, self.read + 1, self.token),
            proposal,
        ))
    }

    /// Lost the claim on `read + 1`: back off, and once the head has stayed at `read` long enough, adopt.
    fn on_lost(&mut self) -> CoreStep {
        self.result = None;
        self.proposal.clear();
        let since = match self.stuck_at {
            Some((v, since)) if v == self.read => since,
            _ => {
                self.stuck_at = Some((self.read, self.paused_us));
                self.paused_us
            }
        };
        if self.paused_us.saturating_sub(since) >= ADOPT_AFTER_US {
            self.state = State::Checking;
            return CoreStep::Op(Op::Get(self.key.clone()));
        }
        self.retry()
    }
}

/// The winner's token a claim counter holds, if it holds exactly one (not while a loser's increment is in
/// flight).
fn token_of(counter: i64) -> Option<u64> {
    u64::try_from(counter)
        .ok()
        .filter(|&t| t > 0 && t < (1 << TOKEN_BITS))
}

fn widen<E>(e: CellError) -> CellError<E> {
    match e {
        CellError::Refused(()) | CellError::Contended => CellError::Contended,
        CellError::Corrupt(m) => CellError::Corrupt(m),
    }
}

#[cfg(test)]
#[path = "cell_tests.rs"]
mod tests;
