//! Terminated SIMs whose unused-data refunds are not recorded yet (`cleanup/unrefunded`, a kernel
//! `store::retry` list). A terminate revokes the SIM's access token before the gateway closes its account and
//! owes the refunds; if that fails (a store fault) or the caller is cut off, the owner could only retry with a
//! wallet sign-in, and a payer who never did lost its unused data. So a terminate lists the SIM before it
//! changes anything, the gateway settles the entry once the refunds are recorded, and the operator's cleanup
//! run records what is left (repeats are safe: the account's first close fixes the shares, refunds are once
//! per invoice).

use esim402_core::esim::iccid::Iccid;
use esim402_core::store::keys;
use esim402_core::store::retry::{MAX_TRIES, Tried};
use esim402_guest::wit;

/// The most SIMs listed at once; beyond, a terminate is not listed (logged for an operator) and goes on: its
/// own call still records its refunds.
pub const MAX_UNREFUNDED: usize = 4_096;

/// List `iccid` before its terminate. A store fault fails the terminate (nothing changed yet).
pub async fn list(iccid: &Iccid) -> Result<(), wit::Error> {
    if !crate::retry_list::push(keys::CLEANUP_UNREFUNDED, iccid.as_str(), MAX_UNREFUNDED).await? {
        eprintln!(
            "dispatch: OPERATOR: the unrefunded list is full ({MAX_UNREFUNDED} SIMs): SIM {iccid}'s terminate goes \
             on unlisted; if its refunds are not recorded, terminate it again with the owner's wallet"
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
