//! The router against Spin's own route tests (`spin_http::routes`), routefinder 0.5.4's, and what the Spin 4.1
//! binary answered for the same manifests.

use super::*;

fn router(routes: &[(&str, &str)]) -> Router {
    Router::new(
        routes
            .iter()
            .map(|(p, c)| ((*p).to_owned(), (*c).to_owned())),
    )
    .unwrap()
}

fn component<'a>(r: &'a Router, path: &str) -> Option<&'a str> {
    r.find(path).map(|m| m.route.component.as_str())
}

#[test]
fn most_specific_wins() {
    let r = router(&[
        ("/v1/...", "api"),
        ("/v1/special", "special"),
        ("/users/:id", "users"),
        ("/users/:id/...", "user-tree"),
        ("/...", "fallback"),
        ("/health", "health"),
    ]);
    let m = r.find("/v1/esim/activate").unwrap();
    assert_eq!(
        (m.route.component.as_str(), m.path_info.as_str()),
        ("api", "/esim/activate")
    );
    assert_eq!(component(&r, "/v1"), Some("api"));
    assert_eq!(component(&r, "/v1/special"), Some("special"));
    assert_eq!(component(&r, "/health"), Some("health"));
    assert_eq!(component(&r, "/health/x"), Some("fallback"));
    let u = r.find("/users/42").unwrap();
    assert_eq!(
        (u.route.component.as_str(), u.params.clone()),
        ("users", vec![("id".to_owned(), "42".to_owned())])
    );
    assert_eq!(component(&r, "/users/42/cards"), Some("user-tree"));
    assert_eq!(component(&r, "/anything/else"), Some("fallback"));
    assert_eq!(r.find("/v1/...").unwrap().route.base(), "/v1");
}

/// The first differing segment decides, not the number of literals, and not exact-before-wildcard as a whole:
/// what the Spin 4.1 binary answered (`/:slug` and `/api/...`, `GET /api` → `api`).
#[test]
fn the_first_differing_segment_decides_as_in_routefinder() {
    for routes in [
        [("/:slug", "slug"), ("/api/...", "api")],
        [("/api/...", "api"), ("/:slug", "slug")],
    ] {
        let r = router(&routes);
        assert_eq!(component(&r, "/api"), Some("api"));
        assert_eq!(component(&r, "/api/x"), Some("api"));
        assert_eq!(component(&r, "/other"), Some("slug"));
    }
    // Two literals later do not beat one earlier.
    let r = router(&[("/:a/b/c", "late"), ("/x/:b/:c", "early")]);
    assert_eq!(component(&r, "/x/b/c"), Some("early"));
    // A parameter beats a wildcard at the same place, an exact route a wildcard matching nothing more.
    let r = router(&[("/a/...", "wild"), ("/a/:x", "param"), ("/a", "exact")]);
    assert_eq!(component(&r, "/a/b"), Some("param"));
    assert_eq!(component(&r, "/a"), Some("exact"));
    assert_eq!(component(&r, "/a/b/c"), Some("wild"));
    // Spin's `test_router_respects_longest_match`, in both orders.
    for routes in [
        [
            ("/one/...", "1"),
            ("/one/two/...", "2"),
            ("/one/two/three/...", "3"),
        ],
        [
            ("/one/two/three/...", "3"),
            ("/one/two/...", "2"),
            ("/one/...", "1"),
        ],
    ] {
        assert_eq!(
            component(&router(&routes), "/one/two/three/four"),
            Some("3")
        );
    }
}

/// routefinder's `it_works` and `several_params`: its order, and its matches.
#[test]
fn routefinder_orders_as_its_own_tests_say() {
    let r = router(&[
        ("/*", "1"),
        ("/hello", "2"),
        ("/:greeting", "3"),
        ("/hey/:world", "4"),
        ("/hey/earth", "5"),
        ("/:greeting/:world/*", "6"),
    ]);
    let order: Vec<&str> = r.routes().iter().map(|r| r.pattern.as_str()).collect();
    assert_eq!(
        order,
        [
            "/hello",
            "/hey/earth",
            "/hey/:world",
            "/:greeting",
            "/:greeting/:world/*",
            "/*"
        ]
    );
    assert_eq!(component(&r, "/hey/earth"), Some("5"));
    assert_eq!(component(&r, "/"), Some("1"));
    let m = r.find("/hey/mars").unwrap();
    assert_eq!(m.params, [("world".to_owned(), "mars".to_owned())]);
    let m = r.find("/hey/earth/wildcard/stuff").unwrap();
    assert_eq!(
        (m.route.component.as_str(), m.path_info.as_str()),
        ("6", "/wildcard/stuff")
    );

    let r = router(&[
        ("/:a", "1"),
        ("/:a/:b", "2"),
        ("/:a/:b/:c", "3"),
        ("/:param1/specific/:param2", "4"),
    ]);
    assert_eq!(component(&r, "/hi"), Some("1"));
    assert_eq!(component(&r, "/hi/there"), Some("2"));
    assert_eq!(component(&r, "/hi/there/hey"), Some("3"));
    assert_eq!(component(&r, "/hi/specific/anything"), Some("4"));
    assert_eq!(component(&r, "/"), None);
    assert_eq!(component(&r, "/a/b/c/d"), None);
}

/// Patterns that tie keep spin.toml's order.
#[test]
fn ties_keep_the_manifest_order() {
    assert_eq!(
        component(&router(&[("/:a", "a"), ("/:b", "b")]), "/x"),
        Some("a")
    );
    assert_eq!(
        component(&router(&[("/:b", "b"), ("/:a", "a")]), "/x"),
        Some("b")
    );
    // Written differently, routed the same: the first one wins (Spin keeps both, and the second never matches).
    for (routes, first) in [
        ([("/a", "x"), ("/a/", "y")], "x"),
        ([("/a/", "y"), ("/a", "x")], "y"),
        ([("/files/*", "f"), ("/files/...", "g")], "f"),
    ] {
        let r = router(&routes);
        assert_eq!(r.routes().len(), 2);
        assert_eq!(
            component(&r, "/a").or(component(&r, "/files/x")),
            Some(first)
        );
    }
}

/// routefinder's `dots` and `specific_matches`: a parameter stops at a dot the pattern has next (the Spin 4.1
/// binary: `/:name.json` answered `/f.json` with `spin-path-match-name: f`, and 404 for `/f.txt`).
#[test]
fn a_parameter_stops_at_a_dot_the_pattern_has() {
    let r = router(&[
        ("/:a.:b", "1"),
        ("/:a/:b.:c", "2"),
        ("/:a/:b", "3"),
        ("/:a/:b.txt", "4"),
    ]);
    assert_eq!(component(&r, "/hello.world"), Some("1"));
    assert_eq!(component(&r, "/hi/there.world"), Some("2"));
    assert_eq!(component(&r, "/hi/yep"), Some("3"));
    assert_eq!(component(&r, "/hi/planet.txt"), Some("4"));
    let r = router(&[("/:name.json", "j")]);
    assert_eq!(
        r.find("/f.json").unwrap().params,
        [("name".to_owned(), "f".to_owned())]
    );
    assert_eq!(component(&r, "/f.txt"), None);
    for (pattern, captures) in [
        (":param", vec!["a.b.c.d"]),
        (":a.:b", vec!["a", "b.c.d"]),
        (":a.:b.:c", vec!["a", "b", "c.d"]),
        (":a.:b.:c.:d", vec!["a", "b", "c", "d"]),
    ] {
        assert_eq!(
            Spec::parse(pattern).unwrap().matches("/a.b.c.d"),
            Some(captures)
        );
    }
    assert_eq!(Spec::parse(":a.:b").unwrap().matches("/a"), None);
    assert_eq!(
        Spec::parse("a.:b").unwrap().matches("a.hello"),
        Some(vec!["hello"])
    );
    // A literal with a dot is still a literal.
    let r = router(&[("/a.b/:c", "c")]);
    assert_eq!(
        r.find("/a.b/c").unwrap().params,
        [("c".to_owned(), "c".to_owned())]
    );
}

/// Outer slashes are ignored, inner ones are not (the Spin 4.1 binary: `/api//x` under `/api/...` gives
/// `spin-path-info: //x`; `/users/42//x` does not match `/users/:id/x`).
#[test]
fn slashes_as_routefinder_reads_them() {
    let r = router(&[
        ("/api/...", "api"),
        ("/users/:id/x", "users"),
        ("/foo/", "foo"),
    ]);
    assert_eq!(r.find("/api//x").unwrap().path_info, "//x");
    assert_eq!(r.find("//api/x").unwrap().path_info, "/x");
    assert_eq!(component(&r, "/users/42//x"), None);
    assert_eq!(component(&r, "/users//42/x"), None);
    assert_eq!(component(&r, "/foo"), Some("foo"));
    assert_eq!(component(&r, "/foo//"), Some("foo"));
    let root = router(&[("/", "root")]);
    assert_eq!(component(&root, "//"), Some("root"));
    assert_eq!(component(&root, "/a"), None);
}

#[test]
fn exact_routes_do_not_match_below() {
    let r = router(&[("/health", "h")]);
    assert!(r.find("/health/more").is_none());
    assert!(r.find("/").is_none());
    assert!(r.find("/health/").is_some());
}

#[test]
fn path_info_keeps_a_trailing_slash_as_spin_does() {
    // Spin's `trailing_wildcard_respects_trailing_slash` and `trailing_wildcard_is_captured`.
    let r = router(&[("/test/...", "c")]);
    for (path, info) in [
        ("/test", ""),
        ("/test/", "/"),
        ("/test/hello", "/hello"),
        ("/test/hello/", "/hello/"),
        ("/test/a/b/", "/a/b/"),
    ] {
        assert_eq!(r.find(path).unwrap().path_info, info, "{path}");
    }
    let all = router(&[("/...", "c")]);
    assert_eq!(all.find("/").unwrap().path_info, "/");
    assert_eq!(all.find("/1/2/3").unwrap().path_info, "/1/2/3");
    // An exact route has no path info, slash or not.
    let exact = router(&[("/health", "h")]);
    assert_eq!(exact.find("/health/").unwrap().path_info, "");
}

/// The headers the Spin 4.1 binary sent for the same routes: `spin-matched-route` is the based route (leading
/// `/` added, one trailing `/` dropped), the two component routes are the pattern as written, and a parameter's
/// header is its name lowercased with `_` as `-`.
#[test]
fn spin_headers_as_the_spin_binary_sent_them() {
    let r = router(&[
        ("/", "root"),
        ("/foo/", "foo"),
        ("users/:User_Id/x", "users"),
        ("/api/...", "api"),
        ("/w/*", "w"),
        ("/...", "all"),
    ]);
    let headers = |path: &str| {
        let m = r.find(path).unwrap();
        let h = m.spin_headers();
        let get = |name: &str| h.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        (
            get("spin-matched-route").unwrap(),
            get("spin-component-route").unwrap(),
            get("spin-raw-component-route").unwrap(),
            get("spin-path-info").unwrap(),
            h.iter()
                .filter(|(n, _)| n.starts_with("spin-path-match-"))
                .cloned()
                .collect::<Vec<_>>(),
        )
    };
    let s = |v: &str| v.to_owned();
    assert_eq!(headers("/"), (s(""), s("/"), s("/"), s(""), vec![]));
    assert_eq!(
        headers("/foo/"),
        (s("/foo"), s("/foo/"), s("/foo/"), s(""), vec![])
    );
    assert_eq!(
        headers("/users/42/x"),
        (
            s("/users/:User_Id/x"),
            s("users/:User_Id/x"),
            s("users/:User_Id/x"),
            s(""),
            vec![(s("spin-path-match-user-id"), s("42"))]
        )
    );
    assert_eq!(
        headers("/api/x"),
        (s("/api/..."), s("/api"), s("/api/..."), s("/x"), vec![])
    );
    assert_eq!(
        headers("/w/a/b/"),
        (s("/w/*"), s("/w/*"), s("/w/*"), s("/a/b/"), vec![])
    );
    assert_eq!(
        headers("/zzz"),
        (s("/..."), s(""), s("/..."), s("/zzz"), vec![])
    );
    assert_eq!(path_match_header("userid"), "spin-path-match-userid");
}

#[test]
fn a_trailing_star_is_a_wildcard_and_a_star_elsewhere_is_refused() {
    // Spin's `parse_route`: `/files/*` routes like `/files/...`.
    let r = router(&[("/files/*", "f")]);
    let m = r.find("/files/a/b").unwrap();
    assert_eq!(
        (m.route.component.as_str(), m.path_info.as_str()),
        ("f", "/a/b")
    );
    assert_eq!(r.find("/files").unwrap().path_info, "");
    // Spin's `spin-component-route` strips only `/...`.
    assert_eq!(m.route.base(), "/files/*");
    // Accepted by Spin, which panics on a request reaching them (`*`) or never matches them (`...`).
    for bad in ["/a/*/b", "/*/x", "/*.json", "/a/*/...", "/a/.../b"] {
        let e = Route::parse(bad, "x").unwrap_err().to_string();
        assert!(e.contains("may only be the last segment"), "{bad}: {e}");
    }
}

/// Spin refuses what routefinder cannot parse, and adds a leading `/` where it is missing.
#[test]
fn patterns_as_spin_reads_them() {
    for (bad, needle) in [
        ("/*x", "replace `*x` with `*`"),
        ("/a/:", "params must be named"),
    ] {
        let e = Route::parse(bad, "x").unwrap_err().to_string();
        assert!(e.contains(needle), "{bad}: {e}");
    }
    let r = router(&[("users/:id", "u"), ("", "root")]);
    assert_eq!(component(&r, "/users/7"), Some("u"));
    assert_eq!(component(&r, "/"), Some("root"));
    assert_eq!(r.find("/").unwrap().route.matched(), "");
}

/// A route written twice: the last one's component, in the first one's place (Spin's
/// `duplicate_routes_last_one_wins` and `duplicate_routes_reporting_is_faithful`).
#[test]
fn a_duplicate_route_goes_to_the_last_component_named() {
    let r = router(&[
        ("/", "first /"),
        ("/", "second /"),
        ("/foo", "first /foo"),
        ("/foo", "second /foo"),
        ("/...", "first /..."),
        ("/...", "second /..."),
    ]);
    assert_eq!(r.routes().len(), 3);
    assert_eq!(component(&r, "/foo"), Some("second /foo"));
    assert_eq!(component(&r, "/"), Some("second /"));
    assert_eq!(component(&r, "/bar"), Some("second /..."));
    let shown: Vec<(&str, &str, &str)> = r
        .duplicates()
        .iter()
        .map(|d| (d.route.as_str(), d.replaced.as_str(), d.effective.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("/", "first /", "second /"),
            ("/foo", "first /foo", "second /foo"),
            ("/...", "first /...", "second /..."),
        ]
    );
}

/// Spin's `reserved_routes_are_reserved` and `unreserved_routes_are_unreserved`.
#[test]
fn routes_under_the_well_known_prefix_are_reserved() {
    for (pattern, reserved) in [
        ("/.well-known/spin/...", true),
        ("/.well-known/spin/fie", true),
        ("/.well-known/spindle/...", false),
        ("/.well-known/spi/...", false),
        ("/.well-known/spin", false),
    ] {
        assert_eq!(
            Route::parse(pattern, "c").unwrap().is_reserved(),
            reserved,
            "{pattern}"
        );
    }
}
