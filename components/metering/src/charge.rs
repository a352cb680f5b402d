//! A receipt batch's charges: each SIM's used counter grows by the batch's bytes (one `increment`), and a
//! switched-away SIM's usage is handed on to the SIM its data moved to (kernel `Account::forward`) here, before
//! the batch's ledger events are built, so they say what the payer pays of it.
//!
//! What the payer pays is the kernel's (`Account::payer_share`): usage a SIM reports after its terminate beyond
//! what the close counted as used (or handed on to a SIM closed so) is absorbed, and its receipts say so
//! (kernel `ingest::absorb`). A charge the store fails is *unknown*, not uncharged: a lost reply or a timeout
//! may follow an `increment` that was applied. It stops the batch; the SIM is named in the ledger event
//! (`charge_unknown`) and to the operator, and its receipts are answered `charge_unknown` when the answer
//! carries the events (kernel `mark_uncharged`).
//!
//! A hand-on the store fails does not stop the batch: the SIM's own charge landed, and the SIMs after it are
//! charged as usual (stopping there left their receipts claimed and never charged). The SIM counts as charged,
//! what its bytes' move to the new SIM would have absorbed unknown (the ledger names them charged to the
//! payer); an `OPERATOR:` line names it. What was not handed on is handed on by the SIM's next batch or a
//! balance read of the new SIM (`accounts::collect`): the mark advances before the new SIM's counter grows, so
//! a failure between the two loses those bytes, in the payer's favour, as a crash there does. Its hold is
//! decided from the new SIM's counter as read (`crate::holds`).

use std::collections::{BTreeMap, HashMap};

use esim402_core::esim::iccid::Iccid;
use esim402_core::store::keys;
use esim402_core::usage::account::Account;
use esim402_core::usage::ingest::{ReportLine, SimCharge, absorb};
use esim402_guest::convert::{internal, kv_err};
use esim402_guest::kv;
use esim402_guest::wit;

use crate::accounts;

/// One SIM the batch charged.
pub struct Charged<'a> {
    pub iccid: &'a String,
    /// Its used counter after the charge.
    pub used: u64,
    /// A switched-away SIM: the SIM its usage draws on and that SIM's counter after this batch's hand-on
    /// (`None` if nothing was handed on here: another call had, or the account has no mark).
    pub forwarded: Option<(Iccid, u64)>,
}

/// What the charges did.
pub struct Charges<'a> {
    pub charged: Vec<Charged<'a>>,
    /// Every SIM counted (or whose charge is unknown), for the ledger (kernel `charge_entry`).
    pub sims: Vec<SimCharge<'a>>,
    /// The SIM whose charge failed at the store (it may have landed).
    pub unknown: Option<&'a str>,
    /// The failed charge that stopped the batch (a hand-on that fails stops nothing: module docs).
    pub failed: Option<wit::Error>,
}

/// Charge each SIM of `batch` (`(bytes, receipts accepted)` per SIM, in ICCID order) against the accounts as
/// the batch read them, marking in `lines` the receipts whose bytes are absorbed.
pub async fn charge<'a>(
    batch_id: &str,
    batch: &'a BTreeMap<String, (u64, u64)>,
    accounts: &HashMap<String, Option<Account>>,
    lines: &mut [ReportLine],
) -> Charges<'a> {
    let mut out = Charges {
        charged: Vec::new(),
        sims: Vec::new(),
        unknown: None,
        failed: None,
    };
    for (iccid, &(bytes, receipts)) in batch {
        if receipts == 0 {
            continue;
        }
        let charge = i64::try_from(bytes).map_err(internal).and_then(|delta| {
            kv::increment::<wit::Error>(&keys::meter_used(iccid), delta).map_err(kv_err)
        });
        let used = match charge {
            Ok(used) => u64::try_from(used).unwrap_or(0),
            Err(e) => {
                eprintln!(
                    "metering: OPERATOR: batch {batch_id}: the charge of {bytes} bytes ({receipts} receipts) to \
                     SIM {iccid} failed at the store ({e:?}) and may have landed: its ledger event names it \
                     `charge_unknown`; compare the SIM's used counter with its receipt log"
                );
                out.sims.push(SimCharge {
                    iccid,
                    bytes,
                    receipts,
                    absorbed: 0,
                    unknown: true,
                });
                out.unknown = Some(iccid);
                out.failed = Some(e);
                break;
            }
        };
        let account = accounts.get(iccid).and_then(Option::as_ref);
        let mut absorbed = account.map_or(0, |a| bytes - a.payer_share(used, bytes).min(bytes));
        let mut forwarded = None;
        if account.is_some_and(|a| a.moved_to.is_some()) {
            // The charge landed whatever the hand-on does: counted as charged, and the batch goes on.
            let (handed, lost) = hand_on(batch_id, iccid, used).await;
            absorbed = absorbed.saturating_add(lost).min(bytes);
            forwarded = handed;
        }
        absorb(lines, iccid, absorbed);
        out.sims.push(SimCharge {
            iccid,
            bytes: bytes - absorbed,
            receipts,
            absorbed,
            unknown: false,
        });
        out.charged.push(Charged {
            iccid,
            used,
            forwarded,
        });
    }
    out
}

/// Hand the moved SIM `from`'s usage at `used` on (`accounts::forward`): the SIM it drew on and that SIM's
/// counter after (if this call handed anything on), and the bytes handed on that its payer does not pay (that
/// SIM closed by a terminate before them). A store failure is reported to the operator, never returned: the
/// batch's charge of `from` landed before (module docs).
async fn hand_on(batch_id: &str, from: &str, used: u64) -> (Option<(Iccid, u64)>, u64) {
    let (handed, used_to) = match accounts::forward(from, used).await {
        Ok(Some(handed)) => handed,
        Ok(None) => return (None, 0),
        Err(e) => {
            eprintln!(
                "metering: OPERATOR: batch {batch_id}: handing SIM {from}'s usage (its counter at {used}) on to \
                 the SIM its data moved to failed at the store ({e:?}); its charge landed and counts as the \
                 payer's. Its next batch or a balance read of that SIM hands on what is left; bytes whose mark \
                 advanced without reaching that SIM's counter are lost, in the payer's favour"
            );
            return (None, 0);
        }
    };
    let to = &handed.to;
    let bytes = handed.bytes;
    // Counted in the new SIM's bytes, told in the old SIM's (kernel `HandedOn::own_part`): the batch's charge
    // it is taken from is in those.
    let lost = match accounts::load(to.as_str()).await {
        Ok(a) => a.map_or(0, |a| {
            handed.own_part(bytes - a.payer_share(used_to, bytes).min(bytes))
        }),
        Err(e) => {
            eprintln!(
                "metering: OPERATOR: batch {batch_id}: {bytes} bytes of SIM {from} were handed on to {to}, \
                 whose account could not be read ({e:?}): the ledger counts them charged to the payer, although \
                 a terminate of {to} may have left some of them unpaid"
            );
            0
        }
    };
    (Some((handed.to.clone(), used_to)), lost)
}
