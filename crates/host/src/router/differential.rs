//! The router against routefinder 0.5.4 itself, the router Spin 4.1 matches requests with: route sets of every
//! size (one B-tree node and several), drawn in many orders from patterns with literals, parameters, dots and
//! wildcards, must pick the same route for every path. Spin hands routefinder its routes as `Route::parse`
//! normalises them (a trailing `/...` as `/*`).

use super::*;

const POOL: [&str; 20] = [
    "/",
    "/api",
    "/api/...",
    "/:slug",
    "/.well-known/x/...",
    "/a/:b",
    "/a/b",
    "/a/b/...",
    "/:x/b",
    "/f/:name.json",
    "/f/:name",
    "/v1/esim/:iccid",
    "/v1/esim/...",
    "/v1/...",
    "/...",
    "/x.y",
    "/a/:b/c",
    "/:a/:b",
    "/.hidden",
    "/f/:name.:ext",
];

const PATHS: [&str; 22] = [
    "/",
    "/api",
    "/api/x",
    "/foo",
    "/.well-known/x/y",
    "/a/b",
    "/a/c",
    "/a/b/c",
    "/z/b",
    "/f/q.json",
    "/f/q",
    "/f/q.txt",
    "/v1/esim/123",
    "/v1/esim/123/x",
    "/v1/other",
    "/x.y",
    "/a/q/c",
    "/q/r",
    "/.hidden",
    "/api/",
    "/a/b/",
    "",
];

/// A small deterministic generator (xorshift), so that a failure names its seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn picks_what_routefinder_picks() {
    for seed in 1..=300u64 {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut pool: Vec<&str> = POOL.to_vec();
        // A shuffled prefix of the pool: 1 to all 20 routes, in a random manifest order.
        for i in (1..pool.len()).rev() {
            let j = usize::try_from(next(&mut state) % (i as u64 + 1)).unwrap();
            pool.swap(i, j);
        }
        let take = 1 + usize::try_from(next(&mut state) % pool.len() as u64).unwrap();
        let routes: Vec<(String, String)> = pool[..take]
            .iter()
            .map(|p| ((*p).to_owned(), (*p).to_owned()))
            .collect();
        let ours = Router::new(routes.clone()).unwrap();
        let mut theirs = routefinder::Router::new();
        for (pattern, component) in &routes {
            let route = Route::parse(pattern, component).unwrap();
            let source = match route.based.strip_suffix("/...") {
                Some(prefix) => format!("{prefix}/*"),
                None => route.based.clone(),
            };
            theirs.add(source.as_str(), component.clone()).unwrap();
        }
        for path in PATHS {
            let picked = ours.find(path).map(|m| m.route.component.as_str());
            let expected = theirs.best_match(path).map(|m| m.handler().as_str());
            assert_eq!(
                picked,
                expected,
                "seed {seed}, routes {:?}, path {path:?}",
                pool[..take].to_vec()
            );
        }
    }
}
