//! URL → what is being asked for.

use crate::kinds::{KindId, Registry};

/// A parsed request target.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Route {
    /// `/version`
    Version,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`
    Resources(String, String),
    /// A resource collection, object or subresource.
    Resource(ResourceRoute),
    /// `/_kubesim/...`
    Admin(String),
    /// `/healthz`, `/readyz`, `/livez`
    Health,
    /// Anything else.
    NotFound,
}

/// A request on objects of one kind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResourceRoute {
    pub kind: KindId,
    /// Namespace from the URL.
    pub ns: Option<String>,
    /// Object name from the URL.
    pub name: Option<String>,
    /// `status` for the status subresource.
    pub sub: Option<String>,
    /// Legacy `/watch/` path prefix.
    pub legacy_watch: bool,
}

pub(crate) fn parse(path: &str, reg: &Registry) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "readyz" | "livez", ..] => Route::Health,
        ["_kubesim", rest @ ..] => Route::Admin(rest.join("/")),
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["apis", g] => {
            if reg.groups().iter().any(|(x, _)| x == g) {
                Route::Group(g.to_string())
            } else {
                Route::NotFound
            }
        }
        ["api", v, rest @ ..] => resource("", v, rest, reg),
        ["apis", g, v, rest @ ..] => resource(g, v, rest, reg),
        _ => Route::NotFound,
    }
}

fn resource(group: &str, version: &str, rest: &[&str], reg: &Registry) -> Route {
    if reg.in_group_version(group, version).next().is_none() {
        return Route::NotFound;
    }
    let (legacy_watch, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    if rest.is_empty() {
        return if legacy_watch {
            Route::NotFound
        } else {
            Route::Resources(group.to_string(), version.to_string())
        };
    }
    // `namespaces/{ns}/{plural}/...` unless it is the Namespace object itself (`namespaces/{name}[/status]`).
    let (ns, rest) = match rest {
        ["namespaces", ns, plural, r @ ..]
            if !(group.is_empty() && matches!(*plural, "status" | "finalize") && r.is_empty()) =>
        {
            (Some(ns.to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(r);
                v
            })
        }
        r => (None, r.to_vec()),
    };
    let Some(kind) = reg.by_resource(group, version, rest[0]) else {
        return Route::NotFound;
    };
    let namespaced = reg.get(kind).spec.namespaced;
    if ns.is_some() && !namespaced {
        return Route::NotFound;
    }
    let (name, sub) = match rest.as_slice() {
        [_] => (None, None),
        [_, name] => (Some(name.to_string()), None),
        [_, name, "status"] if !legacy_watch => {
            (Some(name.to_string()), Some("status".to_string()))
        }
        _ => return Route::NotFound,
    };
    // Namespaced objects are only addressable by name inside their namespace.
    if namespaced && ns.is_none() && name.is_some() {
        return Route::NotFound;
    }
    Route::Resource(ResourceRoute {
        kind,
        ns,
        name,
        sub,
        legacy_watch,
    })
}

/// Decodes a query string into ordered pairs.
pub(crate) fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = q else { return Vec::new() };
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_kinds_namespaces_and_names() {
        let reg = Registry::new(&[]);
        let pods = reg.by_resource("", "v1", "pods").unwrap();
        let nsk = reg.namespace_kind();
        let r = |p| parse(p, &reg);
        assert_eq!(
            r("/api/v1/pods"),
            Route::Resource(ResourceRoute {
                kind: pods,
                ns: None,
                name: None,
                sub: None,
                legacy_watch: false
            })
        );
        assert_eq!(
            r("/api/v1/namespaces/a/pods/b/status"),
            Route::Resource(ResourceRoute {
                kind: pods,
                ns: Some("a".into()),
                name: Some("b".into()),
                sub: Some("status".into()),
                legacy_watch: false
            })
        );
        assert_eq!(
            r("/api/v1/namespaces/a"),
            Route::Resource(ResourceRoute {
                kind: nsk,
                ns: None,
                name: Some("a".into()),
                sub: None,
                legacy_watch: false
            })
        );
        assert_eq!(
            r("/api/v1/namespaces/a/status"),
            Route::Resource(ResourceRoute {
                kind: nsk,
                ns: None,
                name: Some("a".into()),
                sub: Some("status".into()),
                legacy_watch: false
            })
        );
        assert!(matches!(
            r("/api/v1/watch/namespaces/a/pods"),
            Route::Resource(ResourceRoute {
                legacy_watch: true,
                ..
            })
        ));
        assert_eq!(r("/api/v1/pods/x"), Route::NotFound);
        assert_eq!(r("/api/v1/namespaces/a/nodes"), Route::NotFound);
        assert_eq!(r("/apis/nope/v1/things"), Route::NotFound);
        assert_eq!(
            r("/apis/apps/v1"),
            Route::Resources("apps".into(), "v1".into())
        );
    }

    #[test]
    fn query_strings_are_percent_decoded() {
        assert_eq!(
            parse_query(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch")),
            vec![
                ("labelSelector".into(), "app=web,tier in (a)".into()),
                ("watch".into(), "".into())
            ]
        );
    }
}
