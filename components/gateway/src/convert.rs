//! What the gateway renders and parses itself: request bodies into WIT values, WIT values into the seed's
//! JSON (the kernel ↔ WIT conversions are `esim402_guest::convert`'s).

use esim402_core::{ActivationRequest, ApiError};
use esim402_guest::convert;
use esim402_guest::wit;
use serde_json::Value;

pub fn activation_to_wit(r: &ActivationRequest) -> wit::ActivationRequest {
    wit::ActivationRequest {
        region: r.region.to_string(),
        data_mb: r.data_mb.get(),
        carrier: r.carrier.as_ref().map(ToString::to_string),
        eid: r.eid.clone(),
        payer: r.payer.map(|a| a.to_checksum(None)),
        networks: r.networks.iter().map(ToString::to_string).collect(),
        allow_failover: r.allow_failover,
    }
}

/// A switch body: exactly one of `{"carrier": "…"}` or `{"region": "…"}`.
pub fn switch_target(body: &[u8]) -> Result<wit::SwitchTarget, ApiError> {
    let value = esim402_core::json_body::parse(body)
        .map_err(|e| ApiError::invalid("body", format!("body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid("body", "body must be a JSON object"));
    };
    if let Some(k) = obj.keys().find(|k| *k != "carrier" && *k != "region") {
        return Err(ApiError::invalid(
            k.as_str(),
            format!("unknown field {k:?}; expected \"carrier\" or \"region\""),
        ));
    }
    match (obj.get("carrier"), obj.get("region")) {
        (Some(Value::String(c)), None) => Ok(wit::SwitchTarget::Carrier(c.clone())),
        (None, Some(Value::String(r))) => Ok(wit::SwitchTarget::Region(r.clone())),
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "body",
            "give either carrier or region, not both",
        )),
        (Some(_), None) => Err(ApiError::invalid("carrier", "carrier must be a string")),
        (None, Some(_)) => Err(ApiError::invalid("region", "region must be a string")),
        (None, None) => Err(ApiError::invalid("body", "carrier or region is required")),
    }
}

/// The invoice as the seed's JSON (`GET /v1/invoices/{id}`).
pub fn invoice_value(inv: &wit::Invoice) -> Value {
    let Some(core) = convert::invoice(inv) else {
        return Value::Object(Default::default());
    };
    serde_json::to_value(&core).unwrap_or(Value::Null)
}

/// A SIM state's name on the wire.
pub fn sim_state(state: wit::SimState) -> &'static str {
    match state {
        wit::SimState::Pending => "pending",
        wit::SimState::Active => "active",
        wit::SimState::Suspended => "suspended",
        wit::SimState::Terminated => "terminated",
        wit::SimState::Failed => "failed",
    }
}

/// A SIM as JSON (the activation code is not included: it is only ever shown to the payer, once paid).
pub fn sim_value(s: &wit::Sim) -> Value {
    let state = sim_state(s.state);
    let profile = match s.profile_state {
        wit::ProfileState::Ordered => "ordered",
        wit::ProfileState::Enabled => "enabled",
        wit::ProfileState::Deleted => "deleted",
        wit::ProfileState::Released => "released",
        wit::ProfileState::Downloaded => "downloaded",
        wit::ProfileState::Installed => "installed",
        wit::ProfileState::Error => "error",
    };
    serde_json::json!({
        "iccid": s.iccid, "carrier": s.carrier, "region": s.region, "state": state, "profile_state": profile,
        "eid": s.eid, "data_mb": s.data_mb, "invoice_id": s.invoice_id, "created_at": s.created_at,
        "failovers": s.failovers, "replaces": s.replaces, "replaced_by": s.replaced_by,
        "owner": s.owner, "agent_id": s.label,
        "held_by_owner": s.held_by_owner, "held_for_balance": s.held_for_balance,
        "roaming": { "allow": s.roaming.allow, "deny": s.roaming.deny, "countries": s.roaming.countries },
    })
}

/// A balance as JSON: bytes and whole KB left (`remaining_kb` rounds down), credited and used, and the bytes
/// quota grants hold that usage has not reported yet (`reserved_bytes`: not grantable again meanwhile).
pub fn balance_value(b: &wit::Balance) -> Value {
    use esim402_core::usage::account::BYTES_PER_KB;
    let left = u64::try_from(b.remaining_bytes.max(0)).unwrap_or(0);
    serde_json::json!({
        "iccid": b.iccid,
        "remaining_kb": left / BYTES_PER_KB,
        "remaining_bytes": b.remaining_bytes,
        "credited_bytes": b.credited_bytes,
        "used_bytes": b.used_bytes,
        "reserved_bytes": b.reserved_bytes,
        "low": b.low,
        "suspended_for_balance": b.suspended_for_balance,
        "closed": b.closed,
        "switched_to": b.switched_to,
    })
}

/// The answer to a quota request metering decided (`metering::grant`: its bytes reserved, kernel
/// `usage::grant`): the balance after it, and what was granted until when (`low_balance` and 0 if nothing).
pub fn quota_value(g: &crate::metering::Granted) -> Value {
    use esim402_core::usage::account::BYTES_PER_KB;
    let mut v = balance_value(&g.balance);
    let status = if g.bytes > 0 {
        "granted"
    } else {
        "low_balance"
    };
    v["status"] = Value::String(status.into());
    v["granted_bytes"] = g.bytes.into();
    v["granted_kb"] = (g.bytes / BYTES_PER_KB).into();
    if g.bytes > 0 {
        v["valid_until"] = g.valid_until.into();
    }
    v
}

/// Metering's error for `sim`, which its caller has opened: an account not found is a 409 naming why (its
/// payment not credited yet: a pending order, or a tx-hash activation finished by `refresh` whose proof was not
/// sent again; or a SIM that ended before any credit), not the 404 that tells a caller the SIM is not theirs.
pub fn unmetered(sim: &wit::Sim, e: wit::Error) -> ApiError {
    let iccid = &sim.iccid;
    let why = match sim.state {
        wit::SimState::Terminated | wit::SimState::Failed => format!(
            "SIM {iccid} is {}: it has no data balance",
            sim_state(sim.state)
        ),
        wit::SimState::Pending => {
            format!("SIM {iccid} is still being ordered: it has no data balance yet")
        }
        wit::SimState::Active | wit::SimState::Suspended => format!(
            "SIM {iccid} has no data balance yet: its payment is not credited (send the paid request again to \
             finish it)"
        ),
    };
    match e {
        wit::Error::NotFound(_) => ApiError::new(esim402_core::ErrorKind::Conflict, why),
        e => convert::api_error(e),
    }
}
