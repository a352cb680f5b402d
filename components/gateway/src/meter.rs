//! The metered-data routes: receipt ingest (`POST /v1/usage`), the quota request with its low-balance 402
//! and paid top-up (`POST /v1/esim/{iccid}/data`), and the balance, usage and receipt queries. Rules are the
//! kernel's (`esim402_core::usage`); the metering component keeps the balances.

use esim402_core::usage::account::{TOP_UP_SIZES_MB, top_up_needed_mb};
use esim402_core::usage::ingest::MAX_BATCH_BODY_BYTES;
use esim402_core::usage::quota::QuotaRequest;
use esim402_core::{ApiError, InvoiceId, UsdcAmount};
use esim402_guest::wit;
use serde_json::{Value, json};
use spin_sdk::http::Request;

use crate::pay::{self, Order, Proof};
use crate::purchase::{payment_required, render, request_fingerprint};
use crate::{Reply, dispatch, from_wit, json, metering, now, public_resource_url, read_body};

/// `POST /v1/usage`: a batch of signed receipts (`{"receipts": [...]}`, at most 1 000). 200 with a result per
/// receipt; SIMs out of balance are held (suspended) by metering's balance hold, in its epoch order. The
/// batch's ledger events stay held by metering until logged (then released): see [`recover_held`].
pub async fn ingest(req: Request) -> Result<Reply, ApiError> {
    let body = crate::read_body_up_to(req, MAX_BATCH_BODY_BYTES).await?;
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::invalid("body", "body must be UTF-8 JSON"))?;
    // One time for the charges and their ledger events: a crash between them leaves the events held with it,
    // and logging them again finds the first append's entries by content, time included.
    let at = now();
    let out = metering::ingest(body, at).await.map_err(from_wit)?;
    if crate::pay::log_events_at(at, out.events, false).await
        && let Some(held) = out.held
        && let Err(e) = metering::release_held(vec![held]).await
    {
        eprintln!(
            "gateway: releasing a logged batch's held events failed: {e:?}; logged again later, once"
        );
    }
    for hold in out.holds {
        let iccid = hold.iccid.clone();
        if let Err(e) = dispatch::set_balance_hold(hold).await {
            eprintln!(
                "gateway: holding {iccid} (balance exhausted) failed: {e:?}; the next batch retries"
            );
        }
    }
    Ok(json(200, out.report))
}

/// Log the events of charged batches whose append a crash (or a failed release) left held, once their requests
/// are surely over (metering `held-due`): parked in the ledger's outbox, which the verify that follows drains,
/// appending only what did not land; then released. How many batches were parked. A failure is reported and
/// left for the next verify.
pub async fn recover_held() -> usize {
    let due = match metering::held_due(now()).await {
        Ok(due) if due.is_empty() => return 0,
        Ok(due) => due,
        Err(e) => {
            eprintln!("gateway: reading held usage events failed: {e:?}");
            return 0;
        }
    };
    let mut ids: Vec<String> = due.iter().map(|h| h.id.clone()).collect();
    match crate::invoices::park_held(due).await {
        // The rest did not fit the outbox: the next verify, once the drain has made room.
        Ok(parked) => ids.truncate(usize::try_from(parked).unwrap_or(usize::MAX)),
        Err(e) => {
            eprintln!(
                "gateway: parking {} held usage batches failed: {e:?}",
                ids.len()
            );
            return 0;
        }
    }
    if let Err(e) = metering::release_held(ids.clone()).await {
        eprintln!(
            "gateway: releasing {} recovered usage batches failed: {e:?}",
            ids.len()
        );
    }
    ids.len()
}

/// `POST /v1/esim/{iccid}/data`: the next quota (asked by the owner, or by the SIM's carrier with its
/// credential, as online charging does). Above the low-water mark, 200 with the grant; at it or below — or whenever
/// the request names `top_up_mb`, a purchase — 402 with top-up options and an x402 challenge for the first
/// (`top_up_mb`, else the smallest standard size raised to the most data the minimum invoice buys and to what a
/// SIM in debt needs). The same request sent again with a payment pays that top-up, credits it once and gets
/// its grant. Paying is never gated: a request with a payment, or one without a credential
/// that names `top_up_mb`, is a top-up anyone may buy for any SIM (its 402 shows the price, not the balance).
pub async fn data(iccid: &str, req: Request) -> Result<Reply, ApiError> {
    // The credential is read now, but used (a wallet sign-in's nonce claimed) only once the body is known
    // good: a malformed request must not use up the caller's sign-in.
    let credential = crate::auth::credential(&req, true).await;
    let proof = Proof::from_headers(req.headers())?;
    let invoice_header = pay::invoice_header(req.headers())?;
    let url = public_resource_url(&req).await;
    let body = read_body(req).await?;
    let QuotaRequest {
        quota,
        top_up_mb,
        invoice_id: body_invoice,
        payer,
    } = QuotaRequest::parse(&body)?;
    // Checked before the credential is used (a malformed request must not use up a sign-in).
    let body_invoice = body_invoice
        .map(|id| {
            InvoiceId::parse(&id).map_err(|_| ApiError::invalid("invoice_id", "not an invoice id"))
        })
        .transpose()?;
    // The SIM's carrier asks for the quota its network moves data against (online charging): its grants are
    // reserved. The owner's are advice (nothing reserved).
    let by_carrier = matches!(credential, Ok(wit::Credential::Carrier(_)));
    let owner = match credential {
        Ok(c) => crate::auth::open(iccid, c).await,
        Err(e) => Err(e),
    };
    let payer = &payer;
    // The top-ups to offer, priced (kernel `PriceBook::top_up_offers`): the one asked for first, else the
    // smallest standard size raised to the most data the minimum invoice buys, and to what the SIM's balance
    // (`Some`: its remaining and reserved bytes) needs to be granted quota again.
    let offers = |balance: Option<(i64, u64)>| async move {
        let at_least = balance.map_or(0, |(left, held)| top_up_needed_mb(left, held));
        let quotes = dispatch::quote_top_ups(iccid.to_owned(), top_up_mb, at_least)
            .await
            .map_err(from_wit)?;
        if quotes.is_empty() {
            return Err(ApiError::internal("no top-up is offered for this SIM"));
        }
        Ok::<_, ApiError>(quotes)
    };
    // Seal the invoice for a quoted top-up (nothing is stored).
    let seal = |quote: &wit::Quote| {
        let purchase = wit::Purchase::TopUp(wit::TopUpRequest {
            iccid: iccid.to_owned(),
            data_mb: quote.data_mb,
            payer: payer.clone(),
        });
        let amount = quote.amount;
        crate::issue(purchase, amount, None)
    };

    if let Some(proof) = proof {
        let named = match pay::named_invoice(&proof, body_invoice, invoice_header) {
            Ok(named) => named,
            Err(e) => return pay::refused_unpaid(&proof, e).await.map(|r| render(&r)),
        };
        let invoice = pay::invoice_for(&proof, named.as_ref(), || async {
            // A payment naming no invoice (x402 v1): the first offer, as the 402 made it (from the balance; a SIM
            // metered nowhere has none, a store fault is answered, never guessed around).
            let owed = match metering::get_balance(iccid.to_owned()).await {
                Ok(b) => Some((b.remaining_bytes, b.reserved_bytes)),
                Err(wit::Error::NotFound(_)) => None,
                Err(e) => return Err(from_wit(e)),
            };
            seal(&offers(owed).await?[0]).await
        })
        .await?;
        // Any top-up invoice of this SIM may be paid here: the order is what the invoice says.
        let (data_mb, payer) = match &invoice.purchase {
            wit::Purchase::TopUp(t) if t.iccid == iccid => (t.data_mb, t.payer.clone()),
            _ => (top_up_mb.unwrap_or(TOP_UP_SIZES_MB[0]), payer.clone()),
        };
        // A request that names its size must be the one the invoice was issued for (as an activation's must):
        // before, a 10 MB invoice paid with `top_up_mb: 50` answered 200, and the client believed it had 50 MB.
        // Refused before the payment is looked at: `charged: false` when that is sure, as an activation's.
        if let Some(asked) = top_up_mb.filter(|mb| *mb != data_mb) {
            let e = ApiError::new(
                esim402_core::ErrorKind::Conflict,
                format!(
                    "invoice {} pays for a {data_mb} MB top-up, not the {asked} MB this request asks for: send the \
                     request it was issued for (or ask for a new invoice)",
                    invoice.id
                ),
            );
            return pay::refused_unpaid_for(&proof, Some(&invoice), e).map(|r| render(&r));
        }
        let order = Order::TopUp {
            iccid: iccid.to_owned(),
            data_mb,
            payer,
            quota,
            // The balance and the grant the retried request asked for, for its owner or carrier while the SIM
            // is in service (no grant for one its owner suspended).
            show_balance: owner.as_ref().is_ok_and(in_service),
            by_carrier,
        };
        let fingerprint = request_fingerprint(&format!("data/{iccid}"), &body, &proof);
        let stored = pay::pay(invoice, order, proof, &url, fingerprint).await?;
        return Ok(render(&stored));
    }

    let sim = match owner {
        Ok(sim) => sim,
        Err(e) => {
            let Some(mb) = top_up_mb else {
                return Err(e);
            };
            // Not naming the new SIM: this caller did not prove it manages the SIM (kernel `switched_away`).
            if pay::switched_to(iccid).await.map_err(from_wit)?.is_some() {
                return Err(ApiError::new(
                    esim402_core::ErrorKind::Conflict,
                    esim402_core::esim::switched_away(iccid),
                ));
            }
            // `mb` is the one asked for, so the first offer.
            let Some(q) = offers(None).await?.into_iter().find(|q| q.data_mb == mb) else {
                return Err(ApiError::internal("the top-up asked for was not priced"));
            };
            let invoice = seal(&q).await?;
            let extra = json!({
                "iccid": iccid, "status": "top_up",
                "top_up_options": [{ "data_mb": q.data_mb, "amount_usdc": UsdcAmount::from_micros(q.amount) }],
                "invoice_id": invoice.id,
            });
            return payment_required(&invoice, &q, &url, Some(extra));
        }
    };
    // A SIM in service asked for quota: metering grants it (reserving it for the carrier, kernel
    // `usage::grant`). A grant of nothing leaves the balance below (low, or closed) to answer as any other.
    let balance = if top_up_mb.is_none() && in_service(&sim) {
        let granted = metering::grant(iccid.to_owned(), quota, by_carrier, now())
            .await
            .map_err(|e| crate::convert::unmetered(&sim, e))?;
        if granted.bytes > 0 {
            return Ok(json(200, crate::convert::quota_value(&granted).to_string()));
        }
        granted.balance
    } else {
        metering::get_balance(iccid.to_owned())
            .await
            .map_err(|e| crate::convert::unmetered(&sim, e))?
    };
    if balance.closed {
        let why = match (&balance.switched_to, sim.state) {
            (Some(to), _) => format!(
                "SIM {iccid} was switched to SIM {to}: its balance moved there, and it is granted no quota"
            ),
            (None, wit::SimState::Failed) => format!("SIM {iccid} failed: it takes no quota"),
            (None, _) => format!("SIM {iccid} is terminated"),
        };
        return Err(ApiError::new(esim402_core::ErrorKind::Conflict, why));
    }
    // `low` is the kernel's decision (`decide_quota` at the low-water mark or below, or suspended for balance). A
    // request that names `top_up_mb` buys that top-up whatever the balance (a proactive purchase).
    // (A SIM in service that was granted nothing is low: metering's `low` and its grant are one decision.)
    if !balance.low && top_up_mb.is_none() {
        // Suspend and terminate are recorded here only (ES2+ cannot push them to the network), so the grant
        // is where they stop data: none for a SIM not in service (a top-up may still be bought).
        let why = match sim.state {
            wit::SimState::Suspended if sim.held_by_owner => "suspended by its owner",
            state => crate::convert::sim_state(state),
        };
        return Err(ApiError::new(
            esim402_core::ErrorKind::Conflict,
            format!("SIM {iccid} is {why}: no quota is granted"),
        ));
    }
    let quotes = offers(Some((balance.remaining_bytes, balance.reserved_bytes))).await?;
    let options = quotes
        .iter()
        .map(|q| json!({ "data_mb": q.data_mb, "amount_usdc": UsdcAmount::from_micros(q.amount) }))
        .collect();
    // The challenge is for the first option (the one asked for).
    let invoice = seal(&quotes[0]).await?;
    let mut extra = crate::convert::balance_value(&balance);
    extra["status"] = Value::String(if balance.low { "low_balance" } else { "top_up" }.into());
    extra["top_up_options"] = Value::Array(options);
    extra["invoice_id"] = Value::String(invoice.id.clone());
    payment_required(&invoice, &quotes[0], &url, Some(extra))
}

/// `GET /v1/esim/{iccid}/balance` (the owner's).
pub async fn balance(req: &Request, iccid: &str) -> Result<Reply, ApiError> {
    let sim = crate::auth::owner(req, iccid).await?;
    let b = metering::get_balance(iccid.to_owned())
        .await
        .map_err(|e| crate::convert::unmetered(&sim, e))?;
    Ok(json(200, crate::convert::balance_value(&b).to_string()))
}

/// `GET /v1/esim/{iccid}/usage?granularity=hour|day&group_by=plmn` (the owner's).
pub async fn usage(req: &Request, iccid: &str) -> Result<Reply, ApiError> {
    // The query is checked before the credential is used (a malformed request must not use up a sign-in).
    let query = req.uri().query();
    let (mut granularity, mut by_plmn) = ("day".to_owned(), false);
    esim402_core::query::params(query, "granularity, group_by", |k, v| {
        match k {
            "granularity" => granularity = v.to_owned(),
            "group_by" if v == "plmn" => by_plmn = true,
            "group_by" => return Err(ApiError::invalid("group_by", "group_by must be plmn")),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if esim402_core::usage::report::Granularity::parse(&granularity).is_none() {
        return Err(ApiError::invalid(
            "granularity",
            "granularity must be hour or day",
        ));
    }
    let sim = crate::auth::owner(req, iccid).await?;
    let rows = metering::usage(iccid.to_owned(), granularity.clone(), by_plmn)
        .await
        .map_err(|e| crate::convert::unmetered(&sim, e))?;
    let rows: Value = serde_json::from_str(&rows).map_err(|e| ApiError::internal(e.to_string()))?;
    let body = json!({ "iccid": iccid, "granularity": granularity, "group_by": by_plmn.then_some("plmn"), "usage_records": rows });
    Ok(json(200, body.to_string()))
}

/// `GET /v1/esim/{iccid}/receipts?from=N&limit=M` (the owner's): the SIM's receipt log with each receipt's state
/// (accepted or disputed, and why).
pub async fn receipts(req: &Request, iccid: &str) -> Result<Reply, ApiError> {
    let query = req.uri().query();
    let (mut from, mut limit) = (1u64, 100u32);
    esim402_core::query::params(query, "from, limit", |k, v| {
        match k {
            "from" => from = esim402_core::query::uint(k, v)?,
            "limit" => limit = esim402_core::query::limit(v, 1_000)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let sim = crate::auth::owner(req, iccid).await?;
    let log = metering::receipts(iccid.to_owned(), from, limit)
        .await
        .map_err(|e| crate::convert::unmetered(&sim, e))?;
    let log: Value = serde_json::from_str(&log).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json(
        200,
        json!({ "iccid": iccid, "from": from, "receipts": log }).to_string(),
    ))
}

/// Whether `sim` may be granted quota: an active one, or one suspended for balance alone (its balance decides:
/// a top-up whose release has not reached the SIM yet must not leave it refused). Not one its owner suspended,
/// a terminated or failed one, or a pending one (no profile in use yet).
fn in_service(sim: &wit::Sim) -> bool {
    match sim.state {
        wit::SimState::Active => true,
        wit::SimState::Suspended => !sim.held_by_owner,
        wit::SimState::Pending | wit::SimState::Terminated | wit::SimState::Failed => false,
    }
}
