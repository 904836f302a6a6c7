//! `tyr-server token …` and `daemon …` as an operator runs them: JSON on
//! stdout, the token shown once with the CA pin, exit 1 for "no such".

mod support;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};

use tyr_server::identity::CertificateAuthority;
use uuid::Uuid;

fn tyr_server(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tyr-server"))
        .args(args)
        .env("TYR_DATABASE_URL", database_url)
        .env("TYR_LOG", "warn")
        .output()
        .expect("run tyr-server")
}

fn stdout_json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

#[tokio::test]
async fn token_and_daemon_commands() {
    let db = support::ScratchDb::create("tyr_enroll_cli").await;
    let url = db.url.clone();
    let data_dir = std::env::temp_dir().join(format!("tyr-cli-{}", Uuid::new_v4().simple()));
    let data_dir_text = data_dir.display().to_string();

    // Before any `serve`: the database is migrated and the CA made.
    let create = tyr_server(
        &url,
        &[
            "token",
            "create",
            "--expires-hours",
            "2",
            "--max-uses",
            "3",
            "--description",
            "rack 4",
            "--data-dir",
            &data_dir_text,
            "--tls-names",
            "localhost,127.0.0.1",
        ],
    );
    let created = stdout_json(&create);
    let token = created["token"].as_str().expect("token").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(token.starts_with(&format!("{id}.")));
    assert_eq!(created["max_uses"], 3);
    assert!(created["expires_at"].as_str().is_some_and(|t| t.contains('T')));
    let ca = CertificateAuthority::load_or_create(&data_dir, &["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("the CA the command made");
    assert_eq!(created["ca_pin"], ca.ca_pin());
    assert_eq!(std::fs::metadata(data_dir.join("ca.key")).expect("ca.key").mode() & 0o777, 0o600);
    let hint = String::from_utf8_lossy(&create.stderr);
    assert!(hint.contains("tyrd run") && hint.contains(&ca.ca_pin()), "{hint}");
    assert!(!hint.contains(&token), "the token is printed once, on stdout");

    let list = tyr_server(&url, &["token", "list"]);
    let listed = stdout_json(&list);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["state"], "active");
    assert_eq!(listed[0]["description"], "rack 4");
    let secret = token.split_once('.').expect("dot").1;
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(!text.contains(secret) && !text.contains("argon2"), "{text}");

    assert!(tyr_server(&url, &["token", "delete", &id]).status.success());
    assert_eq!(tyr_server(&url, &["token", "delete", &id]).status.code(), Some(1), "no such token");
    assert_eq!(stdout_json(&tyr_server(&url, &["token", "list"])), serde_json::json!([]));

    assert_eq!(stdout_json(&tyr_server(&url, &["daemon", "list"])), serde_json::json!([]));
    let missing = Uuid::new_v4().to_string();
    assert_eq!(tyr_server(&url, &["daemon", "delete", &missing]).status.code(), Some(1), "no such daemon");
    assert_eq!(tyr_server(&url, &["daemon", "delete", "not-a-uuid"]).status.code(), Some(2), "usage error");

    std::fs::remove_dir_all(&data_dir).expect("cleanup");
    db.drop_now().await;
}
