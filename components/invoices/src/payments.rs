//! The payment record of each invoice (`invoice/<id>`, kernel `paid`): claimed by the request that drives a
//! payment, ended with its answer, marked paid once money moved, marked refunded when it is owed back. Plus
//! the bindings that let a payment be recognised again: `payment-identifier` ids (`payid/<id>`) and v1
//! payments (`x402/v1/<fingerprint>`), which name no invoice of their own.

use esim402_core::paid::{self, Decision, End, PaymentIdBinding, PaymentRecord, RecordError};
use esim402_core::store::keys;
use esim402_guest::convert::{self, internal, kv_err, kv_fault};
use esim402_guest::kv::{self, KvError};
use esim402_guest::{util, wit};

use crate::terms;

/// Why a claim was not written.
enum Refused {
    /// What the kernel decided instead of driving.
    Decided(Decision),
    /// The id is not this store's for the payment the record would hold (kernel `Opened::ours_at`).
    NotOurs,
}

/// `begin-payment`: claim the record for `fingerprint` (new holder token), or say what to answer instead. An
/// id not issued here, or one only a legacy key opens that no payment of this store holds, is no invoice (404).
pub async fn begin(
    invoice_id: &str,
    fingerprint: &str,
    replay_allowed: bool,
    now: u64,
) -> Result<wit::Begin, wit::Error> {
    let id = terms::parse_id(invoice_id)?;
    let no_invoice = || wit::Error::NotFound(format!("no invoice {invoice_id}"));
    let opened = terms::open(&id).await?.ok_or_else(no_invoice)?;
    let holder = util::holder_token().map_err(internal)?;
    let shard_count = ledger_start(invoice_id).await;
    let decided = kv::update_json_with(
        &keys::invoice(invoice_id),
        |current: Option<PaymentRecord>| {
            // Asked of the record this claim replaces, not of the one `get` read before: a legacy id's record
            // released in between would otherwise let a new payment claim it.
            let status = paid::status(current.as_ref(), opened.terms.expires_at, now);
            if !opened.ours_at(status) {
                return Err(Box::new(Refused::NotOurs));
            }
            let first = current.is_none();
            let resumed = paid::resumes(current.as_ref());
            match paid::decide(current.as_ref(), fingerprint, &holder, replay_allowed, now) {
                Decision::Drive(next) => Ok((next.since(shard_count), (first, resumed))),
                // Boxed: a stored answer is large, and the error travels through every retry of the update.
                other => Err(Box::new(Refused::Decided(other))),
            }
        },
    )
    .await;
    match decided {
        Ok((record, (first, resumed))) => Ok(wit::Begin::Drive(wit::Driver {
            holder,
            first,
            resumed,
            lease_until: record.lease_until,
        })),
        Err(KvError::Refused(refused)) => match *refused {
            Refused::NotOurs => Err(no_invoice()),
            Refused::Decided(Decision::Replay(stored)) => {
                Ok(wit::Begin::Replay(convert::response_to_wit(&stored)))
            }
            Refused::Decided(Decision::AlreadySettled(msg)) => {
                Ok(wit::Begin::Conflict(msg.to_owned()))
            }
            Refused::Decided(Decision::Drive(_)) => Err(internal("payment claim refused itself")),
        },
        Err(e) => Err(kv_fault("payment record", e)),
    }
}

/// Where the invoice's ledger entries will start, kept by its first claim (kernel `PaymentRecord::since`): its
/// shard's head count. A head that cannot be read (a store fault, a head that does not decode) does not stop the
/// payment (nor its resumes, which do not use it): `None`, and the first claim then scans from the shard's start.
/// The log says which shard; the answer says nothing of it.
async fn ledger_start(invoice_id: &str) -> Option<u64> {
    let shard = esim402_core::ledger::shard_of(invoice_id);
    match esim402_guest::ledger::head(shard).await {
        Ok(head) => Some(head.count),
        Err(e) => {
            eprintln!(
                "invoices: the ledger head of shard {shard} is unreadable ({e}); a payment claimed now looks for its entries from the shard's start"
            );
            None
        }
    }
}

/// `renew-payment`: extend `holder`'s lease (kernel `PaymentRecord::renew`); until when it holds it now.
pub async fn renew(invoice_id: &str, holder: &str, now: u64) -> Result<u64, wit::Error> {
    terms::parse_id(invoice_id)?;
    let r = kv::update_json(&keys::invoice(invoice_id), |current| {
        PaymentRecord::renew(current, holder, now)
    })
    .await;
    match r {
        Ok(record) => Ok(record.lease_until),
        Err(KvError::Refused(RecordError::NotHolder)) => {
            Err(wit::Error::Conflict(paid::IN_PROGRESS.to_owned()))
        }
        Err(e) => Err(record_error(invoice_id, e)),
    }
}

/// `finish-payment`: how `holder`'s attempt ended; a holder whose claim was taken over changes nothing.
pub async fn finish(
    invoice_id: &str,
    holder: &str,
    end: wit::PaymentEnd,
    response: &wit::StoredResponse,
) -> Result<(), wit::Error> {
    let end = match end {
        wit::PaymentEnd::Release => End::Release,
        wit::PaymentEnd::Resume => End::Resume,
        wit::PaymentEnd::Done => End::Done,
    };
    let response = convert::response(response);
    let r = kv::update_json(&keys::invoice(invoice_id), |current| {
        PaymentRecord::finish(current, holder, end, &response)
    })
    .await;
    match r {
        Ok(_) => Ok(()),
        Err(KvError::Refused(RecordError::NotHolder)) => {
            eprintln!(
                "invoices: payment record of {invoice_id} was taken over; this attempt's end is not kept"
            );
            Ok(())
        }
        Err(KvError::Refused(e)) => Err(wit::Error::Conflict(e.to_string())),
        Err(e) => Err(kv_fault("payment record", e)),
    }
}

/// The invoice with `record` applied, for answers.
async fn invoice_after(id: &str, record: &PaymentRecord) -> Result<wit::Invoice, wit::Error> {
    let mut invoice = terms::open_paid(id)
        .await?
        .ok_or_else(|| wit::Error::NotFound(format!("no invoice {id}")))?;
    terms::with_record(&mut invoice, Some(record), util::now_secs());
    Ok(convert::invoice_to_wit(&invoice))
}

fn record_error(id: &str, e: KvError<RecordError>) -> wit::Error {
    match e {
        KvError::Refused(RecordError::AlreadyPaid) => {
            wit::Error::Conflict(format!("invoice {id} is paid already"))
        }
        KvError::Refused(RecordError::AlreadyPaidSame) => {
            wit::Error::Conflict(format!("invoice {id} {}", paid::PAID_BY_THIS_TRANSACTION))
        }
        KvError::Refused(e @ (RecordError::NoRecord | RecordError::NotPaid)) => {
            wit::Error::Conflict(format!("invoice {id}: {e}"))
        }
        KvError::Refused(e) => wit::Error::Conflict(e.to_string()),
        other => kv_fault("payment record", other),
    }
}

/// `mark-paid`: money moved; exactly once.
pub async fn mark_paid(
    id: &str,
    transaction: &str,
    payer: &str,
) -> Result<wit::Invoice, wit::Error> {
    terms::parse_id(id)?;
    let record = kv::update_json(&keys::invoice(id), |current| {
        PaymentRecord::mark_paid(current, transaction, payer)
    })
    .await
    .map_err(|e| match e {
        // Money moved for an invoice whose payment record is gone (a store that lost it): a fault the caller
        // logs for an operator, not a repeat's conflict.
        KvError::Refused(e @ RecordError::NoRecord) => internal(format!("invoice {id}: {e}")),
        e => record_error(id, e),
    })?;
    invoice_after(id, &record).await
}

/// `mark-refunded`: the payment is owed back.
pub async fn mark_refunded(id: &str) -> Result<wit::Invoice, wit::Error> {
    terms::parse_id(id)?;
    let record = kv::update_json(&keys::invoice(id), PaymentRecord::mark_refunded)
        .await
        .map_err(|e| record_error(id, e))?;
    invoice_after(id, &record).await
}

/// `bind-payment-id`: `true` when `id` is bound to exactly this request (now or before); 409 if to another.
pub async fn bind_payment_id(
    id: &str,
    request_fingerprint: &str,
    invoice_id: &str,
) -> Result<bool, wit::Error> {
    let binding = PaymentIdBinding {
        request_fingerprint: request_fingerprint.to_owned(),
        invoice: invoice_id.to_owned(),
    };
    let bytes = serde_json::to_vec(&binding).map_err(internal)?;
    match kv::insert_if_absent::<wit::Error>(&keys::payment_id(id), &bytes).await {
        Ok(()) => Ok(true),
        Err(KvError::Exists) => {
            let existing = kv::get_json::<PaymentIdBinding, wit::Error>(&keys::payment_id(id))
                .await
                .map_err(kv_err)?;
            match existing {
                Some(b) if b == binding => Ok(true),
                _ => Err(wit::Error::Conflict(
                    "payment-identifier id was already used for a different payment".into(),
                )),
            }
        }
        Err(e) => Err(kv_err(e)),
    }
}

/// `v1-invoice`: the invoice the v1 payment `fingerprint` was first presented with (`candidate` if this is
/// the first time), so every replay of one v1 payment races on one invoice.
pub async fn v1_invoice(fingerprint: &str, candidate: &str) -> Result<String, wit::Error> {
    terms::parse_id(candidate)?;
    let key = keys::v1_payment(fingerprint);
    let bytes = serde_json::to_vec(candidate).map_err(internal)?;
    match kv::insert_if_absent::<wit::Error>(&key, &bytes).await {
        Ok(()) => Ok(candidate.to_owned()),
        Err(KvError::Exists) => kv::get_json::<String, wit::Error>(&key)
            .await
            .map_err(kv_err)?
            .ok_or_else(|| internal("v1 payment binding vanished")),
        Err(e) => Err(kv_err(e)),
    }
}
