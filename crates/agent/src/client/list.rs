//! `sims`: every SIM this wallet paid for, read page after page from the facilitator (`GET /v1/esim`), within
//! bounds of its own: at most [`MAX_LISTED_SIMS`] SIMs taking at most [`MAX_LISTED_BYTES`] in at most
//! [`MAX_LIST_PAGES`] pages. Pages filtered by `--agent-id` may hold few SIMs each (the facilitator pages over
//! the wallet's positions, then filters), so the page bound is far above what the SIM bound fills. A list that
//! passes any bound is a local error naming it (exit 1), not the facilitator's refusal: the facilitator
//! answered every page.

use serde_json::Value;

use super::{Agent, unexpected};
use crate::error::AgentError;

/// The most SIMs [`Agent::list_sims`] reads (a wallet's whole fleet).
pub const MAX_LISTED_SIMS: usize = 100_000;
/// The most pages [`Agent::list_sims`] reads: 10 000 positions per listed SIM at the bound (a sparse filter),
/// 10 million positions in all.
pub const MAX_LIST_PAGES: usize = 10_000;
/// The most memory the SIMs [`Agent::list_sims`] keeps may take, as [`footprint`] estimates it: each page may
/// be 4 MiB ([`super::MAX_ANSWER`]), and without it 10 000 pages of a few huge entries would all be kept. About
/// 5 KiB a SIM at [`MAX_LISTED_SIMS`], for entries of a few dozen short fields.
pub const MAX_LISTED_BYTES: usize = 512 * 1024 * 1024;
/// The SIMs asked for per page of [`Agent::list_sims`].
const LIST_PAGE: usize = 1_000;

/// What a listing may read: pages and SIMs, and the memory the SIMs take ([`footprint`]).
#[derive(Debug, Clone, Copy)]
struct Bounds {
    pages: usize,
    sims: usize,
    bytes: usize,
}

/// Roughly what `v` takes in memory: a value's own slot for each value, and the bytes of its strings and keys.
/// Not its JSON's length: `0,` is 2 bytes of JSON and a 32-byte value, so a list of tiny values would take 16
/// times what its text did.
fn footprint(v: &Value) -> usize {
    size_of::<Value>()
        + match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(footprint).sum(),
            Value::Object(o) => o
                .iter()
                .map(|(k, v)| size_of::<String>() + k.len() + footprint(v))
                .sum(),
            _ => 0,
        }
}

impl Agent {
    /// Every SIM this wallet paid for, oldest first, only `agent_id`'s if given: `GET /v1/esim` page after
    /// page (1 000 positions each), each page with a fresh wallet sign-in. At most [`MAX_LISTED_SIMS`] SIMs
    /// taking at most [`MAX_LISTED_BYTES`] in at most [`MAX_LIST_PAGES`] pages: a facilitator listing more (or
    /// paging on without end) is a local error naming the bound, not memory and time without bound.
    pub async fn list_sims(&self, agent_id: Option<&str>) -> Result<Vec<Value>, AgentError> {
        let bounds = Bounds {
            pages: MAX_LIST_PAGES,
            sims: MAX_LISTED_SIMS,
            bytes: MAX_LISTED_BYTES,
        };
        self.list_sims_within(agent_id, bounds).await
    }

    async fn list_sims_within(
        &self,
        agent_id: Option<&str>,
        bounds: Bounds,
    ) -> Result<Vec<Value>, AgentError> {
        let filter = match agent_id {
            Some(a) => {
                let a = esim402_core::order::parse_agent_label(a).map_err(AgentError::Usage)?;
                format!("&agent_id={a}")
            }
            None => String::new(),
        };
        let mut sims = Vec::new();
        let mut kept = 0usize;
        let mut after = 0u64;
        for page in 1.. {
            if page > bounds.pages {
                return Err(AgentError::Local(format!(
                    "the SIM list goes on past {} pages ({} SIMs read), the agent's bound (MAX_LIST_PAGES): \
                     stopped; list fewer with --agent-id",
                    bounds.pages,
                    sims.len()
                )));
            }
            let path = format!("/v1/esim?limit={LIST_PAGE}&after={after}{filter}");
            let credential = self.sign_in("/v1/esim", 1)?;
            let answer = self
                .send(reqwest::Method::GET, &path, None, &[credential])
                .await
                .map_err(|e| self.unreachable(&e, false))?;
            if !(200..300).contains(&answer.status) {
                return Err(unexpected(&answer));
            }
            let listed = answer.body["sims"]
                .as_array()
                .map_or(&[][..], Vec::as_slice);
            if sims.len().saturating_add(listed.len()) > bounds.sims {
                return Err(AgentError::Local(format!(
                    "the SIM list holds more than {} SIMs, the agent's bound (MAX_LISTED_SIMS): stopped; list \
                     fewer with --agent-id",
                    bounds.sims
                )));
            }
            kept = kept.saturating_add(listed.iter().map(footprint).sum());
            if kept > bounds.bytes {
                return Err(AgentError::Local(format!(
                    "the SIM list takes more than {} MiB, the agent's bound (MAX_LISTED_BYTES), with {} SIMs read: \
                     stopped; list fewer with --agent-id",
                    bounds.bytes / (1024 * 1024),
                    sims.len()
                )));
            }
            sims.extend(listed.iter().cloned());
            match answer.body["next"].as_u64() {
                Some(next) if next > after => after = next,
                _ => return Ok(sims),
            }
        }
        Ok(sims)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;

    /// A facilitator listing `per_page(page)` SIMs on each page, `pages` pages (without end: `None`).
    /// The `after` a listing request names (0 without one).
    fn after_of(target: &str) -> u64 {
        target
            .split("after=")
            .nth(1)
            .and_then(|a| a.split('&').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    }

    async fn lister(
        per_page: impl Fn(u64) -> usize + Send + Sync + 'static,
        pages: Option<u64>,
    ) -> crate::testing::Server {
        crate::testing::Server::start(move |seen| {
            let after = after_of(&seen.target);
            let page = after / 1_000;
            let sims: Vec<Value> = (0..per_page(page))
                .map(|i| json!({"iccid": format!("{page}-{i}")}))
                .collect();
            let next = pages.is_none_or(|n| page + 1 < n).then_some(after + 1_000);
            (200, vec![], json!({"sims": sims, "next": next}))
        })
        .await
    }

    /// Fix: a wallet whose SIMs are spread thin over many pages (an `--agent-id` filter) is listed whole: 150
    /// pages of one SIM each. Before, the page bound was what the SIM bound fills (101 pages), and the list
    /// failed past it as the facilitator's refusal (exit 4).
    #[tokio::test]
    async fn a_sparse_sim_list_is_read_past_a_hundred_pages() {
        let f = lister(|_| 1, Some(150)).await;
        let dir = tempfile::tempdir().unwrap();
        let a = crate::testing::agent(&f.url, dir.path());
        let sims = a.list_sims(Some("pump-1")).await.unwrap();
        assert_eq!(sims.len(), 150);
        assert_eq!(f.seen().len(), 150);
        assert!(f.seen()[0].target.contains("agent_id=pump-1"));
    }

    /// `sims` reads at most so many SIMs in so many pages: a facilitator paging on without end (full pages, or
    /// empty ones) is stopped at the bound it passes, a local error (exit 1) naming it. Before, a refusal by
    /// the facilitator (exit 4), though it answered every page.
    #[tokio::test]
    async fn a_sim_list_without_end_is_cut_off_at_a_named_bound() {
        for (full, bound) in [(true, "MAX_LISTED_SIMS"), (false, "MAX_LIST_PAGES")] {
            let f = lister(move |_| if full { LIST_PAGE } else { 0 }, None).await;
            let dir = tempfile::tempdir().unwrap();
            let a = crate::testing::agent(&f.url, dir.path());
            let bounds = Bounds {
                pages: 40,
                sims: 5 * LIST_PAGE,
                bytes: MAX_LISTED_BYTES,
            };
            let e = tokio::time::timeout(Duration::from_secs(30), a.list_sims_within(None, bounds))
                .await
                .expect("cut off, not paged on without end")
                .unwrap_err();
            assert_eq!(e.exit_code(), crate::ExitCode::Local, "{e}");
            assert!(e.to_string().contains(bound), "{e}");
            let pages = if full { 6 } else { 40 };
            assert_eq!(f.seen().len(), pages, "{full}");
        }
    }

    /// Fix (a review): the SIMs kept are bounded in memory too, not only in number: a facilitator listing few
    /// SIMs of huge entries (each page up to 4 MiB) is stopped at the bound, a local error naming it. Before,
    /// every entry was kept, up to 10 000 pages of 4 MiB.
    #[tokio::test]
    async fn a_sim_list_of_huge_entries_is_cut_off_at_a_named_bound() {
        let f = crate::testing::Server::start(|seen| {
            let after = after_of(&seen.target);
            let sims: Vec<Value> = (0..2)
                .map(|i| json!({"iccid": format!("{after}-{i}"), "note": "x".repeat(256 * 1024)}))
                .collect();
            (200, vec![], json!({"sims": sims, "next": after + 1_000}))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let a = crate::testing::agent(&f.url, dir.path());
        let bounds = Bounds {
            pages: 40,
            sims: 5 * LIST_PAGE,
            bytes: 2 * 1024 * 1024,
        };
        let e = a.list_sims_within(None, bounds).await.unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Local, "{e}");
        assert!(e.to_string().contains("MAX_LISTED_BYTES"), "{e}");
        assert!(e.to_string().contains("with 6 SIMs read"), "{e}");
        assert_eq!(f.seen().len(), 4, "stopped at the page that passed it");
        // A list within the bound is read whole, whatever its size in bytes.
        let small = lister(|_| 2, Some(3)).await;
        let a = crate::testing::agent(&small.url, dir.path());
        let sims = a.list_sims_within(None, bounds).await.unwrap();
        assert_eq!(sims.len(), 6);
    }
}
