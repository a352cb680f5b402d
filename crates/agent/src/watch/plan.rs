//! Where to move a SIM when the radio gives a reason ([`super::signal::Trigger`]), from the pinned carrier
//! catalog: a weak signal moves to the next carrier of the SIM's region (or of the operator's own preference
//! list); a refused attach on a network the region's roaming policy does not cover is a border crossed, so
//! the SIM moves to a region whose policy covers that network. Pure.

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
}

/// Decide the move for `trigger` of a SIM on `carrier` in `region`; `preferred` (may be empty) overrides the
/// region's carrier order.
pub fn next_move(
    trigger: &Trigger,
    carrier: &CarrierId,
    region: &Region,
    catalog: &Catalog,
    preferred: &[CarrierId],
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
    // The carrier after the current one, wrapping around: repeated moves walk the whole list.
    let start = order.iter().position(|c| c == carrier).map_or(0, |i| i + 1);
    (0..order.len())
        .map(|k| &order[(start + k) % order.len()])
        .find(|c| *c != carrier)
        .map(|c| Move::Carrier(c.clone()))
        .ok_or_else(|| NoMove::NoOtherCarrier(carrier.to_string()))
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
            next_move(&weak, &c("tmobile"), &us, cat, &[]),
            Ok(Move::Carrier(c("verizon")))
        );
        assert_eq!(
            next_move(&weak, &c("att"), &us, cat, &[]),
            Ok(Move::Carrier(c("tmobile"))),
            "wraps around"
        );
        assert_eq!(
            next_move(&weak, &c("verizon"), &us, cat, &[c("att"), c("verizon")]),
            Ok(Move::Carrier(c("att"))),
            "the operator's order"
        );
        assert_eq!(
            next_move(&weak, &c("tmobile"), &us, cat, &[c("tmobile")]),
            Err(NoMove::NoOtherCarrier("tmobile".into()))
        );
        assert_eq!(
            next_move(&weak, &c("tmobile"), &r("mars"), cat, &[]),
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
            next_move(&abroad, &c("tmobile"), &r("us-west"), cat, &[]),
            Ok(Move::Region(r("eu-central")))
        );
        let home = Trigger::Denied {
            seen: Some(Plmn::parse("310-260").unwrap()),
        };
        assert_eq!(
            next_move(&home, &c("tmobile"), &r("us-west"), cat, &[]),
            Ok(Move::Carrier(c("verizon")))
        );
        let unseen = Trigger::Denied { seen: None };
        assert_eq!(
            next_move(&unseen, &c("telekom-de"), &r("eu-central"), cat, &[]),
            Ok(Move::Carrier(c("vodafone-de")))
        );
        let nowhere = Trigger::Denied {
            seen: Some(Plmn::parse("440-10").unwrap()),
        };
        assert_eq!(
            next_move(&nowhere, &c("tmobile"), &r("us-west"), cat, &[]),
            Err(NoMove::NoRegionFor("440-10".into()))
        );
        assert_eq!(
            Move::Region(r("eu-central")).body(),
            serde_json::json!({"region": "eu-central"})
        );
    }
}
