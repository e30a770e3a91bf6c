//! Admin actions: an operator's, made with their own access token through the gateway, so
//! the gateway decides with the owner's `<context>:admin` scope as it does for any caller,
//! and the services see the operator as the one who acted. The console checks the scope
//! first only to answer at once and to show the action to those who may take it.

use axum::http::StatusCode;

use super::oidc::Operator;

const GATEWAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What an admin action answers the page: a status and a short text to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: StatusCode,
    pub message: String,
}

impl Outcome {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Outcome {
        Outcome {
            status,
            message: message.into(),
        }
    }
}

/// The gateway the console's admin actions go through.
#[derive(Clone)]
pub struct Gateway {
    url: String,
    http: reqwest::Client,
}

impl Gateway {
    /// `url`: the gateway's base URL (`http://127.0.0.1:8080`).
    pub fn new(url: &str) -> Gateway {
        Gateway {
            url: url.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(GATEWAY_TIMEOUT)
                .build()
                .expect("a client with a timeout builds"),
        }
    }

    /// Retries a saga waiting for an operator: the gateway's
    /// `POST /v1/<owner>/<subject>/sagas/<id>/retry`.
    pub async fn retry_saga(
        &self,
        operator: Option<&Operator>,
        owner: &super::ContextNode,
        subject: &str,
        id: &str,
    ) -> Outcome {
        let operator = match permitted(operator, owner.admin_scope) {
            Ok(operator) => operator,
            Err(refusal) => return refusal,
        };
        let (Ok(subject), Ok(id)) = (uuid::Uuid::parse_str(subject), uuid::Uuid::parse_str(id))
        else {
            return Outcome::new(StatusCode::BAD_REQUEST, "a saga and its subject are UUIDs");
        };
        let url = format!("{}/v1/{}/{subject}/sagas/{id}/retry", self.url, owner.name);
        let sent = self
            .http
            .post(&url)
            .bearer_auth(&operator.access_token)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                let state = response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|saga| saga["state"].as_str().map(str::to_string))
                    .unwrap_or_default();
                Outcome::new(StatusCode::OK, format!("retried: {state}"))
            }
            Ok(response) => {
                let status = StatusCode::from_u16(response.status().as_u16())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                // The gateway's answers are problem documents: their detail says why.
                let detail = response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|p| p["detail"].as_str().map(str::to_string))
                    .unwrap_or_default();
                Outcome::new(status, format!("the gateway answered {status}: {detail}"))
            }
            Err(e) => Outcome::new(
                StatusCode::BAD_GATEWAY,
                format!("the gateway could not be reached: {e}"),
            ),
        }
    }
}

/// The operator, if they hold `scope`; otherwise the refusal.
pub(super) fn permitted<'a>(
    operator: Option<&'a Operator>,
    scope: &str,
) -> Result<&'a Operator, Outcome> {
    match operator {
        None => Err(Outcome::new(
            StatusCode::FORBIDDEN,
            format!(
                "admin actions are an operator's: sign in with the identity provider as one who holds {scope}"
            ),
        )),
        Some(o) if !o.may(scope) => Err(Outcome::new(
            StatusCode::FORBIDDEN,
            format!("{} does not hold {scope}", o.subject),
        )),
        Some(o) => Ok(o),
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::{Path, State};
    use axum::http::HeaderMap;
    use axum::routing::post;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::console::fixtures::{ORDERS, operator};

    const SUBJECT: &str = "0190c0de-0000-7000-8000-000000000001";
    const SAGA: &str = "0190c0de-0000-7000-8000-000000000002";

    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    /// A gateway on loopback that records each retry's path and bearer token.
    async fn gateway(status: StatusCode) -> (Gateway, Seen) {
        let seen: Seen = Arc::default();
        let app = axum::Router::new()
            .route(
                "/v1/{owner}/{subject}/sagas/{id}/retry",
                post(
                    move |State(seen): State<Seen>,
                          Path((owner, subject, id)): Path<(String, String, String)>,
                          headers: HeaderMap| async move {
                        let auth = headers["authorization"].to_str().unwrap().to_string();
                        seen.lock()
                            .unwrap()
                            .push((format!("{owner}/{subject}/{id}"), auth));
                        let body = if status.is_success() {
                            serde_json::json!({"state": "compensating"})
                        } else {
                            serde_json::json!({"detail": "needs orders:admin"})
                        };
                        (status, axum::Json(body))
                    },
                ),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (Gateway::new(&format!("http://{addr}/")), seen)
    }

    #[tokio::test]
    async fn a_retry_goes_to_the_gateway_with_the_operators_token() {
        let (gateway, seen) = gateway(StatusCode::OK).await;
        let ann = operator(&["orders:admin"]);
        let outcome = gateway.retry_saga(Some(&ann), &ORDERS, SUBJECT, SAGA).await;
        assert_eq!(outcome.status, StatusCode::OK, "{outcome:?}");
        assert_eq!(outcome.message, "retried: compensating");
        assert_eq!(
            seen.lock().unwrap().clone(),
            [(
                format!("orders/{SUBJECT}/{SAGA}"),
                "Bearer a.b.c".to_string()
            )]
        );
    }

    #[tokio::test]
    async fn viewers_and_operators_without_the_scope_are_refused_before_the_gateway() {
        let (gateway, seen) = gateway(StatusCode::OK).await;
        let viewer = gateway.retry_saga(None, &ORDERS, SUBJECT, SAGA).await;
        assert_eq!(viewer.status, StatusCode::FORBIDDEN);
        assert!(viewer.message.contains("orders:admin"), "{viewer:?}");
        let reader = operator(&["orders:read", "payments:admin"]);
        let refused = gateway
            .retry_saga(Some(&reader), &ORDERS, SUBJECT, SAGA)
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        let admin = operator(&["orders:admin"]);
        let bad = gateway
            .retry_saga(Some(&admin), &ORDERS, "../x", SAGA)
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(
            seen.lock().unwrap().is_empty(),
            "nothing reached the gateway"
        );
    }

    #[tokio::test]
    async fn the_gateways_refusal_is_passed_on_with_its_detail() {
        let (gateway, _) = gateway(StatusCode::FORBIDDEN).await;
        let admin = operator(&["orders:admin"]);
        let outcome = gateway
            .retry_saga(Some(&admin), &ORDERS, SUBJECT, SAGA)
            .await;
        assert_eq!(outcome.status, StatusCode::FORBIDDEN);
        assert!(
            outcome.message.contains("needs orders:admin"),
            "{outcome:?}"
        );
    }
}
