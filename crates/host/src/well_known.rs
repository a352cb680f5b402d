//! `/.well-known/spin/*`: the paths Spin answers itself, before routing (its `HttpServer::handle`), so that
//! whatever watches a Spin app (`spin deploy`'s readiness check, a load balancer's health probe) sees the same
//! answers here. `health` is `200 OK` with the body `OK`; `info` the app's name and version as Spin's `AppInfo`
//! serializes them (pretty JSON, `version` left out when spin.toml has none); anything else under the prefix is
//! Spin's empty 404, whatever the app's routes say (Spin warns of such routes at start-up, and so does
//! [`crate::router`]).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::WasiBody;

use crate::router::WELL_KNOWN_PREFIX;

/// What the host answers for `path`, or `None` when the app's routes decide (any path not under
/// [`WELL_KNOWN_PREFIX`]).
pub fn answer(path: &str, name: &str, version: Option<&str>) -> Option<http::Response<WasiBody>> {
    let which = path.strip_prefix(WELL_KNOWN_PREFIX)?;
    Some(match which {
        "health" => http::Response::new(body(Bytes::from_static(b"OK"))),
        "info" => info(name, version),
        _ => {
            let mut not_found = http::Response::new(body(Bytes::new()));
            *not_found.status_mut() = http::StatusCode::NOT_FOUND;
            not_found
        }
    })
}

fn body(bytes: Bytes) -> WasiBody {
    Full::new(bytes).map_err(|e| match e {}).boxed_unsync()
}

/// Spin's `AppInfo` (`name`, then `version` if the manifest has one; `oci_image_digest` only for an app run
/// from a registry, which this host never does), as `serde_json::to_vec_pretty` writes it.
fn info(name: &str, version: Option<&str>) -> http::Response<WasiBody> {
    let mut info = serde_json::Map::new();
    info.insert("name".to_owned(), name.into());
    if let Some(v) = version.filter(|v| !v.is_empty()) {
        info.insert("version".to_owned(), v.into());
    }
    let text = serde_json::to_vec_pretty(&info).unwrap_or_default();
    let mut resp = http::Response::new(body(Bytes::from(text)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(r: http::Response<WasiBody>) -> (u16, Option<String>, String) {
        let status = r.status().as_u16();
        let kind = r
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = r
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (status, kind, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The Spin 4.1 binary's answers, byte for byte.
    #[tokio::test]
    async fn health_and_info_as_spin_answers_them() {
        let Some(health) = answer("/.well-known/spin/health", "probe", None) else {
            panic!("health is not answered");
        };
        assert_eq!(read(health).await, (200, None, "OK".to_owned()));
        let Some(info) = answer("/.well-known/spin/info", "probe", Some("1.2.3")) else {
            panic!("info is not answered");
        };
        assert_eq!(
            read(info).await,
            (
                200,
                Some("application/json".to_owned()),
                "{\n  \"name\": \"probe\",\n  \"version\": \"1.2.3\"\n}".to_owned()
            )
        );
        // `version = ""` or none: left out.
        for version in [None, Some("")] {
            let Some(info) = answer("/.well-known/spin/info", "probe", version) else {
                panic!("info is not answered");
            };
            assert_eq!(read(info).await.2, "{\n  \"name\": \"probe\"\n}");
        }
    }

    #[tokio::test]
    async fn the_rest_of_the_prefix_is_not_found_and_the_rest_is_the_apps() {
        for path in [
            "/.well-known/spin/x",
            "/.well-known/spin/",
            "/.well-known/spin/health/",
            "/.well-known/spin/info/more",
        ] {
            let Some(r) = answer(path, "a", None) else {
                panic!("{path} went to the app");
            };
            assert_eq!(read(r).await, (404, None, String::new()), "{path}");
        }
        for path in [
            "/.well-known/spin",
            "/.well-known/spindle/health",
            "/health",
            "/",
        ] {
            assert!(answer(path, "a", None).is_none(), "{path}");
        }
    }
}
