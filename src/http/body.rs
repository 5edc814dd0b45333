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
    // A well-formed query goes straight into `T`, without the copies below. The result is the
    // same: every query type's fields take strings (`String` or a [`de`] parser), and a derived
    // `Deserialize` refuses a repeated or unknown field itself; whatever it refuses is parsed
    // again the long way, which names the field and what it allows.
    if let Ok(parsed) = serde_urlencoded::from_str::<T>(query) {
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
