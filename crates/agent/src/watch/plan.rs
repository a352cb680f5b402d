//! Where to move a SIM when the radio gives a reason ([`super::signal::Trigger`]), from the pinned carrier
//! catalog: a weak signal moves to the next carrier of the SIM's region (or of the operator's own preference
//! list); a refused attach on a network the region's roaming policy does not cover is a border crossed, so
//! the SIM moves to a region whose policy covers that network. Every move is paid, so a radio that is weak on
//! every carrier must not buy switch after switch: [`Switches`] caps them per UTC day and keeps the walk off a
//! carrier the SIM left within [`AVOID_SECS`], both read from the state directory. Pure.

use esim402_core::esim::Catalog;
use esim402_core::{CarrierId, Region};

use super::signal::Trigger;

/// A move: the body of `POST /v1/esim/{iccid}/switch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// Another carrier, same region.
    Carrier(CarrierId),
    /// Another region (its default carrier).
    Region(Region),
}

impl Move {
    /// The switch request body.
    pub fn body(&self) -> serde_json::Value {
        match self {
            Self::Carrier(c) => serde_json::json!({"carrier": c.as_str()}),
            Self::Region(r) => serde_json::json!({"region": r.as_str()}),
        }
    }
}

/// Why there is nowhere to go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoMove {
    /// The region (or preference list) has no other carrier.
    #[error("no other carrier to move to from {0}")]
    NoOtherCarrier(String),
    /// No region's roaming policy covers the network the modem sees.
    #[error("no region of the catalog covers network {0}")]
    NoRegionFor(String),
    /// Every other carrier was left within [`AVOID_SECS`].
    #[error("every other carrier than {0} was tried within the last {hours} hours", hours = AVOID_SECS / 3600)]
    TriedRecently(String),
    /// [`Switches::check`]: the day's switches are made.
    #[error("{0} switches today already, the most per UTC day: no more until tomorrow")]
    DailyLimit(u32),
}

/// Switches a watch makes per UTC day by default (`--max-switches-per-day`).
pub const MAX_SWITCHES_PER_DAY: u32 = 3;
/// How long a carrier the SIM left is not gone back to: it was weak (or refused the attach) then.
pub const AVOID_SECS: u64 = 6 * 3_600;

/// The switches of a SIM's line (the SIM, the one it replaced, that one's predecessor, …), as the state
/// directory records them: so a watch started again (or run by cron with `--ticks`) counts the switches made
/// before it, and a switch still pending (its reply lost) counts too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Switches {
    /// When each switch payment of the line was signed (Unix seconds), whatever became of it (settled,
    /// pending, unknown; one refused before any charge is dropped from the spends).
    signed: Vec<u64>,
    /// The carriers the line left, and when (the new SIM's activation).
    left: Vec<(u64, CarrierId)>,
}

impl Switches {
    /// The switches of `iccid`'s line in `state`: its switch spends (purpose `switch <iccid> …`, see
    /// [`crate::client`]) and those of the SIMs it replaced ([`crate::state::SimRecord::replaces`]), and the
    /// carrier each replaced SIM was on.
    pub fn of(state: &crate::state::State, iccid: &str) -> Self {
        let mut line = vec![iccid];
        let mut left = Vec::new();
        let mut sim = state.sims.get(iccid);
        while let Some(newer) = sim {
            // A cycle (a hand-edited state) ends the walk.
            let Some(older) = newer.replaces.as_deref().filter(|id| !line.contains(id)) else {
                break;
            };
            line.push(older);
            sim = state.sims.get(older);
            if let Some(carrier) = sim
                .and_then(|s| s.carrier.as_deref())
                .and_then(|c| CarrierId::parse(c).ok())
            {
                left.push((newer.activated_at, carrier));
            }
        }
        let prefixes: Vec<String> = line
            .iter()
            .map(|id| crate::client::switch_purpose_prefix(id))
            .collect();
        let signed = state
            .spends
            .iter()
            .filter(|s| prefixes.iter().any(|p| s.purpose.starts_with(p.as_str())))
            .map(|s| s.at)
            .collect();
        Self { signed, left }
    }

    /// Whether another switch may be made at `now`: fewer than `max_per_day` since 00:00 UTC.
    pub fn check(&self, now: u64, max_per_day: u32) -> Result<(), NoMove> {
        let day_start = now - now % 86_400;
        let today = self.signed.iter().filter(|t| **t >= day_start).count();
        let today = u32::try_from(today).unwrap_or(u32::MAX);
        if today >= max_per_day {
            return Err(NoMove::DailyLimit(today));
        }
        Ok(())
    }

    /// The carriers left within [`AVOID_SECS`] of `now` (the walk skips them).
    pub fn avoided(&self, now: u64) -> Vec<CarrierId> {
        self.left
            .iter()
            .filter(|(t, _)| t.saturating_add(AVOID_SECS) > now)
            .map(|(_, c)| c.clone())
            .collect()
    }
}

/// Decide the move for `trigger` of a SIM on `carrier` in `region`; `preferred` (may be empty) overrides the
/// region's carrier order; `avoid` ([`Switches::avoided`]) are carriers not to go back to yet.
pub fn next_move(
    trigger: &Trigger,
    carrier: &CarrierId,
    region: &Region,
    catalog: &Catalog,
    preferred: &[CarrierId],
    avoid: &[CarrierId],
) -> Result<Move, NoMove> {
    if let Trigger::Denied { seen: Some(plmn) } = trigger {
        let here = catalog.region(region);
        if !here.is_some_and(|r| r.roaming.permits(plmn)) {
            return catalog
                .regions()
                .iter()
                .find(|r| &r.region != region && r.roaming.permits(plmn))
                .map(|r| Move::Region(r.region.clone()))
                .ok_or_else(|| NoMove::NoRegionFor(plmn.to_string()));
        }
    }
    let order: &[CarrierId] = if preferred.is_empty() {
        catalog
            .region(region)
            .map_or(&[], |r| r.carriers.as_slice())
    } else {
        preferred
    };
    // The carrier after the current one, wrapping around: repeated moves walk the whole list, but not back to
    // one left a short while ago.
    let start = order.iter().position(|c| c == carrier).map_or(0, |i| i + 1);
    let mut others = (0..order.len())
        .map(|k| &order[(start + k) % order.len()])
        .filter(|c| *c != carrier)
        .peekable();
    if others.peek().is_none() {
        return Err(NoMove::NoOtherCarrier(carrier.to_string()));
    }
    others
        .find(|c| !avoid.contains(c))
        .map(|c| Move::Carrier(c.clone()))
        .ok_or_else(|| NoMove::TriedRecently(carrier.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use esim402_core::esim::Plmn;

    use super::*;

    fn c(s: &str) -> CarrierId {
        CarrierId::parse(s).unwrap()
    }

    fn r(s: &str) -> Region {
        Region::parse(s).unwrap()
    }

    #[test]
    fn a_weak_signal_walks_the_regions_carriers() {
        let cat = Catalog::builtin();
        let weak = Trigger::Weak { dbm: -110 };
        let us = r("us-west");
        assert_eq!(
            next_move(&weak, &c("tmobile"), &us, cat, &[], &[]),
            Ok(Move::Carrier(c("verizon")))
        );
        assert_eq!(
            next_move(&weak, &c("att"), &us, cat, &[], &[]),
            Ok(Move::Carrier(c("tmobile"))),
            "wraps around"
        );
        assert_eq!(
            next_move(
                &weak,
                &c("verizon"),
                &us,
                cat,
                &[c("att"), c("verizon")],
                &[]
            ),
            Ok(Move::Carrier(c("att"))),
            "the operator's order"
        );
        assert_eq!(
            next_move(&weak, &c("tmobile"), &us, cat, &[c("tmobile")], &[]),
            Err(NoMove::NoOtherCarrier("tmobile".into()))
        );
        assert_eq!(
            next_move(&weak, &c("tmobile"), &r("mars"), cat, &[], &[]),
            Err(NoMove::NoOtherCarrier("tmobile".into())),
            "a region the catalog does not know"
        );
    }

    #[test]
    fn a_refused_attach_abroad_moves_region_and_at_home_moves_carrier() {
        let cat = Catalog::builtin();
        let abroad = Trigger::Denied {
            seen: Some(Plmn::parse("262-01").unwrap()),
        };
        assert_eq!(
            next_move(&abroad, &c("tmobile"), &r("us-west"), cat, &[], &[]),
            Ok(Move::Region(r("eu-central")))
        );
        let home = Trigger::Denied {
            seen: Some(Plmn::parse("310-260").unwrap()),
        };
        assert_eq!(
            next_move(&home, &c("tmobile"), &r("us-west"), cat, &[], &[]),
            Ok(Move::Carrier(c("verizon")))
        );
        let unseen = Trigger::Denied { seen: None };
        assert_eq!(
            next_move(&unseen, &c("telekom-de"), &r("eu-central"), cat, &[], &[]),
            Ok(Move::Carrier(c("vodafone-de")))
        );
        let nowhere = Trigger::Denied {
            seen: Some(Plmn::parse("440-10").unwrap()),
        };
        assert_eq!(
            next_move(&nowhere, &c("tmobile"), &r("us-west"), cat, &[], &[]),
            Err(NoMove::NoRegionFor("440-10".into()))
        );
        assert_eq!(
            Move::Region(r("eu-central")).body(),
            serde_json::json!({"region": "eu-central"})
        );
    }

    /// A SIM of `carrier`, activated at `at`, replacing `replaces`.
    fn sim(iccid: &str, carrier: &str, at: u64, replaces: Option<&str>) -> crate::state::SimRecord {
        crate::state::SimRecord {
            iccid: iccid.into(),
            access_token: None,
            activation_code: None,
            region: Some("us-west".into()),
            carrier: Some(carrier.into()),
            network: None,
            activated_at: at,
            terminated: replaces.is_none(),
            origin: None,
            replaces: replaces.map(str::to_owned),
            data_mb: None,
        }
    }

    /// A switch of `iccid` signed at `at`, as the client records it.
    fn switch(iccid: &str, at: u64, status: crate::state::SpendStatus) -> crate::state::Spend {
        crate::state::Spend {
            payment_id: format!("pay_{iccid}_{at}"),
            purpose: format!(
                "{}{}",
                crate::client::switch_purpose_prefix(iccid),
                serde_json::json!({"carrier": "x"})
            ),
            at,
            amount_usdc: esim402_core::UsdcAmount::from_micros(420_000),
            network: "eip155:31337".into(),
            pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
            status,
            transaction: None,
        }
    }

    /// A radio weak on every carrier does not buy switch after switch: the walk skips carriers left within six
    /// hours, and a day allows three switches. Both are read from the state directory, so a watch started
    /// again counts what was switched before it, and a switch whose reply was lost (still pending) counts too.
    /// (Before, they were the running watch's memory only: a restart had three fresh switches and no carrier
    /// to avoid, and a pending switch was not counted.)
    #[test]
    fn switches_skip_carriers_just_left_and_stop_at_the_days_limit() {
        use crate::state::SpendStatus;
        let cat = Catalog::builtin();
        let weak = Trigger::Weak { dbm: -110 };
        let us = r("us-west");
        let day = 20_000 * 86_400;
        let mut state = crate::state::State::default();
        state
            .sims
            .insert("1".into(), sim("1", "tmobile", day - 86_400, None));
        let made = Switches::of(&state, "1");
        assert_eq!(made.check(day, MAX_SWITCHES_PER_DAY), Ok(()));
        assert!(made.avoided(day).is_empty());
        // tmobile → verizon → att; from att the walk would wrap to tmobile, left an hour ago.
        state
            .spends
            .push(switch("1", day + 3_500, SpendStatus::Settled));
        state
            .sims
            .insert("2".into(), sim("2", "verizon", day + 3_600, Some("1")));
        let made = Switches::of(&state, "2");
        assert_eq!(
            next_move(
                &weak,
                &c("verizon"),
                &us,
                cat,
                &[],
                &made.avoided(day + 7_200)
            ),
            Ok(Move::Carrier(c("att")))
        );
        state
            .spends
            .push(switch("2", day + 7_100, SpendStatus::Settled));
        state
            .sims
            .insert("3".into(), sim("3", "att", day + 7_200, Some("2")));
        let made = Switches::of(&state, "3");
        let avoided = made.avoided(day + 7_300);
        assert_eq!(avoided, [c("verizon"), c("tmobile")]);
        assert_eq!(
            next_move(&weak, &c("att"), &us, cat, &[], &avoided),
            Err(NoMove::TriedRecently("att".into())),
            "every other carrier was just tried"
        );
        assert_eq!(
            next_move(
                &weak,
                &c("att"),
                &us,
                cat,
                &[],
                &made.avoided(day + 3_600 + AVOID_SECS)
            ),
            Ok(Move::Carrier(c("tmobile"))),
            "six hours on, tmobile may be tried again"
        );
        assert_eq!(made.check(day + 30_001, MAX_SWITCHES_PER_DAY), Ok(()));
        // A third switch whose reply was lost: no new SIM yet, but it counts.
        state
            .spends
            .push(switch("3", day + 30_000, SpendStatus::Pending));
        let made = Switches::of(&state, "3");
        assert_eq!(
            made.check(day + 30_001, MAX_SWITCHES_PER_DAY),
            Err(NoMove::DailyLimit(3))
        );
        assert_eq!(made.check(day + 30_001, 4), Ok(()), "configurable");
        assert_eq!(
            made.check(day + 86_400, MAX_SWITCHES_PER_DAY),
            Ok(()),
            "a new UTC day"
        );
        // Another line's switches (another SIM of the state directory) are its own.
        assert_eq!(
            Switches::of(&state, "9").check(day + 30_001, MAX_SWITCHES_PER_DAY),
            Ok(())
        );
        // A border crossed still moves region (the daily limit applies to it as to any switch).
        let abroad = Trigger::Denied {
            seen: Some(Plmn::parse("262-01").unwrap()),
        };
        assert_eq!(
            next_move(&abroad, &c("tmobile"), &us, cat, &[], &[c("telekom-de")]),
            Ok(Move::Region(r("eu-central")))
        );
    }

    /// A line that loops back on itself (a hand-edited state) ends the walk instead of looping forever.
    #[test]
    fn a_cycle_in_the_line_ends_the_walk() {
        let mut state = crate::state::State::default();
        state
            .sims
            .insert("1".into(), sim("1", "tmobile", 10, Some("2")));
        state
            .sims
            .insert("2".into(), sim("2", "verizon", 20, Some("1")));
        let made = Switches::of(&state, "1");
        assert_eq!(made.avoided(30), [c("verizon")]);
    }
}
