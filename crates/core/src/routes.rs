//! The HTTP routes the gateway serves and the methods each answers: the one table behind the gateway's 405
//! answers (`Allow`) and the OpenAPI description ([`OPENAPI_JSON`], served at `GET /openapi.json`), which a test
//! keeps equal to it both ways. A path segment in braces (`{iccid}`) matches any one segment; literal routes
//! are listed before templated ones they overlap (`/v1/esim/activate` before `/v1/esim/{iccid}`).

/// One route: its path template and the methods it answers, as the `Allow` header lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// e.g. `/v1/esim/{iccid}/suspend`.
    pub path: &'static str,
    /// e.g. `GET, POST`.
    pub allow: &'static str,
}

const fn r(path: &'static str, allow: &'static str) -> Route {
    Route { path, allow }
}

/// Every route, literal ones first.
pub const ROUTES: &[Route] = &[
    r("/health", "GET"),
    r("/openapi.json", "GET"),
    r("/supported", "GET"),
    r("/verify", "POST"),
    r("/settle", "POST"),
    r("/v1/esim/activate", "GET, POST"),
    r("/v1/invoices/{id}", "GET"),
    r("/v1/esim/{iccid}", "GET"),
    r("/v1/esim/{iccid}/suspend", "POST"),
    r("/v1/esim/{iccid}/resume", "POST"),
    r("/v1/esim/{iccid}/terminate", "POST"),
    r("/v1/esim/{iccid}/switch", "POST"),
    r("/v1/esim/{iccid}/token", "POST"),
    r("/v1/esim/{iccid}/refresh", "POST"),
    r("/v1/esim/{iccid}/data", "POST"),
    r("/v1/esim/{iccid}/balance", "GET"),
    r("/v1/esim/{iccid}/usage", "GET"),
    r("/v1/esim/{iccid}/receipts", "GET"),
    r("/v1/balance/{iccid}", "GET"),
    r("/v1/usage", "POST"),
    r("/v1/ledger/verify", "GET"),
    r("/v1/ledger", "GET"),
    r("/admin/refunds/run", "POST"),
    r("/gsma/rsp2/es2plus/handleDownloadProgressInfo", "POST"),
];

/// The OpenAPI 3.1 description of every route (`crates/core/api/openapi.json`).
pub const OPENAPI_JSON: &str = include_str!("../api/openapi.json");

fn matches(template: &str, segments: &[&str]) -> bool {
    let parts: Vec<&str> = template.trim_matches('/').split('/').collect();
    parts.len() == segments.len()
        && parts
            .iter()
            .zip(segments)
            .all(|(p, s)| (p.starts_with('{') && p.ends_with('}')) || p == s)
}

/// The route a request path (split on `/`, without empty ends) falls on.
pub fn route(segments: &[&str]) -> Option<&'static Route> {
    ROUTES.iter().find(|r| matches(r.path, segments))
}

/// The methods the path answers (the `Allow` header), if it is a route at all.
pub fn allowed(segments: &[&str]) -> Option<&'static str> {
    route(segments).map(|r| r.allow)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn literal_routes_win_and_templates_match_one_segment() {
        assert_eq!(allowed(&["v1", "esim", "activate"]), Some("GET, POST"));
        assert_eq!(allowed(&["v1", "esim", "8901260000000000019"]), Some("GET"));
        assert_eq!(allowed(&["v1", "esim", "1", "suspend"]), Some("POST"));
        assert_eq!(allowed(&["v1", "esim", "1", "nope"]), None);
        assert_eq!(allowed(&["v1", "ledger", "verify"]), Some("GET"));
        assert_eq!(allowed(&["v1"]), None);
    }

    #[test]
    fn the_openapi_document_describes_exactly_these_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut described = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                described.insert((path.clone(), method.to_uppercase()));
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .flat_map(|r| {
                r.allow
                    .split(", ")
                    .map(|m| (r.path.to_owned(), m.to_owned()))
            })
            .collect();
        assert_eq!(described, served);
        // Every operation names its responses, and every reference resolves.
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                assert!(op["operationId"].is_string(), "{op}");
                assert!(!op["responses"].as_object().unwrap().is_empty(), "{op}");
            }
        }
        for reference in OPENAPI_JSON.split("\"$ref\": \"#/").skip(1) {
            let pointer = format!("/{}", reference.split('"').next().unwrap());
            assert!(
                doc.pointer(&pointer).is_some(),
                "{pointer} does not resolve"
            );
        }
    }
}
