//! What every context's routes share: request checks that turn bad input into 400s with a
//! reason, and JSON responses that say whether they came from the cache.

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::gateway::cache::Lookup;
use crate::gateway::problem::Problem;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest idempotency key or cursor accepted (the services' own limit).
pub const MAX_TOKEN_LEN: usize = 200;
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// `?limit=&cursor=` of a listing.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl ListQuery {
    /// The page size and token to ask the service for.
    pub fn checked(self) -> Result<(i32, String), Problem> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Problem::bad_request(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )));
        }
        let cursor = self.cursor.unwrap_or_default();
        if cursor.len() > MAX_TOKEN_LEN {
            return Err(Problem::bad_request("cursor is not one this API issued"));
        }
        Ok((limit as i32, cursor))
    }
}

/// The optional `Idempotency-Key` header: 1 to 200 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default().trim();
    if key.is_empty() || key.len() > MAX_TOKEN_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_TOKEN_LEN} visible ASCII characters"
        )));
    }
    Ok(Some(key.to_string()))
}

/// Whether the client asked for a response fresh from the service with `Cache-Control:
/// no-cache` (RFC 9111 5.2.1.4): such a read neither reads nor fills the cache.
pub fn wants_fresh(headers: &HeaderMap) -> bool {
    headers.get_all(header::CACHE_CONTROL).iter().any(|value| {
        value.to_str().is_ok_and(|directives| {
            directives
                .split(',')
                .any(|directive| directive.trim().eq_ignore_ascii_case("no-cache"))
        })
    })
}

/// A resource id: a UUID in its hyphenated form, returned lower-case (the cache key).
pub fn resource_id(id: &str) -> Result<String, Problem> {
    match uuid::Uuid::try_parse(id) {
        Ok(parsed) if id.len() == 36 => Ok(parsed.hyphenated().to_string()),
        _ => Err(Problem::bad_request(format!(
            "`{id}` is not a resource id (a UUID)"
        ))),
    }
}

/// The `{id}` of an item route, checked as [`resource_id`].
pub fn path_id(id: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let Path(id) = id.map_err(|e| Problem::bad_request(e.body_text()))?;
    resource_id(&id)
}

/// Text fields are stored in Postgres, which cannot hold NUL characters.
pub fn text(field: &str, value: &str) -> Result<(), Problem> {
    if value.contains('\0') {
        return Err(Problem::bad_request(format!(
            "{field} must not contain NUL characters"
        )));
    }
    Ok(())
}

/// What a write's `If-Match` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// No header: change whatever version is current (unless the context requires one).
    Absent,
    /// `*`: any current version.
    Any,
    /// `"<version>"`: only that version.
    Version(i64),
}

impl IfMatch {
    /// The etag to send the service: empty unless a version is named.
    pub fn etag(&self) -> String {
        match self {
            IfMatch::Version(v) => v.to_string(),
            IfMatch::Absent | IfMatch::Any => String::new(),
        }
    }
}

/// Reads `If-Match` (RFC 9110 13.1.1). The API's ETags are strong and quoted decimal
/// versions, so anything else (a weak tag, a list of them, garbage) can never match: 412
/// at once, without asking the service. `required` answers a missing header with 428, and
/// `*` too: it matches whatever version is current, so it would make the condition the
/// context requires (`require_if_match`) say nothing.
pub fn if_match(headers: &HeaderMap, required: bool) -> Result<IfMatch, Problem> {
    let required_problem = || {
        Problem::new(
            StatusCode::PRECONDITION_REQUIRED,
            "this resource is only changed conditionally: send If-Match with the ETag of your last read",
        )
    };
    let Some(value) = headers.get(header::IF_MATCH) else {
        if required {
            return Err(required_problem());
        }
        return Ok(IfMatch::Absent);
    };
    let value = value.to_str().unwrap_or_default().trim();
    if value == "*" {
        return if required {
            Err(required_problem())
        } else {
            Ok(IfMatch::Any)
        };
    }
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .and_then(|v| v.parse::<i64>().ok())
        .map(IfMatch::Version)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::PRECONDITION_FAILED,
                format!("If-Match `{value}` matches no version of this resource"),
            )
        })
}

/// The ETag of a version: a strong, quoted decimal.
pub fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a valid header")
}

/// Whether `If-None-Match` (RFC 9110 13.1.2, weak comparison) matches `version`.
pub fn none_match_hits(headers: &HeaderMap, version: i64) -> bool {
    let tag = format!("\"{version}\"");
    headers.get_all(header::IF_NONE_MATCH).iter().any(|value| {
        value.to_str().is_ok_and(|list| {
            list.split(',').map(str::trim).any(|candidate| {
                candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
            })
        })
    })
}

/// The version in a resource's JSON body (cached bodies carry no headers).
pub fn version_of(body: &[u8]) -> Option<i64> {
    #[derive(Deserialize)]
    struct Versioned {
        version: i64,
    }
    serde_json::from_slice::<Versioned>(body)
        .ok()
        .map(|v| v.version)
}

/// A resource's JSON with its `ETag`; 304 with no body when `If-None-Match` names it.
pub fn resource(
    status: StatusCode,
    body: Vec<u8>,
    cache: Option<Lookup>,
    request: &HeaderMap,
) -> Response {
    let version = version_of(&body);
    let mut response = match version {
        Some(v) if status == StatusCode::OK && none_match_hits(request, v) => {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            if let Some(lookup) = cache {
                response
                    .headers_mut()
                    .insert("x-cache", HeaderValue::from_static(lookup.as_str()));
            }
            response
        }
        _ => json(status, body, cache),
    };
    if let Some(v) = version {
        response.headers_mut().insert(header::ETAG, etag(v));
    }
    response
}

/// For PATCH bodies: a field that is present must have a value. Merge patch's `null`
/// means "remove", and no field of a resource can be removed.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Serialises a response body; a failure here is a bug, answered as a problem.
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Problem> {
    serde_json::to_vec(value).map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}"),
        )
    })
}

/// A JSON body, with `X-Cache` telling where it came from.
pub fn json(status: StatusCode, body: Vec<u8>, cache: Option<Lookup>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(lookup) = cache {
        headers.insert("x-cache", HeaderValue::from_static(lookup.as_str()));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_no_cache_directive_asks_for_a_fresh_read() {
        let with = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
            }
            wants_fresh(&headers)
        };
        assert!(with(&["no-cache"]));
        assert!(with(&["max-age=0, No-Cache"]));
        assert!(with(&["max-age=60", "no-cache"]));
        assert!(!with(&[]));
        assert!(!with(&["max-age=0"]));
        assert!(!with(&["no-store"]));
        assert!(!with(&["no-cache-please"]));
    }

    #[test]
    fn limits_outside_the_range_are_refused() {
        let query = |limit| ListQuery {
            limit: Some(limit),
            cursor: None,
        };
        assert_eq!(query(1).checked().unwrap().0, 1);
        assert_eq!(query(MAX_LIMIT).checked().unwrap().0, MAX_LIMIT as i32);
        assert_eq!(query(0).checked().unwrap_err().status, 400);
        assert_eq!(query(MAX_LIMIT + 1).checked().unwrap_err().status, 400);
        assert_eq!(
            ListQuery::default().checked().unwrap().0,
            DEFAULT_LIMIT as i32
        );
    }

    #[test]
    fn ids_must_be_hyphenated_uuids() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(
            resource_id(&id.to_string().to_uppercase()).unwrap(),
            id.to_string()
        );
        assert!(resource_id(&id.simple().to_string()).is_err());
        assert!(resource_id("42").is_err());
    }

    #[test]
    fn if_match_takes_only_strong_quoted_versions() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_MATCH, value.parse().unwrap());
            if_match(&headers, false)
        };
        assert_eq!(with("\"3\"").unwrap(), IfMatch::Version(3));
        assert_eq!(with("*").unwrap(), IfMatch::Any);
        for never in ["W/\"3\"", "3", "\"x\"", "\"1\", \"2\""] {
            assert_eq!(with(never).unwrap_err().status, 412, "{never}");
        }
        assert_eq!(if_match(&HeaderMap::new(), false).unwrap(), IfMatch::Absent);
        assert_eq!(if_match(&HeaderMap::new(), true).unwrap_err().status, 428);
    }

    #[test]
    fn where_if_match_is_required_a_wildcard_is_not_enough() {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, "*".parse().unwrap());
        assert_eq!(if_match(&headers, true).unwrap_err().status, 428);
        headers.insert(header::IF_MATCH, "\"3\"".parse().unwrap());
        assert_eq!(if_match(&headers, true).unwrap(), IfMatch::Version(3));
    }

    #[test]
    fn if_none_match_compares_weakly_and_answers_304() {
        let body = br#"{"id":"x","version":4}"#.to_vec();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, "\"3\", W/\"4\"".parse().unwrap());
        let response = resource(StatusCode::OK, body.clone(), None, &headers);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], "\"4\"");
        headers.insert(header::IF_NONE_MATCH, "\"3\"".parse().unwrap());
        let response = resource(StatusCode::OK, body, None, &headers);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::ETAG], "\"4\"");
    }

    #[test]
    fn idempotency_keys_are_checked() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers).unwrap(), None);
        headers.insert(IDEMPOTENCY_KEY, "order-1".parse().unwrap());
        assert_eq!(
            idempotency_key(&headers).unwrap().as_deref(),
            Some("order-1")
        );
        headers.insert(IDEMPOTENCY_KEY, "x".repeat(201).parse().unwrap());
        assert!(idempotency_key(&headers).is_err());
    }
}
