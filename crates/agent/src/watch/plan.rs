//! Where to move a SIM when the radio gives a reason ([`super::signal::Trigger`]), from the pinned carrier
//! catalog: a weak signal moves to the next carrier of the SIM's region (or of the operator's own preference
//! list); a refused attach on a network the region's roaming policy does not cover is a border crossed, so
//! the SIM moves to a region whose policy covers that network. Every move is paid, so a radio that is weak on
//! every carrier must not buy switch after switch: [`Switches`] caps them per UTC day and keeps the walk off a
//! carrier the SIM left within [`AVOID_SECS`]. Pure.

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

/// The switches a watch made: when (Unix seconds), and the carrier each one left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Switches {
    made: Vec<(u64, CarrierId)>,
}

impl Switches {
    /// A switch away from `left`, made at `at`.
    pub fn record(&mut self, at: u64, left: CarrierId) {
        // Older ones count for nothing any more (neither today's count nor the avoided carriers).
        self.made
            .retain(|(t, _)| t.saturating_add(86_400.max(AVOID_SECS)) > at);
        self.made.push((at, left));
    }

    /// Whether another switch may be made at `now`: fewer than `max_per_day` since 00:00 UTC.
    pub fn check(&self, now: u64, max_per_day: u32) -> Result<(), NoMove> {
        let day_start = now - now % 86_400;
        let today = self.made.iter().filter(|(t, _)| *t >= day_start).count();
        let today = u32::try_from(today).unwrap_or(u32::MAX);
        if today >= max_per_day {
            return Err(NoMove::DailyLimit(today));
        }
        Ok(())
    }

    /// The carriers left within [`AVOID_SECS`] of `now` (the walk skips them).
    pub fn avoided(&self, now: u64) -> Vec<CarrierId> {
        self.made
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

    /// A radio weak on every carrier does not buy switch after switch: the walk skips carriers left within six
    /// hours, and a day allows three switches. (Before, it went round the region's carriers every few ticks,
    /// each switch paid.)
    #[test]
    fn switches_skip_carriers_just_left_and_stop_at_the_days_limit() {
        let cat = Catalog::builtin();
        let weak = Trigger::Weak { dbm: -110 };
        let us = r("us-west");
        let day = 20_000 * 86_400;
        let mut made = Switches::default();
        assert_eq!(made.check(day, MAX_SWITCHES_PER_DAY), Ok(()));
        // tmobile → verizon → att; from att the walk would wrap to tmobile, left an hour ago.
        made.record(day + 3_600, c("tmobile"));
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
        made.record(day + 7_200, c("verizon"));
        let avoided = made.avoided(day + 7_300);
        assert_eq!(avoided, [c("tmobile"), c("verizon")]);
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
        made.record(day + 30_000, c("att"));
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
        // A border crossed still moves region (the daily limit applies to it as to any switch).
        let abroad = Trigger::Denied {
            seen: Some(Plmn::parse("262-01").unwrap()),
        };
        assert_eq!(
            next_move(&abroad, &c("tmobile"), &us, cat, &[], &[c("telekom-de")]),
            Ok(Move::Region(r("eu-central")))
        );
    }
}
