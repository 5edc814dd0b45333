//! Request-body and query extractors that turn every malformed input into an [`ApiError`] with
//! a `detail` naming the field: 415 for a body that is not JSON, 413 past the size limit, 400
//! for malformed JSON, wrong types and unknown fields.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::limits::BODY_LIMIT;

/// A JSON object body deserialised into `T` (which should deny unknown fields).
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Allowed> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                detail: "the request body must be JSON: send Content-Type: application/json".to_owned(),
            });
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    detail: format!("the request body is larger than the limit of {BODY_LIMIT} bytes"),
                }
            } else {
                ApiError::bad_request(format!("could not read the request body: {rejection}"))
            }
        })?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::bad_request(format!(
                "the request body must be a JSON object with any of: {}",
                T::FIELDS.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ")
            )));
        }
        from_value::<T>(value).map(JsonBody)
    }
}

/// An optional JSON body: no body at all (and no Content-Type) is `None`, and so is a JSON
/// `null` (what the OpenAPI document's optional body allows); anything else must be a valid JSON
/// object, exactly as for [`JsonBody`].
impl<S: Send + Sync, T: DeserializeOwned + Allowed> OptionalFromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, ApiError> {
        if req.headers().contains_key(header::CONTENT_TYPE) {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, crate::limits::BODY_LIMIT)
                .await
                .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
            if bytes.trim_ascii() == b"null" {
                return Ok(None);
            }
            let req = Request::from_parts(parts, axum::body::Body::from(bytes));
            return <Self as FromRequest<S>>::from_request(req, state).await.map(Some);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError { status: r.status(), detail: format!("could not read the request body: {r}") })?;
        if bytes.is_empty() {
            Ok(None)
        } else {
            Err(ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                detail: "the request body must be JSON: send Content-Type: application/json".to_owned(),
            })
        }
    }
}

/// Fields of a request type and the sentence saying what each allows, for error details.
pub(crate) trait Allowed {
    /// `(field, allowed values)` pairs.
    const FIELDS: &'static [(&'static str, &'static str)];
}

/// Deserialises a JSON value, naming the offending field and what it allows on failure.
pub(crate) fn from_value<T: DeserializeOwned + Allowed>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner().to_string();
        if inner.starts_with("unknown field") {
            let name = inner.split('`').nth(1).unwrap_or("?");
            let allowed = T::FIELDS.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ");
            let allowed = if allowed.is_empty() { "none".to_owned() } else { allowed };
            return ApiError::bad_request(format!("unknown field {name:?}; allowed fields: {allowed}"));
        }
        let allowed = T::FIELDS.iter().find(|(f, _)| *f == field).map(|(_, a)| *a);
        match allowed {
            Some(a) => ApiError::bad_request(format!("{field}: {inner}; allowed: {a}")),
            None => ApiError::bad_request(format!("{field}: {inner}")),
        }
    })
}

/// Query parameters deserialised into `T`, with unknown parameters rejected.
#[derive(Debug)]
pub(crate) struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Allowed> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or("")).map(QueryParams)
    }
}

/// Parses a query string into `T`: each parameter at most once, values as strings for `T`'s
/// fields to parse, unknown parameters named with the allowed ones.
pub(crate) fn parse_query<T: DeserializeOwned + Allowed>(query: &str) -> Result<T, ApiError> {
    // A well-formed query without escapes goes straight into `T`, its values lent where they
    // lie. The result is the same: every query type's fields take strings (`String` or a [`de`]
    // parser), and a derived `Deserialize` refuses a repeated or unknown field itself; whatever
    // it refuses (or a query with escapes) is parsed again the long way, which decodes it and
    // names the field and what it allows.
    if let Some(parsed) = plain::parse::<T>(query) {
        return Ok(parsed);
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("the query string is malformed: {e}")))?;
    let mut map = serde_json::Map::new();
    for (k, v) in pairs {
        if map.contains_key(&k) {
            return Err(ApiError::bad_request(format!("query parameter {k:?} is given more than once")));
        }
        // Values stay strings; the target type parses them (see `de::from_str`).
        map.insert(k, serde_json::Value::String(v));
    }
    from_value::<T>(serde_json::Value::Object(map)).map_err(|mut e| {
        if let Some(rest) = e.detail.strip_prefix("unknown field") {
            e.detail = format!("unknown query parameter{}", rest.replace("allowed fields", "allowed parameters"));
        }
        e
    })
}

/// The fast path of [`parse_query`]: a query with nothing to decode (no `%`, no `+`) is its own
/// pairs, split as `application/x-www-form-urlencoded` splits them (on `&`, empty pieces
/// skipped, then at the first `=`), so each value is handed to `T` where it lies instead of
/// being decoded into a copy.
mod plain {
    use serde::de::value::{Error, MapDeserializer};
    use serde::de::{Deserializer, IntoDeserializer, Visitor};
    use serde::{Deserialize, forward_to_deserialize_any};

    /// `query` as `T`; `None` when it has escapes or `T` refuses it.
    pub(super) fn parse<T: for<'de> Deserialize<'de>>(query: &str) -> Option<T> {
        if memchr::memchr2(b'%', b'+', query.as_bytes()).is_some() {
            return None;
        }
        let pairs = pieces(query, b'&').filter(|p| !p.is_empty()).map(|p| {
            let (k, v) = pieces(p, b'=').next().map_or((p, ""), |k| (k, p.get(k.len() + 1..).unwrap_or("")));
            (k, Value(v))
        });
        T::deserialize(MapDeserializer::<_, Error>::new(pairs)).ok()
    }

    /// `s` cut at each `sep` (an ASCII byte), as `str::split` cuts it: a plain byte loop, which
    /// for a query's few short pieces costs less than `split`'s searcher.
    fn pieces(s: &str, sep: u8) -> impl Iterator<Item = &str> {
        let mut rest = Some(s);
        std::iter::from_fn(move || {
            let r = rest?;
            match r.bytes().position(|b| b == sep) {
                Some(at) => {
                    rest = r.get(at + 1..);
                    r.get(..at)
                }
                None => rest.take(),
            }
        })
    }

    /// A value as a form gives it: a string, and present (`Some`) when asked for an option.
    struct Value<'a>(&'a str);

    impl<'de> IntoDeserializer<'de, Error> for Value<'_> {
        type Deserializer = Self;
        fn into_deserializer(self) -> Self {
            self
        }
    }

    impl<'de> Deserializer<'de> for Value<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_str(self.0)
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_some(self)
        }

        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
            ignored_any
        }
    }
}

/// Helpers for query fields, which arrive as strings.
pub(crate) mod de {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::Deserializer;
    use serde::de::{Error, Visitor};

    /// Parses an optional number from a query string value, rejecting NaN and infinities.
    pub(crate) fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        parse_str(d, |s| {
            let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
            if !v.is_finite() {
                return Err(format!("{s:?} is not a finite number"));
            }
            Ok(Some(v))
        })
    }

    /// Parses an optional non-negative integer from a query string value.
    pub(crate) fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        parse_str(d, |s| s.trim().parse().map(Some).map_err(|_| format!("{s:?} is not a whole number")))
    }

    /// Parses an optional boolean (`true`/`false`, `1`/`0`) from a query string value.
    pub(crate) fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        parse_str(d, |s| match s.trim() {
            t if t.eq_ignore_ascii_case("true") || t == "1" => Ok(Some(true)),
            t if t.eq_ignore_ascii_case("false") || t == "0" => Ok(Some(false)),
            _ => Err(format!("{s:?} is not a boolean")),
        })
    }

    /// Runs `parse` on a string value where it lies (a query's unescaped values are lent, not
    /// copied); its error becomes the deserializer's.
    fn parse_str<'de, D: Deserializer<'de>, T>(
        d: D,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, D::Error> {
        struct Str<F, T>(F, PhantomData<T>);
        impl<F: FnOnce(&str) -> Result<T, String>, T> Visitor<'_> for Str<F, T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<T, E> {
                (self.0)(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Str(parse, PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::plain;
    use crate::http::decisions::ResourceCheckQuery;

    /// The fast path gives what serde_urlencoded gives, on every query without escapes (and
    /// leaves those with escapes to it).
    #[test]
    fn a_plain_query_parses_as_the_long_way_parses_it() {
        let keys = [
            "width",
            "height",
            "frames",
            "workload",
            "model_loaded",
            "vram_required_gb",
            "gpus",
            "gpu_indices",
            "x",
            "",
        ];
        let values = ["832", "0", "true", "a=b", "", "-1", "1e3", "é", "0,1", "inf"];
        let mut queries: Vec<String> =
            ["", "&&", "width=832&&height=480&", "workload", "=x", "width=832&width=16", "%77idth=832", "workload=a+b"]
                .map(str::to_owned)
                .to_vec();
        // A fixed pseudo-random walk over pairs, separators and missing `=`.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % n
        };
        for _ in 0..5_000 {
            let mut q = String::new();
            for _ in 0..next(5) {
                q.push_str(["&", "&&", ""][next(3)]);
                q.push_str(keys[next(keys.len())]);
                if next(6) > 0 {
                    q.push('=');
                    q.push_str(values[next(values.len())]);
                }
            }
            queries.push(q);
        }
        let mut fast_taken = 0;
        for q in &queries {
            let slow = serde_urlencoded::from_str::<ResourceCheckQuery>(q).ok();
            match plain::parse::<ResourceCheckQuery>(q) {
                Some(fast) => {
                    fast_taken += 1;
                    assert_eq!(Some(format!("{fast:?}")), slow.map(|s| format!("{s:?}")), "{q:?}");
                }
                None if q.contains(['%', '+']) => {}
                None => assert!(slow.is_none(), "{q:?}: refused by the fast path only"),
            }
        }
        assert!(fast_taken > 500, "the fast path took {fast_taken} queries");
        assert!(plain::parse::<ResourceCheckQuery>("%77idth=832").is_none());
    }
}
