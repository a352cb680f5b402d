//! The route patterns of routefinder 0.5.4, the router Spin 4.1 matches requests with: parsing, matching and
//! precedence, ported rule for rule so that this host picks the route `spin up` picks for every path, oddities
//! included (a path's leading and trailing slashes are ignored, its inner ones are not; a `:param` stops at the
//! next `.` when the pattern has one; literal segments compare equal whatever their text).

use std::cmp::Ordering;

/// One piece of a parsed pattern (routefinder's `Segment`): `/hello/:planet/*` is `[Exact("hello"), Slash,
/// Param("planet"), Slash, Wildcard]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    /// Matches one `/`.
    Slash,
    /// Matches one `.`.
    Dot,
    /// Matches this text.
    Exact(String),
    /// `:name`: up to the next `/`, or to the next `.` when a dot follows in the pattern.
    Param(String),
    /// `*`: the rest of the path, possibly nothing.
    Wildcard,
}

/// A parsed pattern (routefinder's `RouteSpec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Spec {
    pub(super) segments: Vec<Segment>,
}

impl Spec {
    /// routefinder's `RouteSpec::from_str`, errors worded as there.
    pub(super) fn parse(source: &str) -> Result<Self, String> {
        let trimmed = source.trim_start_matches('/').trim_end_matches('/');
        let mut segments: Vec<Segment> = Vec::new();
        let mut last_index = 0;
        let ends = trimmed
            .match_indices(['.', '/'])
            .map(|(i, _)| i)
            .chain(std::iter::once(trimmed.len()));
        for index in ends {
            // routefinder reads the separator as the `last_index - 1`th *character* of a byte offset: the same
            // for ASCII patterns, and kept as is for the others.
            let first_char = if last_index == 0 {
                None
            } else {
                trimmed.chars().nth(last_index - 1)
            };
            let section = trimmed.get(last_index..index).unwrap_or("");
            last_index = index + 1;
            let segment = match (section.chars().next(), section.len()) {
                (Some('*'), 1) => Some(Segment::Wildcard),
                (Some('*'), _) => {
                    return Err(format!(
                        "since there can only be one wildcard, it doesn't need a name. replace `{section}` with `*`"
                    ));
                }
                (Some(':'), 1) => return Err("params must be named".to_owned()),
                (Some(':'), _) => Some(Segment::Param(section[1..].to_owned())),
                (None, 0) => None,
                _ => Some(Segment::Exact(section.to_owned())),
            };
            if first_char == Some('.') {
                match segments.last_mut() {
                    Some(Segment::Exact(s)) => s.push('.'),
                    _ => segments.push(Segment::Dot),
                }
            }
            if let Some(segment) = segment {
                if first_char == Some('/') {
                    segments.push(Segment::Slash);
                }
                segments.push(segment);
            }
        }
        Ok(Self { segments })
    }

    /// Whether a `*` comes before the end: routefinder panics on a request that reaches such a segment, so the
    /// host refuses the pattern when the app loads.
    pub(super) fn has_inner_wildcard(&self) -> bool {
        self.segments
            .iter()
            .rev()
            .skip(1)
            .any(|s| *s == Segment::Wildcard)
    }

    fn dots(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Dot))
            .count()
    }

    /// routefinder's `RouteSpec::matches`: the captures (each `:param`, then the wildcard's), if `path` matches.
    pub(super) fn matches<'p>(&self, path: &'p str) -> Option<Vec<&'p str>> {
        let mut path = path.trim_start_matches('/').trim_end_matches('/');
        let mut captures = Vec::new();
        let mut peek = self.segments.iter().peekable();
        while let Some(segment) = peek.next() {
            path = match segment {
                Segment::Exact(e) => path.strip_prefix(e.as_str())?,
                Segment::Param(_) => {
                    if path.is_empty() {
                        return None;
                    }
                    match peek.peek() {
                        None | Some(Segment::Slash) => {
                            let capture = path.split('/').next()?;
                            captures.push(capture);
                            &path[capture.len()..]
                        }
                        Some(Segment::Dot) => {
                            let index = path.find(['.', '/'])?;
                            // As routefinder: the index is a byte offset, read as a character count.
                            if path.chars().nth(index) != Some('.') {
                                return None;
                            }
                            captures.push(&path[..index]);
                            // The dot is left for the `Dot` segment to match.
                            &path[index..]
                        }
                        // Never parsed: a param is always followed by a separator or the end.
                        Some(_) => return None,
                    }
                }
                Segment::Wildcard => {
                    // Refused when the app loads ([`Spec::has_inner_wildcard`]) where routefinder would panic.
                    if peek.peek().is_some() {
                        return None;
                    }
                    captures.push(path);
                    ""
                }
                Segment::Slash => match (path.starts_with('/'), peek.peek()) {
                    (true, Some(_)) => &path[1..],
                    (false, None | Some(Segment::Wildcard)) if path.is_empty() => path,
                    _ => return None,
                },
                Segment::Dot => path.strip_prefix('.')?,
            };
        }
        (path.is_empty() || path == "/").then_some(captures)
    }
}

/// routefinder's `Segment` order, including its asymmetries: `Exact > Param > Wildcard > separators`, every
/// literal equal to every other.
fn segment_cmp(a: &Segment, b: &Segment) -> Ordering {
    use Ordering::{Equal, Greater, Less};
    use Segment::{Dot, Exact, Param, Slash, Wildcard};
    match (a, b) {
        (Exact(_), Exact(_))
        | (Slash | Dot, Slash | Dot)
        | (Param(_), Param(_))
        | (Wildcard, Wildcard) => Equal,
        (Dot | Exact(_), _) => Greater,
        (Param(_), Exact(_)) => Less,
        (Param(_), _) => Greater,
        (Wildcard, Exact(_) | Param(_)) => Less,
        (Wildcard, _) => Greater,
        (Slash, _) => Less,
    }
}

/// routefinder's `Ord for RouteSpec`: `Less` sorts first, i.e. is tried first. Segment by segment, the first
/// difference decides; then more dots; then fewer segments. Never `Equal`: two routes that tie compare `Greater`
/// both ways, so the one added later sorts after ([`ranked`]).
pub(super) fn cmp(a: &Spec, b: &Spec) -> Ordering {
    a.segments
        .iter()
        .zip(&b.segments)
        .map(|(mine, theirs)| segment_cmp(mine, theirs))
        .chain(std::iter::once_with(|| a.dots().cmp(&b.dots())))
        .chain(std::iter::once_with(|| {
            b.segments.len().cmp(&a.segments.len())
        }))
        .find(|c| *c != Ordering::Equal)
        .unwrap_or(Ordering::Less)
        .reverse()
}

/// The order routefinder tries `specs` in (given in the order they are added): the order of a `BTreeMap` keyed by
/// them under [`cmp`], as routefinder keeps its routes, built here the same way. [`cmp`] is not a consistent
/// order (a `Dot` compares `Greater` with everything and everything with it), so where the map puts a route
/// depends on the tree's shape once it outgrows one node: only the same map, filled in the same order, picks
/// what Spin picks in every case. The indices of `specs`, first tried first.
pub(super) fn ranked(specs: &[&Spec]) -> Vec<usize> {
    struct Key<'a>(&'a Spec, usize);
    impl PartialEq for Key<'_> {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other) == Ordering::Equal
        }
    }
    impl Eq for Key<'_> {}
    impl PartialOrd for Key<'_> {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Key<'_> {
        fn cmp(&self, other: &Self) -> Ordering {
            cmp(self.0, other.0)
        }
    }
    let mut map = std::collections::BTreeMap::new();
    for (i, spec) in specs.iter().enumerate() {
        // Never `Equal`: no insert replaces another.
        map.insert(Key(spec, i), ());
    }
    map.into_keys().map(|k| k.1).collect()
}
