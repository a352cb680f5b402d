//! The routes that sell nothing: invoices read back, SIMs and their lifecycle (the owner's credential first,
//! [`crate::auth`]), the SM-DP+'s callbacks (the carrier's credential), the x402 facilitator API for
//! third-party resource servers, the ledger (its export behind the admin token; the operator's runs are in [`crate::admin`]).

use esim402_core::{ApiError, ErrorKind};
use esim402_guest::wit;
use spin_sdk::http::{Request, Response};

use crate::{Reply, dispatch, from_wit, header, invoices, json, now, read_body, verifier};

/// `GET /health/ready`: every component loads its configuration as a request would (variables, the carrier
/// catalog and its receipt signers, keys). 200 `{"status":"ready"}`, else 503 with each failing component and
/// its error (which names the variable, never a secret's value): a readiness probe keeps a misconfigured
/// replica out of service rather than answering 500 to every request.
pub async fn ready() -> Result<Reply, ApiError> {
    // Together: a cold probe loads four configurations, and probes time out (Kubernetes: 1 s by default).
    use esim402_core::join::join2;
    let ((d, m), (v, i)) = join2(
        join2(dispatch::ready(), crate::metering::ready()),
        join2(verifier::ready(), invoices::ready()),
    )
    .await;
    let checks = [
        ("dispatch", d),
        ("metering", m),
        ("verifier", v),
        ("invoices", i),
    ];
    let mut problems: Vec<serde_json::Value> = checks
        .iter()
        .filter_map(|(component, r)| {
            let e = r.as_ref().err()?;
            Some(serde_json::json!({
                "component": component,
                "message": esim402_guest::convert::message(e),
            }))
        })
        .collect();
    // The gateway's own: the admin token (set but unusable), and wallet sign-ins' origins (an entry that is
    // not one is skipped, refusing its sign-ins).
    if let Err(message) = crate::admin::token().await {
        problems.push(serde_json::json!({ "component": "gateway", "message": message }));
    }
    match crate::public_origins().await {
        Ok(Some(list)) => {
            let origins = esim402_core::auth::siwx::origin_problems(list);
            if !origins.is_empty() {
                problems.push(serde_json::json!({
                    "component": "gateway",
                    "message": origins.join("; "),
                }));
            }
        }
        Ok(None) => {}
        // Wallet sign-ins are refused meanwhile (503).
        Err(e) => problems.push(serde_json::json!({
            "component": "gateway",
            "message": format!("the variable {} {}", e.name, e.problem),
        })),
    }
    Ok(if problems.is_empty() {
        json(200, r#"{"status":"ready"}"#.into())
    } else {
        json(
            503,
            serde_json::json!({ "status": "not_ready", "problems": problems }).to_string(),
        )
    })
}

pub async fn get_invoice(id: &str) -> Result<Reply, ApiError> {
    let invoice = crate::pay::load_invoice(id).await?;
    Ok(json(
        200,
        crate::convert::invoice_value(&invoice).to_string(),
    ))
}

/// `GET /v1/esim/{iccid}`: the SIM as stored, for its owner (no carrier calls: `POST …/refresh` finishes an
/// order left pending), never its activation code.
pub async fn get_sim(req: &Request, iccid: &str) -> Result<Reply, ApiError> {
    let sim = crate::auth::owner(req, iccid).await?;
    Ok(json(200, crate::convert::sim_value(&sim).to_string()))
}

/// `GET /v1/esim/{iccid}/activation`: the activation code, asked for on purpose and only with the payer's
/// wallet sign-in (an access token travels with the device; the wallet's key does not): how a payer whose
/// paid answer withheld the code (kernel `paid::hands_over_codes`) reads it.
pub async fn activation_code(req: &Request, iccid: &str) -> Result<Reply, ApiError> {
    let credential = crate::auth::credential(req, false).await?;
    if !matches!(credential, wit::Credential::Wallet(_)) {
        return Err(ApiError::new(
            ErrorKind::Unauthorized,
            "the activation code is given only to the payer's wallet sign-in (SIGN-IN-WITH-X), not to an access token",
        ));
    }
    let sim = crate::auth::open(iccid, credential).await?;
    // Only a SIM in service whose purchase is paid: a profile ordered for a payment that has not settled (an
    // order left pending, a crash before the settlement) or whose settlement failed is not the payer's yet.
    let in_service = matches!(sim.state, wit::SimState::Active | wit::SimState::Suspended);
    // A store or verifier fault is a fault (5xx, send it again), not a refusal; an invoice this deployment no
    // longer opens proves nothing.
    let paid = in_service
        && invoices::get(sim.invoice_id.clone(), now())
            .await
            .map_err(from_wit)?
            .is_some_and(|i| i.status == wit::InvoiceStatus::Paid);
    if !paid {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            "this SIM's activation code is given only while it is in service and its purchase is paid",
        ));
    }
    let profile = crate::convert::sim_value(&sim)["profile_state"].clone();
    Ok(json(
        200,
        serde_json::json!({
            "iccid": sim.iccid, "activation_code": sim.activation_code, "qr_code": sim.activation_code,
            "profile_state": profile,
        })
        .to_string(),
    ))
}

/// SIMs on one listing page unless `limit` says otherwise.
const DEFAULT_PAGE: u32 = 100;

/// `GET /v1/esim[?agent_id=…][&after=…][&limit=…]`: the SIMs the signed-in wallet paid for, oldest first, a
/// page at a time (a wallet sign-in: access tokens are per SIM), optionally only one agent's (`X-Agent-ID` at
/// activation). `next` is the `after` of the next page (`null` after the last); with `agent_id`, a page may
/// hold fewer than `limit` SIMs while more follow.
pub async fn list_sims(req: &Request) -> Result<Reply, ApiError> {
    let (mut label, mut after, mut limit) = (None, 0, DEFAULT_PAGE);
    esim402_core::query::params(req.uri().query(), "agent_id, after or limit", |k, v| {
        match k {
            "agent_id" => {
                label = Some(
                    esim402_core::order::parse_agent_label(v)
                        .map_err(|e| ApiError::invalid("agent_id", e))?,
                );
            }
            "after" => after = esim402_core::query::uint(k, v)?,
            "limit" => limit = esim402_core::query::limit(v, esim402_core::order::MAX_PAGE)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    // Why a sign-in that was sent failed is told; the generic "send a token or a sign-in" is not (a token
    // would not do here).
    let signed = crate::header(req, esim402_core::auth::siwx::HEADER).is_some();
    let listing_needs = |e: Option<ApiError>| {
        let why = e
            .filter(|_| signed)
            .map_or_else(String::new, |e| format!(" ({})", e.message));
        ApiError::new(
            ErrorKind::Unauthorized,
            format!(
                "listing SIMs needs the payer's SIGN-IN-WITH-X wallet sign-in (access tokens open one SIM each){why}"
            ),
        )
    };
    let credential = crate::auth::credential(req, false)
        .await
        .map_err(|e| match e.kind {
            ErrorKind::Unauthorized => listing_needs(Some(e)),
            _ => e,
        })?;
    let wit::Credential::Wallet(wallet) = credential else {
        return Err(listing_needs(None));
    };
    let page = dispatch::list_sims(wallet, label, after, limit)
        .await
        .map_err(from_wit)?;
    let list: Vec<serde_json::Value> = page.sims.iter().map(crate::convert::sim_value).collect();
    Ok(json(
        200,
        serde_json::json!({ "sims": list, "next": page.next }).to_string(),
    ))
}

/// `POST /v1/esim/{iccid}/refresh`: finish an order that outlived its request (the carrier is asked again).
/// Only for a paid order (a tx-hash payment's, whose invoice is marked paid before it orders): an `exact`
/// payment's order is finished by the same payment sent again, which settles it; finished here, it would be
/// a profile released for a payment that may never come (and one its authorization's expiry would have
/// withdrawn, dispatch `parking`).
pub async fn refresh(req: Request, iccid: &str) -> Result<Reply, ApiError> {
    crate::auth::owner_by(req, iccid).await?;
    let current = dispatch::get_sim(iccid.to_owned())
        .await
        .map_err(from_wit)?;
    if let Some(pending) = current.filter(|s| s.state == wit::SimState::Pending) {
        // Paid only: a refunded invoice's money is going back, and an invoice this deployment cannot open
        // (its key dropped from the keyring) proves nothing.
        let invoice = pending.invoice_id.as_str();
        let why = match invoices::get(invoice.to_owned(), now())
            .await
            .map_err(from_wit)?
            .map(|inv| inv.status)
        {
            Some(wit::InvoiceStatus::Paid) => None,
            Some(wit::InvoiceStatus::Refunded) => Some(format!(
                "the payment of SIM {iccid}'s order (invoice {invoice}) is owed back: there is nothing to finish"
            )),
            Some(wit::InvoiceStatus::Failed) => Some(format!(
                "the payment of SIM {iccid}'s order (invoice {invoice}) failed and ended the invoice: there is \
                 nothing to finish"
            )),
            Some(wit::InvoiceStatus::Expired) => Some(format!(
                "the order of SIM {iccid} waits for a payment of invoice {invoice}, which has expired: its order is \
                 withdrawn once its payment can no longer settle"
            )),
            Some(_) => Some(format!(
                "the order of SIM {iccid} waits for its payment (invoice {invoice}): send the same payment again to finish it"
            )),
            None => Some(format!(
                "the invoice of SIM {iccid}'s order ({invoice}) cannot be opened here (its key was retired): ask the operator"
            )),
        };
        if let Some(why) = why {
            return Err(ApiError::new(ErrorKind::Conflict, why));
        }
    }
    let sim = dispatch::resume_order(iccid.to_owned())
        .await
        .map_err(from_wit)?;
    Ok(json(200, crate::convert::sim_value(&sim).to_string()))
}

/// `POST /v1/esim/{iccid}/token`: a new access token (shown once); the previous one stops working.
pub async fn rotate_token(req: Request, iccid: &str) -> Result<Reply, ApiError> {
    let (_, by) = crate::auth::owner_by(req, iccid).await?;
    let token = dispatch::rotate_token(iccid.to_owned(), by)
        .await
        .map_err(from_wit)?;
    Ok(json(
        200,
        serde_json::json!({ "iccid": iccid, "access_token": token }).to_string(),
    ))
}

/// `POST /v1/esim/{iccid}/{suspend|resume|terminate}`: the SIM state machine; an invalid transition is 409.
/// Terminating revokes the access token (the owner's wallet still reads the SIM, its refunds and receipts);
/// terminating a terminated SIM answers it again with its refunds, owing any the first terminate did not.
pub async fn lifecycle(req: Request, iccid: &str, action: &str) -> Result<Reply, ApiError> {
    let (_, by) = crate::auth::owner_by(req, iccid).await?;
    let action = match action {
        "suspend" => wit::LifecycleAction::Suspend,
        "resume" => wit::LifecycleAction::Resume,
        _ => wit::LifecycleAction::Terminate,
    };
    let terminate = matches!(action, wit::LifecycleAction::Terminate);
    let sim = match dispatch::lifecycle(iccid.to_owned(), action, Some(by)).await {
        Ok(sim) => sim,
        // Terminating a terminated SIM again finishes what the first terminate may not have (it failed or was
        // cut off after the transition): the refunds of its unused data.
        Err(wit::Error::Conflict(msg)) if terminate => {
            match dispatch::get_sim(iccid.to_owned())
                .await
                .map_err(from_wit)?
            {
                Some(sim) if sim.state == wit::SimState::Terminated => sim,
                _ => return Err(from_wit(wit::Error::Conflict(msg))),
            }
        }
        Err(e) => return Err(from_wit(e)),
    };
    let mut body = crate::convert::sim_value(&sim);
    if terminate {
        // Repeats are safe: the account's first close fixes the shares and refunds are once per invoice.
        body["refunds"] = serde_json::Value::Array(crate::owing::finish_terminate(iccid).await?);
    }
    Ok(json(200, body.to_string()))
}

/// ES2+ `HandleDownloadProgressInfo` from an SM-DP+, authenticated by its carrier's callback credential
/// (`Authorization: Bearer …`): record the profile's progress, answer 204. A terminal failure that failed the
/// SIM gives its money back first ([`crate::failed`]); if that cannot be done now the SM-DP+ is not answered
/// 204, and sends the notification again.
pub async fn download_progress(req: Request) -> Result<Reply, ApiError> {
    if let Some(p) = header(&req, "x-admin-protocol")
        && !esim402_core::esim::es2::is_supported_admin_protocol(p)
    {
        return Err(ApiError::invalid(
            "X-Admin-Protocol",
            format!("unsupported ES2+ protocol version {p:?}"),
        ));
    }
    let credential = crate::bearer(&req).map(str::to_owned);
    let body = read_body(req).await?;
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::invalid("body", "body must be UTF-8 JSON"))?;
    if let Some(failed) = dispatch::download_progress(body, credential)
        .await
        .map_err(from_wit)?
    {
        crate::failed::give_back(&failed).await?;
    }
    Response::builder()
        .status(204)
        .header(
            esim402_core::esim::es2::ADMIN_PROTOCOL_HEADER,
            esim402_core::esim::es2::ADMIN_PROTOCOL,
        )
        .body(String::new())
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// x402 facilitator API for third-party resource servers: `POST /verify` and `POST /settle` with the v2 JSON
/// shapes. An invalid payment is HTTP 200 with `isValid: false` / `success: false` and a reason; a malformed
/// body is a 400 naming it.
pub async fn facilitator(req: Request, settle: bool) -> Result<Reply, ApiError> {
    let body = read_body(req).await?;
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::invalid("body", "body must be UTF-8 JSON"))?;
    let out = if settle {
        verifier::facilitator_settle(body).await
    } else {
        verifier::facilitator_verify(body).await
    }
    .map_err(from_wit)?;
    Ok(json(200, out))
}

/// `GET /v1/ledger/verify`: every shard's chain recomputed and compared with its stored head. 200 either
/// way; `ok: false` names the first problem (edited, removed, reordered or forged entry). First, usage events a
/// crash left held are parked (`meter::recover_held`; `recovered`: how many batches), and the outbox is drained.
pub async fn ledger_verify() -> Result<Reply, ApiError> {
    let recovered = crate::meter::recover_held().await;
    let body = invoices::ledger_verify().await.map_err(from_wit)?;
    if recovered == 0 {
        return Ok(json(200, body));
    }
    // `recovered`: usage batches whose events a crash left held, handed to the ledger by this check.
    let mut report: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| ApiError::internal(e.to_string()))?;
    report["recovered"] = recovered.into();
    Ok(json(200, report.to_string()))
}

/// `GET /v1/ledger?from=N&limit=M[&shard=S]` (admin token: entries name payers and amounts): entries as JSON
/// lines; without `shard`, every shard merged by time (`from` skips that many); with it, that shard from
/// sequence number `from`.
pub async fn ledger_export(req: &Request) -> Result<Reply, ApiError> {
    crate::admin::check(req).await?;
    let query = req.uri().query();
    let (mut from, mut limit, mut shard) = (0u64, 1000u32, None);
    esim402_core::query::params(query, "from, limit, shard", |k, v| {
        match k {
            "from" => from = esim402_core::query::uint(k, v)?,
            "limit" => limit = esim402_core::query::limit(v, 10_000)?,
            "shard" => {
                shard = Some(
                    u16::try_from(esim402_core::query::uint(k, v)?)
                        .map_err(|_| ApiError::invalid("shard", "shard must be 0-15"))?,
                );
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let body = invoices::ledger_export(shard, from, limit)
        .await
        .map_err(from_wit)?;
    Response::builder()
        .status(200)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))
}
