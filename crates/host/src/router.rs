//! Spin's HTTP routing, as `spin up` 4.1 does it (`spin_http::routes` over routefinder 0.5.4, ported in [`spec`]):
//! exact routes (`/health`), trailing wildcards (`/v1/...`, or `/v1/*`, matching `/v1` and anything below it),
//! named parameters (`/users/:id`, also within a segment: `/:name.json`) and private routes (never matched from
//! outside, so never given here).
//!
//! Which route wins is routefinder's order, not a count of literals: the two patterns are compared segment by
//! segment and the first difference decides, a literal before a parameter before a wildcard (`/api/...` beats
//! `/:slug` for `/api`, the first segment deciding); then the pattern with fewer segments. Patterns that tie keep
//! spin.toml's order. A route written twice is kept once, at its first place, for the component named last (Spin
//! logs the same).
//!
//! A pattern is read as Spin reads it: a leading `/` is added if missing, one trailing `/` is dropped (`/foo/`
//! routes as `/foo`; `/` becomes the empty route, matching only `/`). `spin-path-info` is what a wildcard
//! matched, keeping a trailing slash as Spin does (`/test/...` gives `/` for `/test/` and `/hello/` for
//! `/test/hello/`): a component may answer `/dir/` and `/dir` differently.

#[cfg(test)]
mod differential;
mod spec;
#[cfg(test)]
mod tests;

use anyhow::bail;

use spec::{Segment, Spec};

/// Paths the host answers itself, before routing (Spin's `WELL_KNOWN_PREFIX`; [`crate::well_known`]).
pub const WELL_KNOWN_PREFIX: &str = "/.well-known/spin/";

/// One public route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// As written in spin.toml (Spin's raw route: `spin-raw-component-route`).
    pub pattern: String,
    /// Spin's based route: the pattern with its leading `/` (added if missing) and without one trailing `/`.
    based: String,
    spec: Spec,
    /// Component id.
    pub component: String,
}

/// A match: the route, the path below a wildcard (`spin-path-info`) and named parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match<'a> {
    /// The route.
    pub route: &'a Route,
    /// Path after the matched prefix, "" for exact routes.
    pub path_info: String,
    /// `:name` captures, in the pattern's order.
    pub params: Vec<(String, String)>,
}

/// A route written twice: the first one's place, the last one's component (Spin's `DuplicateRoute`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The route, as Spin names it (its based route, `/` for the empty one).
    pub route: String,
    /// The component that lost it.
    pub replaced: String,
    /// The component that serves it.
    pub effective: String,
}

impl Route {
    /// Parse a route pattern as Spin's `Router::build` does. Refused beyond what Spin refuses: a wildcard before
    /// the last segment, which Spin accepts but which panics its router on a request reaching it (`*`), or never
    /// matches (`...`).
    pub fn parse(pattern: &str, component: &str) -> anyhow::Result<Self> {
        let absolute = if pattern.starts_with('/') {
            pattern.to_owned()
        } else {
            format!("/{pattern}")
        };
        let based = absolute.strip_suffix('/').unwrap_or(&absolute).to_owned();
        // Spin's `parse_route`: a trailing `/...` is routefinder's `/*`.
        let source = match based.strip_suffix("/...") {
            Some(prefix) => format!("{prefix}/*"),
            None => based.clone(),
        };
        if let Some(p) = source.split('/').find(|p| *p == "..." || *p == "*")
            && (p == "..." || !source.ends_with("/*"))
        {
            bail!("route {pattern:?}: '{p}' (a wildcard) may only be the last segment");
        }
        let spec = match Spec::parse(&source) {
            Ok(spec) => spec,
            Err(e) => bail!("route {pattern:?} of component {component}: {e}"),
        };
        if spec.has_inner_wildcard() {
            bail!("route {pattern:?}: '*' (a wildcard) may only be the last segment");
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            based,
            spec,
            component: component.to_owned(),
        })
    }

    /// The raw route without its trailing `/...` (Spin's `spin-component-route`; like Spin, a trailing `/*` is
    /// kept).
    pub fn base(&self) -> String {
        self.pattern
            .strip_suffix("/...")
            .unwrap_or(&self.pattern)
            .to_owned()
    }

    /// Spin's based route (`spin-matched-route`): `/foo/` is `/foo`, `/` is "", `users/:id` is `/users/:id`.
    pub fn matched(&self) -> &str {
        &self.based
    }

    /// Whether Spin answers this route's paths itself ([`WELL_KNOWN_PREFIX`]).
    pub fn is_reserved(&self) -> bool {
        self.based.starts_with(WELL_KNOWN_PREFIX)
    }

    /// The match of `path`, if this route matches it.
    fn find<'a>(&'a self, path: &str) -> Option<Match<'a>> {
        let mut captures = self.spec.matches(path)?.into_iter();
        let mut params = Vec::new();
        let mut wildcard = None;
        for segment in &self.spec.segments {
            match segment {
                Segment::Param(name) => params.push((name.clone(), captures.next()?.to_owned())),
                Segment::Wildcard => wildcard = captures.next(),
                _ => {}
            }
        }
        // Spin's `trailing_wildcard`: routefinder drops a trailing slash, Spin puts it back (`/test/...`:
        // `/test` → "", `/test/` → "/", `/test/a` → "/a", `/test/a/` → "/a/").
        let path_info = wildcard.map_or_else(String::new, |rest| {
            match (rest.is_empty(), path.ends_with('/')) {
                (true, false) => String::new(),
                (true, true) => "/".to_owned(),
                (false, false) => format!("/{rest}"),
                (false, true) => format!("/{rest}/"),
            }
        });
        Some(Match {
            route: self,
            path_info,
            params,
        })
    }
}

/// The header Spin passes a `:name` capture in: `SPIN_PATH_MATCH_<NAME>` made a header name
/// (`spin-path-match-user-id` for `:User_Id`).
pub fn path_match_header(name: &str) -> String {
    format!(
        "spin-path-match-{}",
        name.to_ascii_lowercase().replace('_', "-")
    )
}

impl Match<'_> {
    /// The request headers Spin derives from the route (`spin-full-url`, `spin-base-path` and
    /// `spin-client-addr` come from the request).
    pub fn spin_headers(&self) -> Vec<(String, String)> {
        let mut headers = vec![
            ("spin-path-info".to_owned(), self.path_info.clone()),
            (
                "spin-matched-route".to_owned(),
                self.route.matched().to_owned(),
            ),
            (
                "spin-raw-component-route".to_owned(),
                self.route.pattern.clone(),
            ),
            ("spin-component-route".to_owned(), self.route.base()),
        ];
        headers.extend(
            self.params
                .iter()
                .map(|(name, value)| (path_match_header(name), value.clone())),
        );
        headers
    }
}

/// All public routes of an app.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// In the order they are tried.
    routes: Vec<Route>,
    duplicates: Vec<Duplicate>,
}

impl Router {
    /// Build from `(pattern, component)` pairs in spin.toml's order, as Spin's `Router::build` does, and warn
    /// of the routes that will never be reached (Spin logs the same: a route written twice, one under
    /// [`WELL_KNOWN_PREFIX`]).
    pub fn new(routes: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let mut unique: Vec<Route> = Vec::new();
        let mut duplicates = Vec::new();
        for (pattern, component) in routes {
            let route = Route::parse(&pattern, &component)?;
            // Spin keys its routes by the pattern as written: the later one replaces the earlier, in its place.
            match unique.iter_mut().find(|r| r.pattern == route.pattern) {
                Some(earlier) => {
                    let shown = if earlier.based.is_empty() {
                        "/"
                    } else {
                        &earlier.based
                    };
                    duplicates.push(Duplicate {
                        route: shown.to_owned(),
                        replaced: earlier.component.clone(),
                        effective: route.component.clone(),
                    });
                    *earlier = route;
                }
                None => unique.push(route),
            }
        }
        let order = spec::ranked(&unique.iter().map(|r| &r.spec).collect::<Vec<_>>());
        let mut slots: Vec<Option<Route>> = unique.into_iter().map(Some).collect();
        let sorted: Vec<Route> = order.into_iter().filter_map(|i| slots[i].take()).collect();
        let router = Self {
            routes: sorted,
            duplicates,
        };
        router.warn();
        Ok(router)
    }

    fn warn(&self) {
        for d in &self.duplicates {
            tracing::warn!(
                "route {} of component {} duplicates the same route of {}, written later, and will never be used",
                d.route,
                d.replaced,
                d.effective
            );
        }
        for (i, r) in self.routes.iter().enumerate() {
            // Written differently, routed the same (`/a` and `/a/`, `/a/*` and `/a/...`): the first one wins.
            if let Some(first) = self.routes[..i].iter().find(|e| e.spec == r.spec) {
                tracing::warn!(
                    "route {:?} of component {} will never be used: {:?} of {}, earlier in spin.toml, matches the same paths",
                    r.pattern,
                    r.component,
                    first.pattern,
                    first.component
                );
            }
            if r.is_reserved() {
                tracing::warn!(
                    "route {:?} of component {} will never be reached: paths under {WELL_KNOWN_PREFIX} are answered by the host, as by Spin",
                    r.pattern,
                    r.component
                );
            }
        }
    }

    /// The best route for a request path.
    pub fn find(&self, path: &str) -> Option<Match<'_>> {
        self.routes.iter().find_map(|r| r.find(path))
    }

    /// Every route, in the order they are tried.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The routes written twice.
    pub fn duplicates(&self) -> &[Duplicate] {
        &self.duplicates
    }
}
