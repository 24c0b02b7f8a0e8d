//! The HTTP side: `GET`/`POST /token` handling, request recording and token replies.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::tokens::{grant, parse_basic, parse_scope, sign_token};
use super::{Access, Credentials, Shared, TokenRequest};
use crate::common::util::{rfc3339, unix_now};

pub(super) async fn serve(
    std_listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("token server: cannot register listener: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(req, &shared).await) }
                    });
                    // Connection errors (client hung up) are irrelevant here.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

/// Outcome of processing a request, before it is logged.
struct Reply {
    status: StatusCode,
    body: serde_json::Value,
    subject: Option<String>,
    granted: Vec<Access>,
}

impl Reply {
    fn error(status: StatusCode, code: &str, detail: &str) -> Reply {
        Reply {
            status,
            body: serde_json::json!({ "error": code, "error_description": detail,
                "errors": [{ "code": "UNAUTHORIZED", "message": detail }] }),
            subject: None,
            granted: Vec::new(),
        }
    }
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let path = req.uri().path().to_string();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let auth_scheme = authorization
        .as_deref()
        .and_then(|a| a.split_whitespace().next())
        .map(str::to_string);

    let form: Vec<(String, String)> = if method == Method::POST {
        match req.into_body().collect().await {
            Ok(body) => url::form_urlencoded::parse(&body.to_bytes())
                .into_owned()
                .collect(),
            Err(_) => Vec::new(),
        }
    } else {
        Vec::new()
    };

    // GET carries parameters in the query, POST in the form body.
    let params = if method == Method::POST {
        &form
    } else {
        &query
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let service = param("service");
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').filter(|s| !s.is_empty()).map(str::to_string))
        .collect();

    let reply = if path != "/token" {
        Reply::error(StatusCode::NOT_FOUND, "not_found", "unknown path")
    } else if method == Method::GET {
        let offline = param("offline_token").as_deref() == Some("true");
        handle_get(shared, authorization.as_deref(), &scopes, offline)
    } else if method == Method::POST {
        handle_post(shared, &param, &scopes)
    } else {
        Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "only GET and POST",
        )
    };

    let status = reply.status;
    let body = serde_json::to_vec(&reply.body).unwrap_or_default();
    {
        let mut state = shared.lock();
        for scope in &scopes {
            *state.per_scope.entry(scope.clone()).or_default() += 1;
        }
        state.log.push(TokenRequest {
            method: method.to_string(),
            path_and_query,
            authorization,
            auth_scheme,
            form,
            service,
            scopes,
            subject: reply.subject,
            status: status.as_u16(),
            granted: reply.granted,
        });
    }

    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"stevedore-test-token-server\""),
        );
    }
    response
}

/// `GET /token`: Basic credentials are optional; anonymous gets anonymous
/// access.
fn handle_get(
    shared: &Shared,
    authorization: Option<&str>,
    scopes: &[String],
    offline: bool,
) -> Reply {
    let subject = match authorization {
        None => None,
        Some(header) => match parse_basic(header) {
            Some(creds) if check_password(shared, &creds) => Some(creds.username),
            _ => {
                return Reply::error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_grant",
                    "invalid credentials",
                );
            }
        },
    };
    // Docker's spec: with offline_token=true an authenticated client also
    // gets a refresh token.
    let refresh = match (&subject, offline) {
        (Some(user), true) => Some(new_refresh_token(shared, user)),
        _ => None,
    };
    issue(shared, subject, scopes, refresh)
}

/// `POST /token`: OAuth2 password and refresh_token grants.
fn handle_post(
    shared: &Shared,
    param: &dyn Fn(&str) -> Option<String>,
    scopes: &[String],
) -> Reply {
    if param("client_id").is_none_or(|c| c.is_empty()) {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "missing client_id",
        );
    }
    let offline = param("access_type").as_deref() == Some("offline");
    match param("grant_type").as_deref() {
        Some("password") => {
            let creds = Credentials::new(
                param("username").unwrap_or_default(),
                param("password").unwrap_or_default(),
            );
            if !check_password(shared, &creds) {
                return Reply::error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_grant",
                    "invalid credentials",
                );
            }
            // The password grant always hands out a refresh token.
            let refresh = new_refresh_token(shared, &creds.username);
            issue(shared, Some(creds.username), scopes, Some(refresh))
        }
        Some("refresh_token") => {
            let Some(token) = param("refresh_token") else {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "missing refresh_token",
                );
            };
            let user = {
                let state = shared.lock();
                state
                    .refresh_tokens
                    .get(&token)
                    .filter(|u| state.users.contains_key(*u))
                    .cloned()
            };
            match user {
                Some(user) => issue(shared, Some(user), scopes, offline.then_some(token)),
                None => Reply::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown refresh token",
                ),
            }
        }
        _ => Reply::error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be password or refresh_token",
        ),
    }
}

fn check_password(shared: &Shared, creds: &Credentials) -> bool {
    shared
        .lock()
        .users
        .get(&creds.username)
        .is_some_and(|u| u.password == creds.password)
}

fn new_refresh_token(shared: &Shared, user: &str) -> String {
    let n = shared.counter.fetch_add(1, Ordering::Relaxed);
    let token = format!("refresh-{user}-{n}-{}", unix_now());
    shared
        .lock()
        .refresh_tokens
        .insert(token.clone(), user.to_string());
    token
}

/// Computes the granted access for `subject` and builds the JSON reply.
fn issue(
    shared: &Shared,
    subject: Option<String>,
    scopes: &[String],
    refresh_token: Option<String>,
) -> Reply {
    let (granted, expires_in, lifetime, padding) = {
        let state = shared.lock();
        let user = subject.as_ref().and_then(|s| state.users.get(s));
        let granted: Vec<Access> = scopes
            .iter()
            .filter_map(|s| parse_scope(s))
            .filter_map(|requested| grant(&state, user, requested))
            .collect();
        (
            granted,
            state.expires_in,
            state.token_lifetime,
            state.padding,
        )
    };
    let token = sign_token(shared, subject.as_deref().unwrap_or(""), &granted, lifetime);
    let mut body = serde_json::json!({
        "token": token,
        "access_token": token,
        "issued_at": rfc3339(unix_now()),
    });
    if let Some(secs) = expires_in {
        body["expires_in"] = secs.into();
    }
    if let Some(refresh) = refresh_token {
        body["refresh_token"] = refresh.into();
    }
    if padding > 0 {
        body["padding"] = "x".repeat(padding).into();
    }
    Reply {
        status: StatusCode::OK,
        body,
        subject,
        granted,
    }
}
