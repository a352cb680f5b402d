//! The audit log: every payment made for a device, as JSON lines appended to one file (private to the operator,
//! 0600). A payment is logged `signed` as it is recorded, before it is sent, and again with how it ended
//! (`settled`, `pending`, `unknown`, `refused`), read from the device's state before and after its request. An
//! entry holds no secret (no activation code, no token); a failed write is said on stderr, never fatal.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;

use serde_json::Value;

use crate::StateDir;
use crate::state::{Spend, SpendStatus};

/// The audit log: JSON lines, appended by one writer at a time.
pub(super) struct AuditLog {
    pub(super) path: PathBuf,
    pub(super) lock: std::sync::Mutex<()>,
}

impl AuditLog {
    /// Append `entry`; a failure is said on stderr (with the entry: it holds no secret), never fatal.
    pub(super) fn append(&self, entry: &Value) {
        if let Err(e) = self.write(entry) {
            eprintln!("esim402-agent proxy: AUDIT LOG WRITE FAILED ({e}): {entry}");
        }
    }

    fn write(&self, entry: &Value) -> std::io::Result<()> {
        let _one_writer = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        // Who was paid for, when and how much: the operator's only (the mode applies when it is created).
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&self.path)?;
        // The line first: a file we may write but not re-mode (another owner's, a log rotator's) must not lose
        // entries to the permission fix below.
        f.write_all(format!("{entry}\n").as_bytes())?;
        f.sync_data()?;
        // One that existed before (another tool's, an older proxy's) is made private too, through the open
        // file: the very file written to. Best effort: a file whose mode we may not change is said so, once per
        // line, and still written.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            // The line is written: nothing here may report it as lost.
            let mode = f.metadata().map(|m| m.permissions().mode());
            let private = match mode {
                Ok(mode) if mode & 0o077 != 0 => {
                    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7700))
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = private {
                eprintln!(
                    "esim402-agent proxy: warning: the audit log {} may be readable by others and could not be made private: {e}",
                    self.path.display()
                );
            }
        }
        Ok(())
    }
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A device's payments as its state records them, by payment id; `None` if the state cannot be read.
pub(super) fn device_spends(state: &StateDir) -> Option<HashMap<String, Spend>> {
    state.load().ok().map(|s| {
        s.spends
            .into_iter()
            .map(|x| (x.payment_id.clone(), x))
            .collect()
    })
}

/// The audit entries ending this request's payments: each payment signed during it (`signed`) and each that was
/// pending before it (`before`), whose standing changed, as the device's state says after it (`after`): `settled`,
/// `refused` (dropped: nothing was charged), `unknown` (kept, counted: it may have been charged) or, for one
/// signed now, `pending` (kept, sent again by the device's same request). The amount is the agent's own. A state
/// that cannot be read after the request (`after` `None`) says nothing of how they ended: each payment pending
/// before it or signed during it is `unreadable` (it may have been charged), never `refused`.
pub(super) fn outcomes(
    before: Option<&HashMap<String, Spend>>,
    signed: &[Spend],
    after: Option<&HashMap<String, Spend>>,
) -> Vec<(Spend, &'static str)> {
    let was_pending = before
        .into_iter()
        .flat_map(HashMap::values)
        .filter(|s| s.status == SpendStatus::Pending)
        .map(|s| (s, true));
    let Some(after) = after else {
        return was_pending
            .chain(signed.iter().map(|s| (s, false)))
            .map(|(s, _)| (s.clone(), "unreadable"))
            .collect();
    };
    let mut out = Vec::new();
    for (spend, earlier) in was_pending.chain(signed.iter().map(|s| (s, false))) {
        let now = after.get(&spend.payment_id);
        let outcome = match now.map(|s| s.status) {
            None => "refused",
            Some(SpendStatus::Settled) => "settled",
            Some(SpendStatus::Unknown) => "unknown",
            Some(SpendStatus::Pending) if earlier => continue,
            Some(SpendStatus::Pending) => "pending",
        };
        out.push((now.cloned().unwrap_or_else(|| spend.clone()), outcome));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(id: &str, status: SpendStatus) -> Spend {
        Spend {
            payment_id: id.into(),
            purpose: "activate".into(),
            at: 1,
            amount_usdc: "0.5".parse().unwrap(),
            network: "eip155:8453".into(),
            pay_to: "0x0000000000000000000000000000000000000001".into(),
            status,
            transaction: None,
        }
    }

    /// A state unreadable after the request says nothing of how its payments ended: `unreadable`, never
    /// `refused` ("nothing charged") for a payment that may have settled (a review, thirty-first session).
    #[test]
    fn an_unreadable_state_never_reads_as_refused() {
        let signed = [spend("p1", SpendStatus::Pending)];
        let before = HashMap::new();
        let out = outcomes(Some(&before), &signed, None);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, "unreadable");
        // One pending before the request (sent again by it) is unreadable too.
        let pending = HashMap::from([("p0".to_owned(), spend("p0", SpendStatus::Pending))]);
        let out = outcomes(Some(&pending), &signed, None);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(_, o)| *o == "unreadable"));
        let after = HashMap::new();
        assert_eq!(
            outcomes(Some(&before), &signed, Some(&after))[0].1,
            "refused"
        );
        let settled = HashMap::from([("p1".to_owned(), spend("p1", SpendStatus::Settled))]);
        assert_eq!(outcomes(None, &signed, Some(&settled))[0].1, "settled");
    }
}
