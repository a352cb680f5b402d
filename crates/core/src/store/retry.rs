//! A bounded list of work items (by id) that an operator's run retries until each is done: one key, changed by
//! compare-and-swap, written only when an item is listed (a failure, rare), taken or leaves: no request that
//! succeeds touches it.
//! Used for withdrawn `exact` activations to recheck on chain (`order::recheck`, `cleanup/recheck`) and for
//! terminated SIMs whose refunds could not be recorded (`cleanup/unrefunded`).
//!
//! Rules a caller must keep: [`push`] an item as soon as its work is owed and may be left undone, [`settle`]
//! with [`Tried::Done`] only once it is done; a run [`take`]s what is due, which counts a try and sets the next
//! wait whether or not that run ever settles it (a run cut short, or two at once, neither holds the list up nor
//! tries one twice in a wait). After [`MAX_TRIES`] an item leaves the list for an operator (the caller logs it).

use serde::{Deserialize, Serialize};

/// How often an item is tried without being done before it is left to an operator.
pub const MAX_TRIES: u32 = 8;

/// The wait after an item is first taken (seconds), before it may be taken again; it doubles with each further
/// take (capped at a day).
pub const RETRY_SECS: u64 = 300;

/// One listed item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// The item (an invoice id, an ICCID). Stored as `invoice`, the name it had when these lists held invoices
    /// only, so an earlier build (a rollback, a rolling upgrade) still reads them.
    #[serde(rename = "invoice")]
    pub id: String,
    /// Tries without being done so far.
    #[serde(default)]
    pub tries: u32,
    /// Not tried again before (unix seconds).
    #[serde(default)]
    pub next: u64,
}

/// What listing an item comes to ([`push`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// Listed: write this.
    Listed(Vec<Listed>),
    /// Listed already: nothing to write.
    Already,
    /// The list holds its most items already: not listed (an operator must look).
    Full,
}

/// `list` with `id` listed (at most `max` items).
pub fn push(mut list: Vec<Listed>, id: &str, max: usize) -> Push {
    if list.iter().any(|l| l.id == id) {
        return Push::Already;
    }
    if list.len() >= max {
        return Push::Full;
    }
    list.push(Listed {
        id: id.to_owned(),
        tries: 0,
        next: 0,
    });
    Push::Listed(list)
}

/// What [`take`] took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The list to write.
    pub list: Vec<Listed>,
    /// The items to try now.
    pub due: Vec<String>,
    /// Items tried [`MAX_TRIES`] times without being done: left to an operator, out of the list.
    pub given_up: Vec<String>,
}

/// The wait before a try after `tries` tries (seconds): [`RETRY_SECS`], doubling, at most a day.
fn wait(tries: u32) -> u64 {
    RETRY_SECS
        .saturating_mul(1 << tries.saturating_sub(1).min(16))
        .min(86_400)
}

/// Take up to `max` listed items due at `now`, those due longest first (so items that keep failing do not hold
/// up the rest): each taken counts a try and is not due again before its next wait.
pub fn take(mut list: Vec<Listed>, now: u64, max: usize) -> Taken {
    // By `next`, then list order (oldest listed first): a stable sort.
    let mut due: Vec<(u64, String)> = list
        .iter()
        .filter(|l| l.next <= now)
        .map(|l| (l.next, l.id.clone()))
        .collect();
    due.sort_by_key(|(next, _)| *next);
    due.truncate(max);
    let mut taken = Taken {
        list: Vec::new(),
        due: Vec::new(),
        given_up: Vec::new(),
    };
    for (_, id) in due {
        let Some(at) = list.iter().position(|l| l.id == id) else {
            continue;
        };
        if list[at].tries >= MAX_TRIES {
            list.remove(at);
            taken.given_up.push(id);
            continue;
        }
        let entry = &mut list[at];
        entry.tries = entry.tries.saturating_add(1);
        entry.next = now.saturating_add(wait(entry.tries));
        taken.due.push(id);
    }
    taken.list = list;
    taken
}

/// How a try of one item ended ([`settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tried {
    /// Done: it leaves the list.
    Done,
    /// Not done: due again after the wait [`take`] set, or left to an operator after [`MAX_TRIES`].
    Again,
}

/// `list` after a try of `id` ended as `tried`: the list to write (`None`: nothing to write) and whether the
/// item left it after its last try ([`MAX_TRIES`]: an operator must look).
pub fn settle(mut list: Vec<Listed>, id: &str, tried: Tried) -> (Option<Vec<Listed>>, bool) {
    let Some(at) = list.iter().position(|l| l.id == id) else {
        return (None, false);
    };
    match tried {
        Tried::Done => {
            list.remove(at);
            (Some(list), false)
        }
        Tried::Again if list[at].tries >= MAX_TRIES => {
            list.remove(at);
            (Some(list), true)
        }
        Tried::Again => (None, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(list: Push) -> Vec<Listed> {
        match list {
            Push::Listed(l) => l,
            other => panic!("not listed: {other:?}"),
        }
    }

    #[test]
    fn a_list_holds_each_item_once_and_is_bounded() {
        let list = listed(push(Vec::new(), "inv_a", 10));
        assert_eq!(
            push(list.clone(), "inv_a", 10),
            Push::Already,
            "listed once"
        );
        let list = listed(push(list, "inv_b", 10));
        assert_eq!(take(list.clone(), 0, 10).due, vec!["inv_a", "inv_b"]);
        let (left, gave_up) = settle(list.clone(), "inv_a", Tried::Done);
        assert_eq!((left.unwrap().len(), gave_up), (1, false));
        assert_eq!(settle(list.clone(), "inv_c", Tried::Done), (None, false));
        assert_eq!(push(list, "inv_new", 2), Push::Full);
    }

    /// An item that keeps failing waits longer each time and does not hold up the others; a run that takes one
    /// and never settles it (cut short) counts the try all the same; after [`MAX_TRIES`] it is left to an
    /// operator.
    #[test]
    fn an_item_not_done_backs_off_and_is_given_up_at_last() {
        let list = listed(push(listed(push(Vec::new(), "inv_a", 10)), "inv_b", 10));
        let t = take(list, 1_000, 1);
        assert_eq!(t.due, vec!["inv_a"]);
        assert_eq!((t.list[0].tries, t.list[0].next), (1, 1_000 + RETRY_SECS));
        assert_eq!(settle(t.list.clone(), "inv_a", Tried::Again), (None, false));
        // Taken and never settled: the next run takes the other one first, and this one only after its wait.
        let t = take(t.list, 1_000, 10);
        assert_eq!(t.due, vec!["inv_b"]);
        let t = take(t.list, 1_000 + RETRY_SECS, 1);
        assert_eq!(t.due, vec!["inv_a"]);
        assert_eq!(t.list[0].next, 1_000 + 3 * RETRY_SECS, "doubled");
        let mut list = t.list;
        for round in 2..MAX_TRIES {
            let t = take(list, u64::from(round) * 1_000_000, 10);
            assert!(t.due.contains(&"inv_a".to_owned()), "round {round}");
            list = t.list;
        }
        let (left, gave_up) = settle(list.clone(), "inv_a", Tried::Again);
        assert!(gave_up);
        assert!(left.unwrap().iter().all(|l| l.id != "inv_a"));
        // Never settled either: the next take gives it up.
        let t = take(list, u64::MAX, 10);
        assert_eq!(t.given_up, vec!["inv_a"]);
    }

    /// A list an earlier build wrote (its items named `invoice`) still reads, and is written back the same.
    #[test]
    fn a_list_written_before_reads() {
        let old: Vec<Listed> =
            serde_json::from_str(r#"[{"invoice":"inv_a","tries":2,"next":9}]"#).unwrap();
        assert_eq!(
            old,
            vec![Listed {
                id: "inv_a".into(),
                tries: 2,
                next: 9
            }]
        );
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"[{"invoice":"inv_a","tries":2,"next":9}]"#
        );
    }
}
