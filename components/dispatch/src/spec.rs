//! What an order asks for ([`OrderSpec`], validated from the WIT request or rebuilt from a stored SIM), which
//! catalog carriers may serve it ([`candidates`], [`serving`]), and the pending SIM record of a profile a
//! carrier allocated for it.

use esim402_core::esim::{Carrier, Eid, SimState};
use esim402_core::order::StoredSim;
use esim402_core::{CarrierId, DataMb, Region};
use esim402_guest::convert::{internal, invalid};
use esim402_guest::wit;

use crate::bindings::exports::esim402::dispatch::dispatch::Withdrawal;
use crate::config::Config;

/// A validated order.
pub struct OrderSpec {
    pub region: Region,
    pub data_mb: DataMb,
    pub carrier: Option<CarrierId>,
    pub eid: Option<Eid>,
    pub allow_failover: bool,
    pub replaces: Option<String>,
    /// The wallet that paid (the SIM's owner).
    pub owner: Option<esim402_core::chain::Address>,
    /// The agent's label.
    pub label: Option<String>,
    /// When a pending order is withdrawn (kernel `order::parked`, [`crate::parking::pending`]); `None`: never.
    pub withdraw: Option<Withdraw>,
}

impl OrderSpec {
    pub fn parse(r: &wit::ActivationRequest) -> Result<Self, wit::Error> {
        Ok(Self {
            region: Region::parse(&r.region).map_err(|e| invalid("region", e.0))?,
            data_mb: DataMb::new(r.data_mb.into()).map_err(|e| invalid("data_mb", e.0))?,
            carrier: r
                .carrier
                .as_deref()
                .map(|c| CarrierId::parse(c).map_err(|e| invalid("carrier", e.0)))
                .transpose()?,
            eid: r
                .eid
                .as_deref()
                .map(|e| Eid::parse(e).map_err(|e| invalid("eid", e.to_string())))
                .transpose()?,
            allow_failover: r.carrier.is_none() || r.allow_failover,
            replaces: None,
            owner: None,
            label: None,
            withdraw: None,
        })
    }
}

/// The carriers an order may use, first choice first.
pub fn candidates<'c>(cfg: &'c Config, spec: &OrderSpec) -> Result<Vec<&'c Carrier>, wit::Error> {
    serving(
        cfg,
        &spec.region,
        spec.carrier.as_ref(),
        spec.allow_failover,
    )
}

/// The catalog's carriers for `region` (the requested one first), with catalog errors as input errors.
pub fn serving<'c>(
    cfg: &'c Config,
    region: &Region,
    requested: Option<&CarrierId>,
    allow_failover: bool,
) -> Result<Vec<&'c Carrier>, wit::Error> {
    use esim402_core::esim::CatalogError as E;
    cfg.catalog
        .candidates(region, requested, allow_failover)
        .map_err(|e| match e {
            E::UnknownRegion(_) => invalid("region", e.to_string()),
            E::CarrierNotInRegion { .. } => invalid("carrier", e.to_string()),
            other => internal(other),
        })
}

impl OrderSpec {
    /// The SIM record of a profile `carrier` allocated for this order (paid by `invoice_id`), not yet confirmed,
    /// with the first token of this record (bound to its ICCID and invoice: kernel `auth::token`). An order
    /// is refused without the token key before anything is allocated ([`Config::signers_usable`]); were it
    /// missing here anyway, the record would carry no token (nothing opens it but the owner's wallet).
    pub fn pending_sim(
        &self,
        cfg: &Config,
        invoice_id: &str,
        carrier: &str,
        iccid: &str,
        now: u64,
    ) -> StoredSim {
        let region = cfg.catalog.region(&self.region);
        StoredSim {
            iccid: iccid.to_owned(),
            carrier: carrier.to_owned(),
            region: self.region.to_string(),
            state: SimState::Pending,
            profile_state: None,
            activation_code: None,
            eid: self.eid.as_ref().map(|e| e.as_str().to_owned()),
            roaming: region.map(|r| r.roaming.clone()).unwrap_or_default(),
            data_mb: self.data_mb.get(),
            invoice_id: invoice_id.to_owned(),
            created_at: now,
            failovers: Vec::new(),
            replaces: self.replaces.clone(),
            replaced_by: None,
            access: esim402_core::auth::SimAccess {
                owner: self.owner,
                token: cfg
                    .token_key()
                    .ok()
                    .map(|key| crate::access::initial_state(key, iccid, invoice_id)),
            },
            label: self.label.clone(),
            holds: Default::default(),
            switching: None,
            download_failure: None,
        }
    }
}

/// When an order left pending is withdrawn (the WIT `withdrawal`).
#[derive(Debug, Clone, Copy)]
pub enum Withdraw {
    /// Its payment can no longer settle after then (unix seconds): any sweep withdraws it, nothing owed.
    UnsettledAfter(u64),
    /// Its money moved (ordered at `since`): the operator's run withdraws it once it stayed pending
    /// `paid_order_pending_secs`, and owes it back.
    Paid { since: u64 },
}

impl Withdraw {
    /// The WIT `withdrawal` of an order placed at `now`.
    pub fn of(w: Withdrawal, now: u64) -> Self {
        match w {
            Withdrawal::UnsettledAfter(at) => Self::UnsettledAfter(at),
            Withdrawal::Paid => Self::Paid { since: now },
        }
    }
}
