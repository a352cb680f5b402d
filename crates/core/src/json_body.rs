//! Request bodies as JSON values, with one rule `serde_json::Value` does not keep: a key given twice in an
//! object is an error, not "the last one wins" (`{"data_mb":1,"data_mb":100000}` is ambiguous, and a proxy
//! or a log that reads the first would see another request than we price).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parse `body` as JSON, refusing a key given twice in any object: the parser's or this rule's message.
pub fn parse(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice::<Unique>(body)
        .map(|u| u.0)
        .map_err(|e| e.to_string())
}

/// The body of a route that takes no parameters (suspend, resume, terminate, a token rotation, a refresh):
/// empty, or an empty JSON object. Otherwise the field to name and why: a JSON object's first key (the route
/// does not take it), or `body` (not a JSON object). Before, such routes took any body and acted.
pub fn no_params(body: &[u8]) -> Result<(), (String, String)> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match parse(body) {
        Ok(Value::Null) => Ok(()),
        Ok(Value::Object(m)) => match m.keys().next() {
            None => Ok(()),
            Some(k) => Err((
                k.clone(),
                format!("this route takes no parameters (got {k:?}): send an empty body or {{}}"),
            )),
        },
        Ok(_) => Err((
            "body".to_owned(),
            "the body must be empty or a JSON object ({})".to_owned(),
        )),
        Err(e) => Err(("body".to_owned(), format!("body is not JSON: {e}"))),
    }
}

/// Whether a request body's declared media type (every `Content-Type` header's value, `None` for one that is
/// not text) may be read as JSON: none is accepted (a minimal device may send none), and so is one
/// `application/json` or `application/*+json`, with parameters and in any case. Anything else (a form,
/// `text/plain`, a header that is not text, the header given twice) is refused with the reason, for a 415.
pub fn media_type_is_json(content_types: &[Option<&str>]) -> Result<(), String> {
    let value = match content_types {
        [] => return Ok(()),
        [Some(v)] => *v,
        [None] => return Err("Content-Type is not text; send application/json".to_owned()),
        _ => {
            return Err(
                "Content-Type is given more than once; send one, application/json".to_owned(),
            );
        }
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = match essence.split_once('/') {
        Some(("application", sub)) => sub == "json" || sub.ends_with("+json"),
        _ => false,
    };
    if json {
        Ok(())
    } else {
        Err(format!(
            "Content-Type {essence:?} is not JSON; send application/json"
        ))
    }
}

/// A JSON value whose objects have distinct keys.
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Unique(v) = map.next_value()?;
            if obj.contains_key(&key) {
                let shown: String = key.chars().take(100).collect();
                return Err(de::Error::custom(format!("key {shown:?} is given twice")));
            }
            obj.insert(key, v);
        }
        Ok(Value::Object(obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_without_parameters_takes_an_empty_body_or_object_only() {
        for ok in [&b""[..], b"  \n", b"{}", b" { } ", b"null"] {
            assert_eq!(no_params(ok), Ok(()), "{:?}", String::from_utf8_lossy(ok));
        }
        assert_eq!(no_params(br#"{"reason":"x"}"#).unwrap_err().0, "reason");
        for bad in [&b"[]"[..], b"\"x\"", b"reason=x", b"{"] {
            assert_eq!(no_params(bad).unwrap_err().0, "body");
        }
    }

    #[test]
    fn a_key_given_twice_is_refused_at_any_depth() {
        let e = parse(br#"{"data_mb":1,"data_mb":100000}"#).unwrap_err();
        assert!(e.contains("key \"data_mb\" is given twice"), "{e}");
        let e = parse(br#"{"a":[{"b":1,"b":2}]}"#).unwrap_err();
        assert!(e.contains("\"b\" is given twice"), "{e}");
        let e = parse(br#"{"a":{"c":{"d":1,"d":1}}}"#).unwrap_err();
        assert!(e.contains("\"d\""), "{e}");
    }

    /// Absent, `application/json` and `application/*+json` (with parameters, any case) are JSON; forms, text,
    /// a bare `json` and a header that is not text are not.
    #[test]
    fn only_json_media_types_are_read() {
        let json = Some("application/json");
        for ok in [
            &[][..],
            &[json],
            &[Some("Application/JSON; charset=UTF-8")],
            &[Some(" application/json ;charset=utf-8")],
            &[Some("application/merge-patch+json")],
        ] {
            assert_eq!(media_type_is_json(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            &[Some("application/x-www-form-urlencoded")][..],
            &[Some("text/plain")],
            &[Some("text/json")],
            &[Some("json")],
            &[Some("")],
            &[Some("application/jsonx")],
            &[Some("multipart/form-data; boundary=x")],
            &[None],
            &[json, json],
            &[json, Some("text/plain")],
        ] {
            let e = media_type_is_json(bad).unwrap_err();
            assert!(e.contains("application/json"), "{bad:?}: {e}");
        }
    }

    /// Everything else parses as `serde_json` parses it.
    #[test]
    fn distinct_keys_parse_as_serde_json_does() {
        for body in [
            r#"{"region":"us-west","data_mb":100,"chain":["base",null],"x":{"y":[1,-2,3.5,true]}}"#,
            r#"[]"#,
            r#""s""#,
            r#"18446744073709551615"#,
            r#"-9223372036854775808"#,
            r#"{"a":"\u00e9\n","b":{}}"#,
        ] {
            assert_eq!(
                parse(body.as_bytes()).unwrap(),
                serde_json::from_str::<Value>(body).unwrap(),
                "{body}"
            );
        }
        assert!(parse(b"{").is_err());
        assert!(parse(b"{} x").is_err());
    }
}
