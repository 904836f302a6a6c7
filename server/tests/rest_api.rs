//! The operators' REST API against a real `serve::run` (PostgreSQL, the
//! ClickHouse dev endpoint, TLS on loopback): the OpenAPI document covers
//! every route; authentication refuses wrong passwords, expired, tampered,
//! unsigned and rotated-key tokens and viewers calling admin routes, and
//! rate-limits logins; tokens, daemons and policies work end to end with
//! every change in the audit log; bad input is a clear 4xx that changes
//! nothing.

#[path = "support/rest.rs"]
mod rest_client;
mod support;

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use rest_client::Rest;
use serde_json::json;
use support::serving::TestServer;
use time::OffsetDateTime;
use tyr_server::auth::Role;
use tyr_server::auth::jwt::JwtKeys;
use tyr_server::control_db::audit::Actor;
use tyr_server::control_db::users;

const ADMIN_PASSWORD: &str = "correct horse battery staple";
const VIEWER_PASSWORD: &str = "viewer password 1234";

const DENY_66: &str = "\
default_verdict: allow
rules:
  - name: deny-66
    action: net_connect
    cidr_deny: [\"127.0.0.66/32\"]
    verdict: deny
";

async fn with_operators() -> (TestServer, Rest, Rest) {
    let server = TestServer::start(&[]).await;
    users::create(&server.pool, &Actor::local_admin(), "alice", ADMIN_PASSWORD.to_owned(), Role::Admin)
        .await
        .expect("admin");
    users::create(&server.pool, &Actor::local_admin(), "victor", VIEWER_PASSWORD.to_owned(), Role::Viewer)
        .await
        .expect("viewer");
    let mut admin = Rest::new(&server);
    admin.login("alice", ADMIN_PASSWORD).await;
    let mut viewer = Rest::new(&server);
    viewer.login("victor", VIEWER_PASSWORD).await;
    (server, admin, viewer)
}

async fn audit_count(server: &TestServer) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&server.pool).await.expect("count")
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let (mut server, admin, _viewer) = with_operators().await;
    let anonymous = Rest::new(&server);
    let reply = anonymous.get("/api/v1/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.body;
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."), "an OpenAPI 3 document");
    // Every $ref resolves.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let dangling: BTreeSet<&str> = text
        .split("\"$ref\":\"#/components/schemas/")
        .skip(1)
        .map(|piece| piece.split('"').next().expect("ref name"))
        .filter(|name| !schemas.contains_key(*name))
        .collect();
    assert!(dangling.is_empty(), "dangling $refs: {dangling:?}");
    // Every documented (path, method) is routed: no 404/405 without a
    // login, and protected ones refuse with 401 in the error shape.
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((path.clone(), method.clone()));
            let concrete = path.replace("{id}", "00000000-0000-0000-0000-000000000000").replace("{name}", "x");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let reply = anonymous.call(method.clone(), &concrete, Some(&json!({}))).await;
            assert!(
                ![StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&reply.status)
                    || reply.code() == "not_found" && reply.text.contains("no "),
                "{method} {path} is documented but not routed: {} {}",
                reply.status,
                reply.text
            );
            let public = ["/api/v1/login", "/api/v1/ca.pem", "/api/v1/openapi.json"];
            if !public.contains(&path.as_str()) {
                assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path} needs a login");
                assert_eq!(reply.code(), "unauthenticated");
            }
        }
    }
    // The routes the API promises are documented (and nothing is routed
    // that is not: an undocumented path is the API's own 404).
    for (path, method) in [
        ("/api/v1/login", "post"),
        ("/api/v1/ca.pem", "get"),
        ("/api/v1/daemons", "get"),
        ("/api/v1/daemons/{id}", "delete"),
        ("/api/v1/tokens", "post"),
        ("/api/v1/policies", "post"),
        ("/api/v1/policies/{name}/history", "get"),
        ("/api/v1/policies/{name}/assignments", "post"),
        ("/api/v1/audit", "get"),
        ("/api/v1/users", "post"),
    ] {
        assert!(documented.contains(&(path.to_owned(), method.to_owned())), "{method} {path} missing");
    }
    let reply = admin.get("/api/v1/not-a-route").await;
    assert_eq!((reply.status, reply.code()), (StatusCode::NOT_FOUND, "not_found"));
    let reply = admin.call(Method::PUT, "/api/v1/tokens", None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    // ca.pem is the CA daemons pin.
    let reply = anonymous.get("/api/v1/ca.pem").await;
    assert_eq!(reply.text, server.ca_pem());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_refuses_what_it_must() {
    let (mut server, admin, viewer) = with_operators().await;
    let mut anonymous = Rest::new(&server);
    // Wrong password, unknown user: the same 401.
    let wrong = anonymous.post("/api/v1/login", json!({ "username": "alice", "password": "nope nope nope" })).await;
    let unknown = anonymous.post("/api/v1/login", json!({ "username": "mallory", "password": "nope nope nope" })).await;
    assert_eq!((wrong.status, wrong.code()), (StatusCode::UNAUTHORIZED, "unauthenticated"));
    assert_eq!(wrong.body, unknown.body, "unknown users are not told apart");
    // whoami with a good token.
    let me = admin.get("/api/v1/whoami").await;
    assert_eq!(
        (me.status, me.body["username"].as_str(), me.body["role"].as_str()),
        (StatusCode::OK, Some("alice"), Some("admin"))
    );

    let keys = JwtKeys::load_or_create(&server.data_dir).expect("the server's key");
    let alice = users::list(&server.pool, None, 10).await.expect("users").into_iter().find(|u| u.username == "alice");
    let alice = alice.expect("alice");
    // Expired: issued 25 h ago.
    let old = keys.issue(alice.id, "alice", Role::Admin, OffsetDateTime::now_utc() - time::Duration::hours(25));
    anonymous.token = Some(old.expect("issue").token);
    assert_eq!(anonymous.get("/api/v1/whoami").await.status, StatusCode::UNAUTHORIZED, "expired token");
    // Tampered: the payload's role changed, signature kept.
    let good = admin.token.clone().expect("token");
    let parts: Vec<&str> = good.split('.').collect();
    let claims = json!({ "sub": alice.id, "name": "alice", "role": "admin", "iat": 0, "exp": 4_102_444_800_i64 });
    let forged_payload = base64url(claims.to_string().as_bytes());
    anonymous.token = Some(format!("{}.{forged_payload}.{}", parts[0], parts[2]));
    assert_eq!(anonymous.get("/api/v1/whoami").await.status, StatusCode::UNAUTHORIZED, "tampered payload");
    // alg: none.
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    anonymous.token = Some(format!("{header}.{forged_payload}."));
    assert_eq!(anonymous.get("/api/v1/whoami").await.status, StatusCode::UNAUTHORIZED, "alg none");
    // Signed with another key.
    let other_dir = std::env::temp_dir().join(format!("tyr-jwt-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&other_dir).expect("dir");
    let other = JwtKeys::load_or_create(&other_dir).expect("other key");
    anonymous.token =
        Some(other.issue(alice.id, "alice", Role::Admin, OffsetDateTime::now_utc()).expect("issue").token);
    assert_eq!(anonymous.get("/api/v1/whoami").await.status, StatusCode::UNAUTHORIZED, "foreign key");
    // A viewer reads but does not change.
    assert_eq!(viewer.get("/api/v1/policies").await.status, StatusCode::OK);
    let denied = viewer.post("/api/v1/tokens", json!({ "expires_hours": 1 })).await;
    assert_eq!((denied.status, denied.code()), (StatusCode::FORBIDDEN, "permission_denied"));
    assert_eq!(
        viewer.delete("/api/v1/daemons/00000000-0000-0000-0000-000000000000").await.status,
        StatusCode::FORBIDDEN
    );

    // The login rate limit: repeated failures for one name lock it, even
    // with the right password, and say when to retry.
    anonymous.token = None;
    let mut limited = None;
    for _ in 0..20 {
        let reply =
            anonymous.post("/api/v1/login", json!({ "username": "victor", "password": "wrong wrong wrong" })).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
            break;
        }
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let limited = limited.expect("login attempts are limited");
    assert_eq!(limited.code(), "rate_limited");
    assert!(limited.headers.get("retry-after").is_some());
    let right = anonymous.post("/api/v1/login", json!({ "username": "victor", "password": VIEWER_PASSWORD })).await;
    assert_eq!(right.status, StatusCode::TOO_MANY_REQUESTS, "locked out even with the right password");

    // Rotating jwt.key (delete it, restart) logs everyone out.
    std::fs::remove_file(server.data_dir.join("jwt.key")).expect("delete jwt.key");
    server.restart().await;
    let mut after = Rest::new(&server);
    after.token = admin.token.clone();
    assert_eq!(after.get("/api/v1/whoami").await.status, StatusCode::UNAUTHORIZED, "old token after rotation");
    after.login("alice", ADMIN_PASSWORD).await;
    assert_eq!(after.get("/api/v1/whoami").await.status, StatusCode::OK);
    // A disabled account's token stops working at once.
    let victor = users::list(&server.pool, None, 10).await.expect("users").into_iter().find(|u| u.username == "victor");
    let reply = after.post(&format!("/api/v1/users/{}/disable", victor.expect("victor").id), json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_daemons_and_the_audit_log() {
    let (mut server, admin, viewer) = with_operators().await;
    let created =
        admin.post("/api/v1/tokens", json!({ "expires_hours": 2, "max_uses": 3, "description": "rack 7" })).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let token = created.body["token"].as_str().expect("secret shown once").to_owned();
    assert!(created.body["ca_pin"].as_str().expect("pin").starts_with("sha256:"));
    let listed = admin.get("/api/v1/tokens").await;
    assert_eq!(listed.body["items"][0]["max_uses"], 3);
    assert!(!listed.text.contains(token.split('.').nth(1).expect("secret part")), "secrets are never listed");

    // A daemon enrolled with it shows in the list with its live state.
    let daemon = server.enroll_with(&token).await.expect("enroll");
    let daemons = admin.get("/api/v1/daemons").await;
    assert_eq!(daemons.body["items"].as_array().expect("items").len(), 1);
    assert_eq!(daemons.body["items"][0]["id"], json!(daemon.daemon_id));
    assert_eq!(daemons.body["items"][0]["connected"], false);
    let one = viewer.get(&format!("/api/v1/daemons/{}", daemon.daemon_id)).await;
    assert_eq!(one.status, StatusCode::OK);
    let deleted = admin.delete(&format!("/api/v1/daemons/{}", daemon.daemon_id)).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(admin.delete(&format!("/api/v1/daemons/{}", daemon.daemon_id)).await.status, StatusCode::NOT_FOUND);
    let id = created.body["id"].as_str().expect("id");
    assert_eq!(admin.delete(&format!("/api/v1/tokens/{id}")).await.status, StatusCode::NO_CONTENT);

    // Each change is in the audit log, by alice, from loopback.
    let audit = viewer.get("/api/v1/audit?actor=alice").await;
    let actions: Vec<&str> =
        audit.body["items"].as_array().expect("items").iter().map(|e| e["action"].as_str().expect("action")).collect();
    assert_eq!(actions, ["token.delete", "daemon.delete", "token.create"], "newest first");
    assert_eq!(audit.body["items"][0]["source"], "127.0.0.1");
    let only_tokens = viewer.get("/api/v1/audit?action=token.").await;
    assert_eq!(only_tokens.body["items"].as_array().expect("items").len(), 2);
    // Pagination: one at a time, no repeats, ends with a null cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/audit?actor=alice&limit=1&cursor={c}"),
            None => "/api/v1/audit?actor=alice&limit=1".to_owned(),
        };
        let page = viewer.get(&path).await;
        seen.extend(page.body["items"].as_array().expect("items").iter().map(|e| e["id"].clone()));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_versioned_assigned_and_guarded() {
    let (mut server, admin, viewer) = with_operators().await;
    // Invalid: errors carry document, rule, field, line and column.
    let bad = admin.post("/api/v1/policies", json!({ "name": "base", "yaml": "default_verdict: allow\nrules:\n  - name: r\n    action: net_conect\n    verdict: deny\n" })).await;
    assert_eq!((bad.status, bad.code()), (StatusCode::BAD_REQUEST, "invalid_policy"), "{}", bad.text);
    let detail = &bad.body["error"]["details"][0];
    assert_eq!((detail["document"].as_str(), detail["line"].as_u64()), (Some("base"), Some(4)));
    assert_eq!(detail["field"], "action");
    // Valid: created; the same again: unchanged; a change: a new version.
    let first =
        admin.post("/api/v1/policies", json!({ "name": "base", "yaml": DENY_66, "description": "first" })).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let same = admin.post("/api/v1/policies", json!({ "name": "base", "yaml": DENY_66, "description": "first" })).await;
    assert_eq!((same.status, &same.body["version"]), (StatusCode::OK, &first.body["version"]));
    let changed = DENY_66.replace("127.0.0.66/32", "127.0.0.67/32");
    let second =
        admin.post("/api/v1/policies", json!({ "name": "base", "yaml": changed, "description": "second" })).await;
    assert!(second.body["version"].as_i64() > first.body["version"].as_i64());
    let history = viewer.get("/api/v1/policies/base/history").await;
    let versions = history.body["items"].as_array().expect("items");
    assert_eq!(versions.len(), 2);
    assert_eq!(
        (versions[0]["changed_by"].as_str(), versions[0]["description"].as_str()),
        (Some("alice"), Some("second"))
    );

    // Assigned fleet-wide: a connected daemon receives it.
    let token = server.token(1).await;
    let daemon = server.enroll_with(&token).await.expect("enroll");
    let assigned = admin.post("/api/v1/policies/base/assignments", json!({ "scope": "base" })).await;
    assert_eq!(assigned.status, StatusCode::CREATED, "{}", assigned.text);
    let shown = viewer.get("/api/v1/policies/base").await;
    assert_eq!(shown.body["assigned"][0]["scope"], "base");
    // Overlays name a known agent type.
    let overlay = admin
        .post("/api/v1/policies/base/assignments", json!({ "scope": "overlay", "agent_type": "not-an-agent" }))
        .await;
    assert_eq!(overlay.status, StatusCode::BAD_REQUEST, "{}", overlay.text);
    let overlay = admin.post("/api/v1/policies/base/assignments", json!({ "scope": "overlay" })).await;
    assert_eq!(overlay.status, StatusCode::BAD_REQUEST);
    // An overlay policy is assigned; a new version of it that no longer
    // composes (an overlay of its own) is refused, and nothing changes.
    let overlay_doc = "default_verdict: allow\nrules:\n  - name: aider-no-67\n    action: net_connect\n    cidr_deny: [\"127.0.0.67/32\"]\n    verdict: deny\n";
    let created = admin.post("/api/v1/policies", json!({ "name": "aider-extra", "yaml": overlay_doc })).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let placed = admin
        .post("/api/v1/policies/aider-extra/assignments", json!({ "scope": "overlay", "agent_type": "aider" }))
        .await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.text);
    let nested = format!("{overlay_doc}overlays:\n  cursor:\n    - name: c\n      action: exec\n      verdict: deny\n");
    let refused = admin.post("/api/v1/policies", json!({ "name": "aider-extra", "yaml": nested })).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    let kept = viewer.get("/api/v1/policies/aider-extra").await;
    assert_eq!(kept.body["version"], created.body["version"], "the refused version did not replace it");
    assert_eq!(
        admin.delete("/api/v1/policies/aider-extra/assignments?scope=overlay&agent_type=aider").await.status,
        StatusCode::NO_CONTENT
    );
    // Deleting an assigned policy is refused; unassigned, it goes.
    let refused = admin.delete("/api/v1/policies/base").await;
    assert_eq!((refused.status, refused.code()), (StatusCode::CONFLICT, "conflict"));
    assert_eq!(admin.delete("/api/v1/policies/base/assignments?scope=base").await.status, StatusCode::NO_CONTENT);
    assert_eq!(admin.delete("/api/v1/policies/base/assignments?scope=base").await.status, StatusCode::NOT_FOUND);
    assert_eq!(admin.delete("/api/v1/policies/base").await.status, StatusCode::NO_CONTENT);
    assert_eq!(viewer.get("/api/v1/policies/base").await.status, StatusCode::NOT_FOUND);
    let _ = daemon;
    // The check endpoint reports without storing.
    let check = viewer.post("/api/v1/policies/check", json!({ "yaml": DENY_66 })).await;
    assert_eq!((check.body["valid"].as_bool(), check.body["rules"].as_u64()), (Some(true), Some(1)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_4xx_and_changes_nothing() {
    let (mut server, admin, _viewer) = with_operators().await;
    let before = audit_count(&server).await;
    let cases: Vec<(&str, Vec<u8>, StatusCode)> = vec![
        ("malformed JSON", b"{\"name\": ".to_vec(), StatusCode::BAD_REQUEST),
        ("unknown field", br#"{"name":"p","yaml":"rules: []","colour":"red"}"#.to_vec(), StatusCode::BAD_REQUEST),
        ("wrong type", br#"{"name":7,"yaml":"rules: []"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (
            "oversized body",
            {
                let mut body = br#"{"name":"p","yaml":""#.to_vec();
                body.extend(std::iter::repeat_n(b'a', 3 * 1024 * 1024));
                body.extend(br#""}"#);
                body
            },
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "10 MB policy",
            {
                let yaml = format!("default_verdict: allow\nrules: []\n# {}\n", "x".repeat(10 * 1024 * 1024));
                serde_json::to_vec(&json!({ "name": "huge", "yaml": yaml })).expect("json")
            },
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (what, body, status) in cases {
        let reply = admin.raw(Method::POST, "/api/v1/policies", body).await;
        assert_eq!(reply.status, status, "{what}: {}", reply.text);
        assert!(!reply.body["error"]["message"].as_str().unwrap_or("").is_empty(), "{what}: a message");
    }
    // A YAML alias bomb is refused as an invalid policy, quickly.
    let bomb = "a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nrules: *g\n";
    let started = std::time::Instant::now();
    let reply = admin.post("/api/v1/policies", json!({ "name": "bomb", "yaml": bomb })).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Invalid UUIDs, bad names, bad paging.
    let reply = admin.get("/api/v1/daemons/not-a-uuid").await;
    assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "invalid_argument"));
    let reply = admin.post("/api/v1/policies", json!({ "name": "../etc", "yaml": DENY_66 })).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(admin.get("/api/v1/daemons?limit=0").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(admin.get("/api/v1/daemons?limit=5000").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(admin.get("/api/v1/daemons?cursor=zzz").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(admin.get("/api/v1/daemons?colour=red").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(admin.get("/api/v1/audit?from=yesterday").await.status, StatusCode::BAD_REQUEST);
    let reply = admin.post("/api/v1/tokens", json!({ "expires_hours": 0 })).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    // Nothing changed.
    assert_eq!(audit_count(&server).await, before);
    let policies: i64 =
        sqlx::query_scalar("SELECT count(*) FROM policies").fetch_one(&server.pool).await.expect("count");
    assert_eq!(policies, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_logins_cannot_outrun_the_limit() {
    let (mut server, _admin, _viewer) = with_operators().await;
    let anonymous = std::sync::Arc::new(Rest::new(&server));
    // 24 wrong guesses at once for one name: the limiter learns of each
    // failure only after its password check, so without a bound on checks
    // running at once all 24 would be tried.
    let guesses: Vec<_> = (0..24)
        .map(|i| {
            let client = std::sync::Arc::clone(&anonymous);
            tokio::spawn(async move {
                client
                    .post("/api/v1/login", json!({ "username": "victor", "password": format!("guess number {i}") }))
                    .await
                    .status
            })
        })
        .collect();
    let mut tried = 0;
    for guess in guesses {
        match guess.await.expect("task") {
            StatusCode::UNAUTHORIZED => tried += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    // 5 failures lock the name; at most 4 checks were in flight when it
    // locked. Guesses turned away while checks ran were never tried.
    assert!((1..=9).contains(&tried), "{tried} passwords were tried");
    let right = anonymous.post("/api/v1/login", json!({ "username": "victor", "password": VIEWER_PASSWORD })).await;
    let locked = tried >= 5;
    assert_eq!(right.status == StatusCode::TOO_MANY_REQUESTS, locked, "{tried} failures; then {}", right.status);
    server.stop().await;
}
