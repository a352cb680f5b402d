//! Terminated SIMs whose unused-data refunds could not be recorded (`cleanup/unrefunded`, a kernel
//! `store::retry` list). A terminate revokes the SIM's access token before the gateway closes its account and
//! owes the refunds; if that fails (a store fault: 503), the owner could only retry with a wallet sign-in, and a
//! payer who never did lost its unused data. So the gateway lists such a SIM, and the operator's cleanup run
//! records its refunds (repeats are safe: the account's first close fixes the shares, refunds are once per
//! invoice). Only failures are listed: a terminate that succeeds writes nothing here (no key every terminate
//! shares). A process that dies between the terminate and its refunds lists nothing (README, Known gaps).

use esim402_core::esim::iccid::Iccid;
use esim402_core::store::keys;
use esim402_core::store::retry::{MAX_TRIES, Tried};
use esim402_guest::convert::invalid;
use esim402_guest::wit;

/// The most SIMs listed at once; beyond, one is not listed (logged for an operator).
pub const MAX_UNREFUNDED: usize = 4_096;

/// `list-unrefunded`: list `iccid`, whose refunds could not be recorded. A full list is logged for an operator.
pub async fn list(iccid: &str) -> Result<(), wit::Error> {
    let iccid = Iccid::parse(iccid).map_err(|e| invalid("iccid", e.to_string()))?;
    if !crate::retry_list::push(keys::CLEANUP_UNREFUNDED, iccid.as_str(), MAX_UNREFUNDED).await? {
        eprintln!(
            "dispatch: OPERATOR: the unrefunded list is full ({MAX_UNREFUNDED} SIMs): SIM {iccid} is not listed; \
             terminate it again with the owner's wallet to record its refunds"
        );
    }
    Ok(())
}

/// Up to `max` listed SIMs due at `now`, taken (each counts a try). A list that cannot be read is logged and
/// left for the next run.
pub async fn due(now: u64, max: usize) -> Vec<String> {
    match crate::retry_list::take(keys::CLEANUP_UNREFUNDED, now, max).await {
        Ok(taken) => {
            taken.given_up.iter().for_each(|iccid| gave_up(iccid));
            taken.due
        }
        Err(e) => {
            eprintln!(
                "dispatch: the unrefunded list cannot be read (the next run tries again): {e:?}"
            );
            Vec::new()
        }
    }
}

/// `settle-unrefunded`.
pub async fn settle(iccid: &str, done: bool) -> Result<(), wit::Error> {
    let tried = if done { Tried::Done } else { Tried::Again };
    if crate::retry_list::settle(keys::CLEANUP_UNREFUNDED, iccid, tried).await? {
        gave_up(iccid);
    }
    Ok(())
}

fn gave_up(iccid: &str) {
    eprintln!(
        "dispatch: OPERATOR: the refunds of terminated SIM {iccid} could not be recorded in {MAX_TRIES} tries: \
         terminate it again with the owner's wallet (POST /v1/esim/{iccid}/terminate), or owe them by hand"
    );
}
