//! Enrollment against a real PostgreSQL: tokens consumed atomically, every
//! token refusal identical, bad requests refused before a use is spent, and
//! the daemon row Register stores is what a client certificate maps back to.

mod support;

use support::ScratchDb;

use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tonic::Code;
use tyr_proto::RegisterRequest;
use tyr_server::control_db::audit::Actor;
use tyr_server::control_db::{daemons, tokens};
use tyr_server::grpc::register::{self, CSR_REFUSED, RegisterContext, TOKEN_REFUSED};
use tyr_server::identity::{CertificateAuthority, daemon_identity};
use uuid::Uuid;
use x509_parser::prelude::{FromDer, X509Certificate};

fn context(pool: &PgPool) -> (RegisterContext, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tyr-enroll-{}", Uuid::new_v4().simple()));
    let ca = CertificateAuthority::load_or_create(&dir, &["localhost".to_owned()]).expect("ca");
    let context =
        RegisterContext { pool: pool.clone(), ca: Arc::new(ca), client_cert_validity: Duration::from_secs(24 * 3600) };
    (context, dir)
}

/// A CSR whose subject the server must ignore.
fn csr() -> Vec<u8> {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["someone-else.example".to_owned()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, "not-the-daemon-id");
    params.serialize_request(&key).expect("csr").pem().expect("pem").into_bytes()
}

fn request(token: &str) -> RegisterRequest {
    RegisterRequest {
        agent_name: "web-01".to_owned(),
        enrollment_token: token.to_owned(),
        csr_pem: csr(),
        kernel_version: "6.8.0-45-generic".to_owned(),
        arch: "x86_64".to_owned(),
    }
}

async fn daemon_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM daemons").fetch_one(pool).await.expect("count")
}

async fn uses(pool: &PgPool, id: Uuid) -> i32 {
    sqlx::query_scalar("SELECT uses FROM enrollment_tokens WHERE id = $1").bind(id).fetch_one(pool).await.expect("uses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_racers_on_five_uses_enroll_exactly_five() {
    let db = ScratchDb::migrated("tyr_enroll").await;
    let (context, dir) = context(&db.pool);
    let context = Arc::new(context);
    let token =
        tokens::create(&db.pool, &Actor::local_admin(), Duration::from_secs(3600), 5, "race").await.expect("token");
    let requests: Vec<_> = (0..20).map(|_| request(&token.token)).collect();
    let racers: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let context = Arc::clone(&context);
            tokio::spawn(async move { register::register(&context, request).await })
        })
        .collect();
    let mut enrolled = Vec::new();
    let mut refused = 0;
    for racer in racers {
        match racer.await.expect("task") {
            Ok(response) => enrolled.push(response.agent_id),
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                assert_eq!(status.message(), TOKEN_REFUSED);
                refused += 1;
            }
        }
    }
    assert_eq!(enrolled.len(), 5);
    assert_eq!(refused, 15);
    assert_eq!(daemon_count(&db.pool).await, 5);
    assert_eq!(uses(&db.pool, token.id).await, 5);
    enrolled.sort();
    enrolled.dedup();
    assert_eq!(enrolled.len(), 5, "every daemon has its own id");
    std::fs::remove_dir_all(&dir).expect("cleanup");
    db.drop_now().await;
}

#[tokio::test]
async fn every_token_problem_is_the_same_unauthenticated() {
    let db = ScratchDb::migrated("tyr_enroll").await;
    let (context, dir) = context(&db.pool);
    let hour = Duration::from_secs(3600);

    let expired = tokens::create(&db.pool, &Actor::local_admin(), hour, 5, "expired").await.expect("token");
    sqlx::query(
        "UPDATE enrollment_tokens SET created_at = now() - interval '2 hours', \
         expires_at = now() - interval '1 hour' WHERE id = $1",
    )
    .bind(expired.id)
    .execute(&db.pool)
    .await
    .expect("expire");
    let deleted = tokens::create(&db.pool, &Actor::local_admin(), hour, 5, "deleted").await.expect("token");
    assert!(tokens::delete(&db.pool, &Actor::local_admin(), deleted.id).await.expect("delete"));
    assert!(!tokens::delete(&db.pool, &Actor::local_admin(), deleted.id).await.expect("delete again"), "already gone");
    let live = tokens::create(&db.pool, &Actor::local_admin(), hour, 1, "live").await.expect("token");
    let wrong_secret = format!("{}.{}", live.id, "0".repeat(64));
    let unknown_id = format!("{}.{}", Uuid::new_v4(), live.token.split_once('.').expect("dot").1);
    let exhausted = tokens::create(&db.pool, &Actor::local_admin(), hour, 1, "exhausted").await.expect("token");
    register::register(&context, request(&exhausted.token)).await.expect("the one use");

    let cases = [
        ("expired", expired.token.clone()),
        ("deleted", deleted.token.clone()),
        ("wrong secret", wrong_secret),
        ("unknown id", unknown_id),
        ("exhausted", exhausted.token.clone()),
        ("malformed", "not-a-token".to_owned()),
        ("truncated", live.token[..live.token.len() - 1].to_owned()),
        ("empty", String::new()),
        ("huge", "x".repeat(100_000)),
    ];
    for (what, token) in cases {
        let status = register::register(&context, request(&token)).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}");
        assert_eq!(status.message(), TOKEN_REFUSED, "{what}");
        if !token.is_empty() {
            assert!(!status.message().contains(&token), "{what}: the token is not echoed");
        }
    }
    assert_eq!(daemon_count(&db.pool).await, 1, "only the exhausted token's one use enrolled");
    assert_eq!(uses(&db.pool, live.id).await, 0, "a wrong secret consumes nothing");
    register::register(&context, request(&live.token)).await.expect("the live token still works");
    std::fs::remove_dir_all(&dir).expect("cleanup");
    db.drop_now().await;
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_and_consume_nothing() {
    let db = ScratchDb::migrated("tyr_enroll").await;
    let (context, dir) = context(&db.pool);
    let token = tokens::create(&db.pool, &Actor::local_admin(), Duration::from_secs(3600), 1, "").await.expect("token");

    let tampered = {
        let mut request = request(&token.token);
        let pem = String::from_utf8(request.csr_pem).expect("utf8");
        let mut der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem").1.contents;
        let last = der.len() - 1;
        der[last] ^= 0x01;
        request.csr_pem = pem_encode(&der).into_bytes();
        request
    };
    let with = |edit: fn(&mut RegisterRequest)| {
        let mut request = request(&token.token);
        edit(&mut request);
        request
    };
    let cases = [
        ("garbage csr", with(|r| r.csr_pem = b"garbage".to_vec()), Some(CSR_REFUSED)),
        ("rsa-1024 csr", with(|r| r.csr_pem = include_bytes!("fixtures/rsa1024.csr").to_vec()), Some(CSR_REFUSED)),
        ("secp256k1 csr", with(|r| r.csr_pem = include_bytes!("fixtures/secp256k1.csr").to_vec()), Some(CSR_REFUSED)),
        ("tampered csr", tampered, Some(CSR_REFUSED)),
        ("bad arch", with(|r| r.arch = "i686".to_owned()), None),
        ("empty name", with(|r| r.agent_name = String::new()), None),
        ("name with spaces", with(|r| r.agent_name = "web 01".to_owned()), None),
        ("long name", with(|r| r.agent_name = "a".repeat(254)), None),
        ("empty kernel", with(|r| r.kernel_version = String::new()), None),
        ("kernel with control chars", with(|r| r.kernel_version = "6.8\u{0}".to_owned()), None),
        // Cheap checks come first: a bad CSR with a bad token is still about the CSR.
        (
            "bad csr and bad token",
            with(|r| {
                r.csr_pem = b"garbage".to_vec();
                r.enrollment_token = "nope".to_owned();
            }),
            Some(CSR_REFUSED),
        ),
    ];
    for (what, request, message) in cases {
        let status = register::register(&context, request).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        if let Some(message) = message {
            assert_eq!(status.message(), message, "{what}");
        }
        assert!(!status.message().contains(&token.token), "{what}: the token is not echoed");
    }
    assert_eq!(daemon_count(&db.pool).await, 0);
    assert_eq!(uses(&db.pool, token.id).await, 0, "no use consumed");

    let mut rsa = request(&token.token);
    rsa.csr_pem = include_bytes!("fixtures/rsa2048.csr").to_vec();
    rsa.arch = "aarch64".to_owned();
    register::register(&context, rsa).await.expect("RSA 2048 on aarch64 is fine");
    assert_eq!(uses(&db.pool, token.id).await, 1);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    db.drop_now().await;
}

#[tokio::test]
async fn the_issued_certificate_maps_back_to_the_daemon_until_it_is_deleted() {
    let db = ScratchDb::migrated("tyr_enroll").await;
    let (context, dir) = context(&db.pool);
    let token =
        tokens::create(&db.pool, &Actor::local_admin(), Duration::from_secs(3600), 1, "one host").await.expect("token");
    let response = register::register(&context, request(&token.token)).await.expect("enrolled");
    let daemon_id = Uuid::parse_str(&response.agent_id).expect("uuid");
    assert_eq!(response.ca_cert_pem, context.ca.ca_pem().as_bytes());

    let pem = String::from_utf8(response.client_cert_pem).expect("utf8");
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem").1.contents;
    let cert = X509Certificate::from_der(&der).expect("parses").1;
    let ca = X509Certificate::from_der(context.ca.ca_der()).expect("ca").1;
    cert.verify_signature(Some(ca.public_key())).expect("signed by the server CA");
    let common_name = cert.subject().iter_common_name().next().expect("cn").as_str().expect("utf8").to_owned();
    assert_eq!(common_name, daemon_id.to_string(), "the CSR's subject is ignored");
    let eku = cert.extended_key_usage().expect("eku").expect("present").value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!cert.is_ca());

    let identity = daemon_identity(&der).expect("names a daemon");
    assert_eq!(identity.daemon_id, daemon_id);
    let row = daemons::get(&db.pool, daemon_id).await.expect("get").expect("row");
    assert_eq!(row.cert_serial, identity.serial_hex);
    assert_eq!(row.name, "web-01");
    assert_eq!(row.arch, "x86_64");
    assert_eq!(row.enrolled_with, Some(token.id));
    assert_eq!(row.cert_not_after.unix_timestamp(), cert.validity().not_after.timestamp());
    let found = daemons::find_by_identity(&db.pool, daemon_id, &identity.serial_hex).await.expect("find");
    assert_eq!(found.map(|r| r.id), Some(daemon_id));
    let other_serial = daemons::find_by_identity(&db.pool, daemon_id, "00ff").await.expect("find");
    assert!(other_serial.is_none(), "an older certificate of the same daemon is refused");

    // Heartbeats and capabilities are recorded and listed.
    let capabilities = serde_json::json!({"bpf_lsm": true, "kernel": "6.8"});
    assert!(daemons::record_capabilities(&db.pool, daemon_id, &capabilities).await.expect("caps"));
    let heartbeat = daemons::HeartbeatRecord {
        applied_policy_version: 7,
        drops: serde_json::json!({"ringbuf": 3}),
        spooled_events: 42,
    };
    assert!(daemons::record_heartbeat(&db.pool, daemon_id, &heartbeat).await.expect("heartbeat"));
    let listed = daemons::list(&db.pool).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].applied_policy_version, 7);
    assert_eq!(listed[0].spooled_events, 42);
    assert_eq!(listed[0].drops, serde_json::json!({"ringbuf": 3}));
    assert_eq!(listed[0].capabilities, capabilities);
    assert!(listed[0].last_seen_at.is_some());

    // Deleting revokes: the lookup fails and the deletion is announced.
    let mut listener = PgListener::connect(&db.url).await.expect("listener");
    listener.listen(daemons::DAEMON_REVOKED_CHANNEL).await.expect("listen");
    assert!(daemons::delete(&db.pool, &Actor::local_admin(), daemon_id).await.expect("delete"));
    let note = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await.expect("in time").expect("note");
    assert_eq!(note.payload(), daemon_id.to_string());
    assert!(daemons::find_by_identity(&db.pool, daemon_id, &identity.serial_hex).await.expect("find").is_none());
    assert!(!daemons::delete(&db.pool, &Actor::local_admin(), daemon_id).await.expect("delete again"));
    assert!(!daemons::record_heartbeat(&db.pool, daemon_id, &heartbeat).await.expect("heartbeat"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
    db.drop_now().await;
}

#[tokio::test]
async fn secrets_are_stored_as_argon2id_and_never_listed() {
    let db = ScratchDb::migrated("tyr_enroll").await;
    let token =
        tokens::create(&db.pool, &Actor::local_admin(), Duration::from_secs(7200), 3, "rack 4").await.expect("token");
    let (id_text, secret) = token.token.split_once('.').expect("<id>.<secret>");
    assert_eq!(id_text, token.id.to_string());
    assert_eq!(secret.len(), 64);
    let hash: String = sqlx::query_scalar("SELECT secret_hash FROM enrollment_tokens WHERE id = $1")
        .bind(token.id)
        .fetch_one(&db.pool)
        .await
        .expect("hash");
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    assert!(!hash.contains(secret));

    let listed = tokens::list(&db.pool).await.expect("list");
    assert_eq!(listed.len(), 1);
    let shown = format!("{listed:?}");
    assert!(!shown.contains(secret) && !shown.contains("argon2"), "{shown}");
    assert_eq!(listed[0].state, tokens::TokenState::Active);
    assert_eq!((listed[0].uses, listed[0].max_uses), (0, 3));
    assert_eq!(listed[0].description, "rack 4");

    assert_eq!(tokens::consume(&db.pool, &token.token).await.expect("consume"), token.id);
    assert!(matches!(tokens::consume(&db.pool, "junk").await, Err(tokens::TokenError::Invalid)));
    assert!(matches!(
        tokens::create(&db.pool, &Actor::local_admin(), Duration::from_secs(3600), 0, "").await,
        Err(tokens::TokenError::InvalidSettings(_))
    ));
    db.drop_now().await;
}

fn pem_encode(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut body = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            let symbol = if i <= chunk.len() { ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' };
            body.push(symbol);
        }
    }
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).expect("ascii")).collect();
    format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", lines.join("\n"))
}
