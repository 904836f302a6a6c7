//! Operators' accounts and authentication against a real PostgreSQL:
//! users created, authenticated, disabled (never the last admin) with their
//! audit entries; session tokens refused when expired, tampered, unsigned,
//! signed with another algorithm or a rotated key; the key file's mode; the
//! login limiter; and `tyr-server user …` as an operator runs it.

mod support;

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::ScratchDb;
use time::OffsetDateTime;
use tyr_server::auth::jwt::{KEY_FILE, LEEWAY};
use tyr_server::auth::{AuthError, JwtKeys, LoginLimiter, Role, TOKEN_TTL};
use tyr_server::control_db::audit::Actor;
use tyr_server::control_db::users::{self, UserError};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

fn temp_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{prefix}-{}", Uuid::new_v4().simple()))
}

fn operator(id: Uuid, name: &str) -> Actor {
    Actor { user_id: Some(id), name: name.to_owned(), source: Some("198.51.100.23".parse().expect("ip")) }
}

#[derive(Debug, sqlx::FromRow)]
struct AuditRow {
    actor_id: Option<Uuid>,
    actor_name: String,
    source: Option<String>,
    action: String,
    target: String,
    before: Option<String>,
    after: Option<String>,
}

async fn audit_rows(pool: &sqlx::PgPool) -> Vec<AuditRow> {
    sqlx::query_as(
        "SELECT actor_id, actor_name, host(source) AS source, action, target, before::text, after::text \
         FROM audit_log ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("audit rows")
}

async fn user_count(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(pool).await.expect("count")
}

#[tokio::test]
async fn users_create_authenticate_disable_and_audit() {
    let db = ScratchDb::migrated("tyr_auth_users").await;
    let pool = &db.pool;
    let local = Actor::local_admin();

    let alice = users::create(pool, &local, "Alice", PASSWORD.to_owned(), Role::Admin).await.expect("create");
    assert_eq!((alice.username.as_str(), alice.role, alice.disabled_at), ("Alice", Role::Admin, None));
    assert_eq!(users::get(pool, alice.id).await.expect("get"), Some(alice.clone()));
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(alice.id)
        .fetch_one(pool)
        .await
        .expect("hash");
    assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");

    // Authentication: right password (any case of the name), and the rest refused alike.
    let found = users::authenticate(pool, "alice", PASSWORD.to_owned()).await.expect("auth");
    assert_eq!(found.map(|u| u.id), Some(alice.id));
    assert_eq!(users::authenticate(pool, "Alice", "correct horse battery stapl".to_owned()).await.expect("auth"), None);
    assert_eq!(users::authenticate(pool, "mallory", PASSWORD.to_owned()).await.expect("auth"), None);
    assert_eq!(users::authenticate(pool, "not a name'--", PASSWORD.to_owned()).await.expect("auth"), None);
    assert_eq!(users::authenticate(pool, "alice", "x".repeat(100_000)).await.expect("auth"), None);

    // Names are unique ignoring case; bad names and weak passwords change nothing.
    let duplicate = users::create(pool, &local, "ALICE", PASSWORD.to_owned(), Role::Viewer).await;
    assert!(matches!(&duplicate, Err(UserError::Exists(name)) if name == "ALICE"), "{duplicate:?}");
    let weak = users::create(pool, &local, "bob", "short".to_owned(), Role::Viewer).await;
    assert!(matches!(weak, Err(UserError::WeakPassword(_))), "{weak:?}");
    let weak = users::create(pool, &local, "bob", "aaaaaaaaaaaaaaaa".to_owned(), Role::Viewer).await;
    assert!(matches!(weak, Err(UserError::WeakPassword(_))), "{weak:?}");
    let bad_name = users::create(pool, &local, "bob smith", PASSWORD.to_owned(), Role::Viewer).await;
    assert!(matches!(bad_name, Err(UserError::InvalidName(_))), "{bad_name:?}");
    assert_eq!(user_count(pool).await, 1);

    // Changes by an operator name the operator and the address.
    let by_alice = operator(alice.id, "Alice");
    let bob = users::create(pool, &by_alice, "bob", PASSWORD.to_owned(), Role::Admin).await.expect("bob");
    let carol = users::create(pool, &by_alice, "carol", PASSWORD.to_owned(), Role::Viewer).await.expect("carol");
    assert_eq!(users::count_admins(pool).await.expect("count"), 2);

    let page = users::list(pool, None, 2).await.expect("list");
    assert_eq!(page.iter().map(|u| u.id).collect::<Vec<_>>(), vec![alice.id, bob.id], "ordered by id");
    let rest = users::list(pool, Some(bob.id), 2).await.expect("list");
    assert_eq!(rest.iter().map(|u| u.id).collect::<Vec<_>>(), vec![carol.id]);

    // Disable: the user can no longer log in; the last enabled admin stays.
    let disabled = users::disable(pool, &by_alice, bob.id).await.expect("disable bob");
    assert!(disabled.disabled_at.is_some());
    assert_eq!(users::authenticate(pool, "bob", PASSWORD.to_owned()).await.expect("auth"), None);
    assert_eq!(users::count_admins(pool).await.expect("count"), 1);
    let last = users::disable(pool, &by_alice, alice.id).await;
    assert!(matches!(last, Err(UserError::LastAdmin)), "{last:?}");
    assert!(users::authenticate(pool, "alice", PASSWORD.to_owned()).await.expect("auth").is_some());
    users::disable(pool, &by_alice, carol.id).await.expect("a viewer can be disabled");
    let missing = Uuid::new_v4();
    assert!(matches!(users::disable(pool, &by_alice, missing).await, Err(UserError::NotFound(id)) if id == missing));
    let again = users::disable(pool, &by_alice, bob.id).await.expect("disabling again is a no-op");
    assert_eq!(again.disabled_at, disabled.disabled_at);

    // One entry per change, none for refusals and no-ops, never a hash.
    let rows = audit_rows(pool).await;
    let summary: Vec<(&str, &str)> = rows.iter().map(|r| (r.action.as_str(), r.actor_name.as_str())).collect();
    assert_eq!(
        summary,
        vec![
            ("user.create", "local-admin"),
            ("user.create", "Alice"),
            ("user.create", "Alice"),
            ("user.disable", "Alice"),
            ("user.disable", "Alice"),
        ]
    );
    assert_eq!((rows[0].actor_id, rows[0].source.as_deref()), (None, None));
    assert_eq!((rows[1].actor_id, rows[1].source.as_deref()), (Some(alice.id), Some("198.51.100.23")));
    assert_eq!(rows[1].target, format!("user:{}", bob.id));
    assert_eq!(rows[1].before, None);
    let after: serde_json::Value = serde_json::from_str(rows[1].after.as_deref().expect("after")).expect("json");
    assert_eq!(after["username"], "bob");
    assert_eq!(after["role"], "admin");
    let disable_before: serde_json::Value =
        serde_json::from_str(rows[3].before.as_deref().expect("before")).expect("json");
    assert_eq!(disable_before["disabled"], false);
    for row in &rows {
        let text = format!("{:?} {:?}", row.before, row.after);
        assert!(!text.contains("argon2") && !text.contains("password") && !text.contains(PASSWORD), "{text}");
    }
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_disables_keep_one_admin() {
    let db = ScratchDb::migrated("tyr_auth_admins").await;
    let local = Actor::local_admin();
    let mut ids = Vec::new();
    for name in ["a1", "a2", "a3"] {
        ids.push(users::create(&db.pool, &local, name, PASSWORD.to_owned(), Role::Admin).await.expect("create").id);
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (pool, id) = (db.pool.clone(), *id);
            tokio::spawn(async move { users::disable(&pool, &Actor::local_admin(), id).await })
        })
        .collect();
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => {}
            Err(UserError::LastAdmin) => refused += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(refused, 1, "exactly the last one is refused");
    assert_eq!(users::count_admins(&db.pool).await.expect("count"), 1);
    db.drop_now().await;
}

#[tokio::test]
async fn unknown_users_cost_a_hash() {
    let db = ScratchDb::migrated("tyr_auth_timing").await;
    users::create(&db.pool, &Actor::local_admin(), "alice", PASSWORD.to_owned(), Role::Admin).await.expect("create");
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        users::authenticate(&db.pool, "alice", "wrong password here".to_owned()).await.expect("auth");
        wrong.push(start.elapsed());
        let start = Instant::now();
        users::authenticate(&db.pool, "nobody", "wrong password here".to_owned()).await.expect("auth");
        unknown.push(start.elapsed());
    }
    wrong.sort();
    unknown.sort();
    let (wrong, unknown) = (wrong[2], unknown[2]);
    assert!(unknown * 2 > wrong, "unknown user answered in {unknown:?}, wrong password in {wrong:?}");
    db.drop_now().await;
}

// ---- session tokens ----

fn b64url_encode(bytes: &[u8]) -> String {
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

fn b64url_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => panic!("not base64url: {c}"),
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, c)| n | u32::from(value(*c)) << (18 - 6 * i));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn parts(token: &str) -> [String; 3] {
    let parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts.try_into().expect("three parts")
}

fn key_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join(KEY_FILE)).expect("key file")
}

/// A token signed with the server's own key by another implementation.
fn forge(dir: &Path, algorithm: jsonwebtoken::Algorithm, claims: &serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(&key_bytes(dir)).expect("key");
    jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), claims, &key).expect("encode")
}

#[test]
fn jwt_round_trip_expiry_and_tampering() {
    let dir = temp_dir("tyr-auth-jwt");
    let keys = JwtKeys::load_or_create(&dir).expect("keys");
    let path = dir.join(KEY_FILE);
    assert_eq!(std::fs::metadata(&path).expect("key").mode() & 0o777, 0o600);
    assert_eq!(key_bytes(&dir).len(), 32);
    assert!(!format!("{keys:?}").contains(&format!("{:?}", key_bytes(&dir))), "Debug hides the key");

    let now = OffsetDateTime::now_utc();
    let user = Uuid::new_v4();
    let issued = keys.issue(user, "alice", Role::Viewer, now).expect("issue");
    assert_eq!(issued.expires_at.unix_timestamp(), now.unix_timestamp() + 24 * 3600);
    let claims = keys.verify(&issued.token, now).expect("valid");
    assert_eq!((claims.sub, claims.name.as_str(), claims.role), (user, "alice", Role::Viewer));
    assert_eq!(claims.exp - claims.iat, TOKEN_TTL.as_secs() as i64);

    // Reloading the same file keeps tokens valid.
    let reloaded = JwtKeys::load_or_create(&dir).expect("reload");
    assert!(reloaded.verify(&issued.token, now).is_ok());

    // Expired, and issued in the future.
    let after_expiry = now + TOKEN_TTL + LEEWAY + Duration::from_secs(2);
    assert!(matches!(keys.verify(&issued.token, after_expiry), Err(AuthError::Expired)));
    assert!(matches!(keys.verify(&issued.token, now - Duration::from_secs(120)), Err(AuthError::IssuedInFuture)));

    // Tampered payload: the viewer claims to be an admin.
    let [header, payload, signature] = parts(&issued.token);
    let mut claims_json: serde_json::Value = serde_json::from_slice(&b64url_decode(&payload)).expect("claims");
    assert_eq!(claims_json["role"], "viewer");
    claims_json["role"] = "admin".into();
    let forged_payload = b64url_encode(&serde_json::to_vec(&claims_json).expect("json"));
    let tampered = format!("{header}.{forged_payload}.{signature}");
    assert!(matches!(keys.verify(&tampered, now), Err(AuthError::BadSignature)), "{:?}", keys.verify(&tampered, now));

    // Tampered signature.
    let mut sig = b64url_decode(&signature);
    sig[0] ^= 1;
    let tampered = format!("{header}.{payload}.{}", b64url_encode(&sig));
    assert!(matches!(keys.verify(&tampered, now), Err(AuthError::BadSignature)));

    // `alg: none`, built by hand, with and without a signature part.
    let none_header = b64url_encode(br#"{"alg":"none","typ":"JWT"}"#);
    for unsigned in [format!("{none_header}.{forged_payload}."), format!("{none_header}.{forged_payload}")] {
        let refused = keys.verify(&unsigned, now);
        assert!(matches!(refused, Err(AuthError::Malformed(_) | AuthError::UnsupportedAlgorithm)), "{refused:?}");
    }
    // Another HMAC algorithm with the right key is still refused.
    let hs512 = forge(&dir, jsonwebtoken::Algorithm::HS512, &claims_json);
    assert!(matches!(keys.verify(&hs512, now), Err(AuthError::UnsupportedAlgorithm)));
    // HS256 with the right key but without exp, or living longer than 24 h.
    let mut no_exp = claims_json.clone();
    no_exp.as_object_mut().expect("object").remove("exp");
    let refused = keys.verify(&forge(&dir, jsonwebtoken::Algorithm::HS256, &no_exp), now);
    assert!(matches!(refused, Err(AuthError::Malformed(_))), "{refused:?}");
    let mut long_lived = claims_json.clone();
    long_lived["exp"] = (now.unix_timestamp() + 30 * 24 * 3600).into();
    let refused = keys.verify(&forge(&dir, jsonwebtoken::Algorithm::HS256, &long_lived), now);
    assert!(matches!(refused, Err(AuthError::Malformed(_))), "{refused:?}");
    // The untampered forge is accepted: the refusals above are about what changed.
    assert!(keys.verify(&forge(&dir, jsonwebtoken::Algorithm::HS256, &claims_json), now).is_ok());
    // Garbage.
    for garbage in ["", "a.b.c", "...", "not a token", &"x".repeat(100_000)] {
        assert!(matches!(keys.verify(garbage, now), Err(AuthError::Malformed(_))), "{garbage:.20}");
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn deleting_the_key_rotates_it() {
    let dir = temp_dir("tyr-auth-rotate");
    let keys = JwtKeys::load_or_create(&dir).expect("keys");
    let now = OffsetDateTime::now_utc();
    let old = keys.issue(Uuid::new_v4(), "alice", Role::Admin, now).expect("issue").token;
    let old_key = key_bytes(&dir);
    std::fs::remove_file(dir.join(KEY_FILE)).expect("delete key");
    let rotated = JwtKeys::load_or_create(&dir).expect("new key");
    assert_ne!(key_bytes(&dir), old_key);
    assert_eq!(std::fs::metadata(dir.join(KEY_FILE)).expect("key").mode() & 0o777, 0o600);
    assert!(matches!(rotated.verify(&old, now), Err(AuthError::BadSignature)));
    let fresh = rotated.issue(Uuid::new_v4(), "alice", Role::Admin, now).expect("issue").token;
    assert!(rotated.verify(&fresh, now).is_ok());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn unsafe_key_files_are_refused() {
    let dir = temp_dir("tyr-auth-mode");
    JwtKeys::load_or_create(&dir).expect("keys");
    let path = dir.join(KEY_FILE);
    let original = key_bytes(&dir);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let refused = JwtKeys::load_or_create(&dir);
    assert!(matches!(refused, Err(AuthError::InsecureKeyFile { mode: 0o644, .. })), "{refused:?}");
    assert_eq!(key_bytes(&dir), original, "a refused key is never replaced");
    assert!(refused.expect_err("refused").to_string().contains("chmod 600"));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(&path, [7u8; 16]).expect("short key");
    let refused = JwtKeys::load_or_create(&dir);
    assert!(matches!(refused, Err(AuthError::InvalidKeyFile { .. })), "{refused:?}");
    std::fs::write(&path, []).expect("empty key");
    assert!(matches!(JwtKeys::load_or_create(&dir), Err(AuthError::InvalidKeyFile { .. })));
    std::fs::write(&path, vec![7u8; 64]).expect("a longer key is fine");
    assert!(JwtKeys::load_or_create(&dir).is_ok());

    std::fs::remove_file(&path).expect("remove");
    std::fs::create_dir(&path).expect("a directory in its place");
    assert!(JwtKeys::load_or_create(&dir).is_err());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

// ---- login limiter ----

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

#[test]
fn limiter_locks_names_and_addresses_and_recovers() {
    let limiter = LoginLimiter::default();
    let t0 = Instant::now();
    let attacker = ip("203.0.113.9");
    for _ in 0..5 {
        assert_eq!(limiter.check(attacker, "alice", t0), Ok(()));
        limiter.record_failure(attacker, "alice", t0);
    }
    let wait = limiter.check(ip("192.0.2.200"), "ALICE", t0 + Duration::from_secs(60)).expect_err("alice locked");
    assert_eq!(wait, Duration::from_secs(240));
    assert_eq!(limiter.refused_total(), 1);

    // The address: 30 failures over many names lock it out for every name.
    for n in 0..25 {
        let name = format!("user{n}");
        assert_eq!(limiter.check(attacker, &name, t0), Ok(()), "{name}");
        limiter.record_failure(attacker, &name, t0);
    }
    assert!(limiter.check(attacker, "somebody-else", t0).is_err(), "address locked after 30");
    assert_eq!(limiter.check(ip("192.0.2.200"), "somebody-else", t0), Ok(()), "other addresses unaffected");
    assert_eq!(limiter.refused_total(), 2);

    // After the window both recover.
    let later = t0 + Duration::from_secs(5 * 60);
    assert_eq!(limiter.check(attacker, "alice", later), Ok(()));
    assert_eq!(limiter.check(attacker, "somebody-else", later), Ok(()));
}

#[test]
fn limiter_memory_is_bounded() {
    let limiter = LoginLimiter::default();
    let t0 = Instant::now();
    for n in 0..100_000u32 {
        let address = IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
        limiter.record_failure(address, &format!("spray-{n}"), t0);
    }
    let (names, addresses) = limiter.tracked();
    assert_eq!((names, addresses), (10_000, 10_000));
    assert_eq!(limiter.evicted_total(), 2 * 90_000, "every eviction counted");
    // The most recent keys are still tracked.
    for _ in 0..4 {
        limiter.record_failure(ip("192.0.2.1"), "spray-99999", t0);
    }
    assert!(limiter.check(ip("192.0.2.2"), "spray-99999", t0).is_err());
}

// ---- `tyr-server user …` ----

fn tyr_server(database_url: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tyr-server"))
        .args(args)
        .env("TYR_DATABASE_URL", database_url)
        .env("TYR_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tyr-server");
    let mut input = child.stdin.take().expect("stdin");
    // A command that exits before reading closes the pipe: not an error here.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().expect("tyr-server output")
}

fn stdout_json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

#[tokio::test]
async fn user_cli_creates_lists_and_disables() {
    // Not migrated: `user create` is the first command run on a new server.
    let db = ScratchDb::create("tyr_auth_cli").await;
    let url = db.url.clone();
    let password_line = format!("{PASSWORD}\n");

    let create = tyr_server(&url, &["user", "create", "root-admin", "--admin"], &password_line);
    let admin = stdout_json(&create);
    assert_eq!(admin["username"], "root-admin");
    assert_eq!(admin["role"], "admin");
    assert!(admin["disabled_at"].is_null());
    let admin_id: Uuid = admin["id"].as_str().expect("id").parse().expect("uuid");
    for stream in [&create.stdout, &create.stderr] {
        let text = String::from_utf8_lossy(stream);
        assert!(!text.contains(PASSWORD) && !text.contains("argon2"), "{text}");
    }
    // The password is the line without its newline.
    let found = users::authenticate(&db.pool, "root-admin", PASSWORD.to_owned()).await.expect("auth");
    assert_eq!(found.map(|u| u.id), Some(admin_id));

    let viewer = stdout_json(&tyr_server(&url, &["user", "create", "watcher"], "another good password\r\n"));
    assert_eq!(viewer["role"], "viewer", "viewer unless asked");
    let viewer_id = viewer["id"].as_str().expect("id").to_owned();
    assert!(users::authenticate(&db.pool, "watcher", "another good password".to_owned()).await.expect("a").is_some());
    let explicit = stdout_json(&tyr_server(&url, &["user", "create", "ops2", "--role", "admin"], &password_line));
    assert_eq!(explicit["role"], "admin");

    let duplicate = tyr_server(&url, &["user", "create", "ROOT-ADMIN", "--admin"], &password_line);
    assert_eq!(duplicate.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));
    let weak = tyr_server(&url, &["user", "create", "weakling"], "hunter2\n");
    assert_eq!(weak.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 12"), "{}", String::from_utf8_lossy(&weak.stderr));
    let empty = tyr_server(&url, &["user", "create", "nobody"], "");
    assert_eq!(empty.status.code(), Some(2));
    let conflicting = tyr_server(&url, &["user", "create", "x", "--admin", "--role", "viewer"], &password_line);
    assert_eq!(conflicting.status.code(), Some(2), "usage error");

    let listed = stdout_json(&tyr_server(&url, &["user", "list"], ""));
    let names: Vec<&str> = listed.as_array().expect("array").iter().filter_map(|u| u["username"].as_str()).collect();
    assert_eq!(names, vec!["root-admin", "watcher", "ops2"]);
    assert!(!String::from_utf8_lossy(&tyr_server(&url, &["user", "list"], "").stdout).contains("argon2"));

    let disabled = stdout_json(&tyr_server(&url, &["user", "disable", &viewer_id], ""));
    assert!(disabled["disabled_at"].is_string());
    let ops2_id = explicit["id"].as_str().expect("id").to_owned();
    assert!(tyr_server(&url, &["user", "disable", &ops2_id], "").status.success());
    let last = tyr_server(&url, &["user", "disable", &admin_id.to_string()], "");
    assert_eq!(last.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&last.stderr).contains("last enabled admin"));
    let missing = Uuid::new_v4().to_string();
    assert_eq!(tyr_server(&url, &["user", "disable", &missing], "").status.code(), Some(1));

    let rows = audit_rows(&db.pool).await;
    let actions: Vec<(&str, &str)> = rows.iter().map(|r| (r.action.as_str(), r.actor_name.as_str())).collect();
    assert_eq!(
        actions,
        vec![
            ("user.create", "local-admin"),
            ("user.create", "local-admin"),
            ("user.create", "local-admin"),
            ("user.disable", "local-admin"),
            ("user.disable", "local-admin"),
        ]
    );
    db.drop_now().await;
}
