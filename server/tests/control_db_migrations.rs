//! The control-data migrations applied to a real PostgreSQL: they run, they
//! are idempotent, and their keys and constraints refuse bad rows.

mod support;

use support::ScratchDb;

use sqlx::PgPool;
use tyr_server::control_db;
use uuid::Uuid;

fn sql_state(result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> String {
    let error = result.expect_err("the statement must be refused");
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|code| code.into_owned())
        .unwrap_or_else(|| panic!("not a database error: {error}"))
}

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

async fn insert_user(pool: &PgPool, username: &str) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
    sqlx::query("INSERT INTO users (id, username, password_hash) VALUES ($1, $2, $3)")
        .bind(Uuid::now_v7())
        .bind(username)
        .bind(HASH)
        .execute(pool)
        .await
}

#[tokio::test]
async fn migrations_apply_once_and_constraints_hold() {
    let db = ScratchDb::create("tyr_test").await;
    let known = control_db::MIGRATOR.iter().count();
    assert!(known >= 1);
    assert!(control_db::applied_versions(&db.pool).await.expect("versions").is_empty());
    assert_eq!(control_db::migrate(&db.pool).await.expect("first migration run"), known);
    assert_eq!(control_db::migrate(&db.pool).await.expect("second migration run"), 0);
    assert_eq!(control_db::applied_versions(&db.pool).await.expect("versions").len(), known);

    // Usernames are unique regardless of case.
    insert_user(&db.pool, "alice").await.expect("first user");
    assert_eq!(sql_state(insert_user(&db.pool, "Alice").await), "23505");
    // A password must be stored as an argon2id hash.
    let plain = sqlx::query("INSERT INTO users (id, username, password_hash) VALUES ($1, 'bob', 'hunter2')")
        .bind(Uuid::now_v7())
        .execute(&db.pool)
        .await;
    assert_eq!(sql_state(plain), "23514");

    // A token cannot be used more often than allowed.
    let token = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO enrollment_tokens (id, secret_hash, expires_at, max_uses)
         VALUES ($1, $2, now() + interval '1 hour', 1)",
    )
    .bind(token)
    .bind(HASH)
    .execute(&db.pool)
    .await
    .expect("token");
    let consume =
        || sqlx::query("UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = $1").bind(token).execute(&db.pool);
    consume().await.expect("first use");
    assert_eq!(sql_state(consume().await), "23514");

    // Assignments must name an existing policy, and a target has one base.
    let orphan = sqlx::query("INSERT INTO policy_assignments (id, policy_id, scope) VALUES ($1, $2, 'base')")
        .bind(Uuid::now_v7())
        .bind(Uuid::now_v7())
        .execute(&db.pool)
        .await;
    assert_eq!(sql_state(orphan), "23503");
    let mut policies = Vec::new();
    for name in ["strict", "relaxed"] {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO policies (id, name, source_yaml) VALUES ($1, $2, 'rules: []')")
            .bind(id)
            .bind(name)
            .execute(&db.pool)
            .await
            .expect("policy");
        policies.push(id);
    }
    let assign_base = |policy: Uuid| {
        sqlx::query("INSERT INTO policy_assignments (id, policy_id, scope) VALUES ($1, $2, 'base')")
            .bind(Uuid::now_v7())
            .bind(policy)
            .execute(&db.pool)
    };
    assign_base(policies[0]).await.expect("fleet base policy");
    assert_eq!(sql_state(assign_base(policies[1]).await), "23505");
    // An overlay names its agent type; a base does not.
    let overlay_without_type =
        sqlx::query("INSERT INTO policy_assignments (id, policy_id, scope) VALUES ($1, $2, 'overlay')")
            .bind(Uuid::now_v7())
            .bind(policies[1])
            .execute(&db.pool)
            .await;
    assert_eq!(sql_state(overlay_without_type), "23514");

    // Policy versions come from one monotonic sequence.
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM policies ORDER BY created_at, version")
        .fetch_all(&db.pool)
        .await
        .expect("versions");
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions {versions:?} must increase");

    db.drop_now().await;
}
