//! Spin's HTTP routing: exact routes (`/health`), trailing wildcards (`/v1/...`, matching `/v1` and anything
//! below it; Spin's `parse_route` reads a trailing `/*` the same way), named parameters (`/users/:id`) and
//! private routes (never matched from outside). The most specific match wins: more literal segments beat
//! parameters, parameters beat wildcards, longer beats shorter.
//!
//! `spin-path-info` is what a wildcard matched, keeping a trailing slash as Spin does (`/test/...` gives `/` for
//! `/test/` and `/hello/` for `/test/hello/`): a component may answer `/dir/` and `/dir` differently.

use anyhow::{bail, ensure};

/// One public route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// As written in spin.toml.
    pub pattern: String,
    segments: Vec<Segment>,
    wildcard: bool,
    /// Component id.
    pub component: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A match: the route, the path below a wildcard (`spin-path-info`) and named parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match<'a> {
    /// The route.
    pub route: &'a Route,
    /// Path after the matched prefix, "" for exact routes.
    pub path_info: String,
    /// `:name` captures.
    pub params: Vec<(String, String)>,
}

impl Route {
    /// Parse a route pattern.
    pub fn parse(pattern: &str, component: &str) -> anyhow::Result<Self> {
        ensure!(
            pattern.starts_with('/'),
            "route {pattern:?} must start with '/'"
        );
        let mut parts: Vec<&str> = pattern
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        // Spin's `parse_route` takes a trailing `/...` or `/*` as the wildcard (its router, routefinder, spells
        // it `*`). A `*` anywhere else is refused: served as a literal, it would match only a literal `*`.
        let wildcard = matches!(parts.last(), Some(&"..." | &"*"));
        if wildcard {
            parts.pop();
        }
        let segments = parts
            .into_iter()
            .map(|p| match p.strip_prefix(':') {
                Some(name) if !name.is_empty() => Ok(Segment::Param(name.to_owned())),
                Some(_) => bail!("route {pattern:?} has an unnamed parameter"),
                None if p == "..." || p == "*" => {
                    bail!("route {pattern:?}: '{p}' (a wildcard) may only be the last segment")
                }
                None => Ok(Segment::Literal(p.to_owned())),
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            pattern: pattern.to_owned(),
            segments,
            wildcard,
            component: component.to_owned(),
        })
    }

    /// The route without its trailing `/...` (Spin's `spin-component-route`; like Spin, a trailing `/*` is kept).
    pub fn base(&self) -> String {
        self.pattern
            .strip_suffix("/...")
            .unwrap_or(&self.pattern)
            .to_owned()
    }

    /// `path`: the request path's non-empty segments; `trailing_slash`: whether the path ends with `/`.
    fn matches(
        &self,
        path: &[&str],
        trailing_slash: bool,
    ) -> Option<(String, Vec<(String, String)>)> {
        if path.len() < self.segments.len() || (!self.wildcard && path.len() != self.segments.len())
        {
            return None;
        }
        let mut params = Vec::new();
        for (seg, part) in self.segments.iter().zip(path) {
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), (*part).to_owned())),
            }
        }
        let rest = &path[self.segments.len()..];
        // Spin's `trailing_wildcard`: an exact route has no path info; a wildcard's keeps the request's trailing
        // slash (`/test/...`: `/test` → "", `/test/` → "/", `/test/a` → "/a", `/test/a/` → "/a/").
        let info = match (self.wildcard, rest.is_empty(), trailing_slash) {
            (false, ..) | (true, true, false) => String::new(),
            (true, true, true) => "/".to_owned(),
            (true, false, false) => format!("/{}", rest.join("/")),
            (true, false, true) => format!("/{}/", rest.join("/")),
        };
        Some((info, params))
    }

    /// Sort key: higher is more specific.
    fn specificity(&self) -> (bool, usize, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (!self.wildcard, literals, self.segments.len())
    }
}

/// All public routes of an app.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Build from `(pattern, component)` pairs; duplicate patterns are an error, as in Spin.
    pub fn new(routes: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let mut out: Vec<Route> = Vec::new();
        for (pattern, component) in routes {
            let route = Route::parse(&pattern, &component)?;
            if let Some(dup) = out
                .iter()
                .find(|r| r.segments == route.segments && r.wildcard == route.wildcard)
            {
                bail!(
                    "route {pattern:?} of {component} duplicates {:?} of {}",
                    dup.pattern,
                    dup.component
                );
            }
            out.push(route);
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        Ok(Self { routes: out })
    }

    /// The best route for a request path.
    pub fn find(&self, path: &str) -> Option<Match<'_>> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let trailing_slash = path.ends_with('/');
        self.routes.iter().find_map(|r| {
            r.matches(&parts, trailing_slash)
                .map(|(path_info, params)| Match {
                    route: r,
                    path_info,
                    params,
                })
        })
    }

    /// Every route, most specific first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new(
            [
                ("/v1/...", "api"),
                ("/v1/special", "special"),
                ("/users/:id", "users"),
                ("/users/:id/...", "user-tree"),
                ("/...", "fallback"),
                ("/health", "health"),
            ]
            .map(|(p, c)| (p.to_owned(), c.to_owned())),
        )
        .unwrap()
    }

    #[test]
    fn most_specific_wins() {
        let r = router();
        let m = r.find("/v1/esim/activate").unwrap();
        assert_eq!(
            (m.route.component.as_str(), m.path_info.as_str()),
            ("api", "/esim/activate")
        );
        assert_eq!(r.find("/v1").unwrap().route.component, "api");
        assert_eq!(r.find("/v1/special").unwrap().route.component, "special");
        assert_eq!(r.find("/health").unwrap().route.component, "health");
        assert_eq!(r.find("/health/x").unwrap().route.component, "fallback");
        let u = r.find("/users/42").unwrap();
        assert_eq!(
            (u.route.component.as_str(), u.params.clone()),
            ("users", vec![("id".to_owned(), "42".to_owned())])
        );
        assert_eq!(
            r.find("/users/42/cards").unwrap().route.component,
            "user-tree"
        );
        assert_eq!(
            r.find("/anything/else").unwrap().route.component,
            "fallback"
        );
        assert_eq!(r.find("/v1/...").unwrap().route.base(), "/v1");
    }

    #[test]
    fn exact_routes_do_not_match_below() {
        let r = Router::new([("/health".to_owned(), "h".to_owned())]).unwrap();
        assert!(r.find("/health/more").is_none());
        assert!(r.find("/").is_none());
        assert!(r.find("/health/").is_some());
    }

    #[test]
    fn path_info_keeps_a_trailing_slash_as_spin_does() {
        // Spin's `trailing_wildcard_respects_trailing_slash` and `trailing_wildcard_is_captured`.
        let r = Router::new([("/test/...".to_owned(), "c".to_owned())]).unwrap();
        for (path, info) in [
            ("/test", ""),
            ("/test/", "/"),
            ("/test/hello", "/hello"),
            ("/test/hello/", "/hello/"),
            ("/test/a/b/", "/a/b/"),
        ] {
            assert_eq!(r.find(path).unwrap().path_info, info, "{path}");
        }
        let all = Router::new([("/...".to_owned(), "c".to_owned())]).unwrap();
        assert_eq!(all.find("/").unwrap().path_info, "/");
        assert_eq!(all.find("/1/2/3").unwrap().path_info, "/1/2/3");
        // An exact route has no path info, slash or not.
        let exact = Router::new([("/health".to_owned(), "h".to_owned())]).unwrap();
        assert_eq!(exact.find("/health/").unwrap().path_info, "");
    }

    #[test]
    fn a_trailing_star_is_a_wildcard_and_a_star_elsewhere_is_refused() {
        // Spin's `parse_route`: `/files/*` routes like `/files/...`.
        let r = Router::new([("/files/*".to_owned(), "f".to_owned())]).unwrap();
        let m = r.find("/files/a/b").unwrap();
        assert_eq!(
            (m.route.component.as_str(), m.path_info.as_str()),
            ("f", "/a/b")
        );
        assert_eq!(r.find("/files").unwrap().path_info, "");
        // Spin's `spin-component-route` strips only `/...`.
        assert_eq!(m.route.base(), "/files/*");
        // One wildcard spelled two ways is one route twice.
        assert!(
            Router::new([
                ("/files/*".to_owned(), "f".to_owned()),
                ("/files/...".to_owned(), "g".to_owned())
            ])
            .is_err()
        );
        for bad in ["/a/*/b", "/*/x"] {
            let e = Route::parse(bad, "x").unwrap_err().to_string();
            assert!(e.contains("may only be the last segment"), "{bad}: {e}");
        }
    }

    #[test]
    fn duplicates_and_bad_patterns_are_refused() {
        assert!(
            Router::new([
                ("/a".to_owned(), "x".to_owned()),
                ("/a/".to_owned(), "y".to_owned())
            ])
            .is_err()
        );
        assert!(Route::parse("/a/.../b", "x").is_err());
        assert!(Route::parse("/a/:", "x").is_err());
        assert!(Route::parse("a", "x").is_err());
    }
}
