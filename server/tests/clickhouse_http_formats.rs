//! The ClickHouse HTTP interface Tyr relies on, exercised through the
//! official client against the configured endpoint: RowBinary and
//! JSONEachRow inserts, JSONEachRow and TabSeparated output, bound query
//! parameters, and concurrent clients.

mod support;

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
struct Sample {
    id: u32,
    name: String,
    score: f64,
}

async fn scratch_table(client: &Client) -> (Client, String) {
    let database = support::scratch_name("tyr_test");
    client
        .query(&format!("CREATE DATABASE {database}"))
        .execute()
        .await
        .expect("ClickHouse must answer (deploy/dev/setup.sh starts the dev endpoint)");
    let scoped = client.clone().with_database(&database);
    scoped
        .query("CREATE TABLE samples (id UInt32, name String, score Float64) ENGINE = MergeTree ORDER BY id")
        .execute()
        .await
        .expect("create table");
    (scoped, database)
}

async fn drop_database(client: &Client, database: &str) {
    client.query(&format!("DROP DATABASE {database}")).execute().await.expect("drop scratch database");
}

#[tokio::test]
async fn row_binary_and_json_inserts_text_outputs_and_parameters() {
    let client = Client::default().with_url(support::clickhouse_url());
    let (db, database) = scratch_table(&client).await;

    // RowBinary: the client's typed insert.
    let mut insert = db.insert::<Sample>("samples").await.expect("insert");
    for id in 0..1_000u32 {
        insert
            .write(&Sample { id, name: format!("row-{id}\ttab"), score: f64::from(id) / 4.0 })
            .await
            .expect("write row");
    }
    insert.end().await.expect("end insert");

    // JSONEachRow through a formatted insert.
    let mut json = db.insert_formatted_with("INSERT INTO samples FORMAT JSONEachRow");
    json.send(
        r#"{"id":5000,"name":"json \"quoted\"","score":1.5}
{"id":5001,"name":"ünïcode","score":-2}
"#
        .into(),
    )
    .await
    .expect("send json");
    json.end().await.expect("end json insert");

    let rows: Vec<Sample> = db
        .query("SELECT id, name, score FROM samples WHERE id >= {from:UInt32} ORDER BY id")
        .param("from", 998u32)
        .fetch_all()
        .await
        .expect("typed fetch");
    assert_eq!(
        rows,
        vec![
            Sample { id: 998, name: "row-998\ttab".into(), score: 249.5 },
            Sample { id: 999, name: "row-999\ttab".into(), score: 249.75 },
            Sample { id: 5000, name: "json \"quoted\"".into(), score: 1.5 },
            Sample { id: 5001, name: "ünïcode".into(), score: -2.0 },
        ]
    );

    let json_out = fetch_text(&db, "SELECT id, name FROM samples WHERE id = 5001", "JSONEachRow").await;
    assert_eq!(json_out, "{\"id\":5001,\"name\":\"ünïcode\"}\n");
    let tsv_out = fetch_text(&db, "SELECT id, name FROM samples WHERE id = 1", "TabSeparated").await;
    assert_eq!(tsv_out, "1\trow-1\\ttab\n");
    let count: u64 = db.query("SELECT count() FROM samples").fetch_one().await.expect("count");
    assert_eq!(count, 1_002);

    // Client-side bound values, a query's own FORMAT, and a long streamed result.
    let quoted: Vec<Sample> =
        db.query("SELECT ?fields FROM samples WHERE name = ?").bind("json \"quoted\"").fetch_all().await.expect("bind");
    assert_eq!(quoted.len(), 1);
    let json = fetch_text(&db, "SELECT count() AS n FROM samples FORMAT JSONEachRow", "TabSeparated").await;
    assert_eq!(json, "{\"n\":1002}\n");
    let mut numbers = db.query("SELECT number FROM numbers(300000)").fetch::<u64>().expect("fetch");
    let mut streamed = 0u64;
    while let Some(n) = numbers.next().await.expect("row") {
        assert_eq!(n, streamed);
        streamed += 1;
    }
    assert_eq!(streamed, 300_000);

    // A malformed JSONEachRow body is refused with ClickHouse's error and
    // stores nothing.
    let mut bad = db.insert_formatted_with("INSERT INTO samples FORMAT JSONEachRow");
    bad.send(r#"{"id": "not a number"}"#.into()).await.ok();
    let error = bad.end().await.expect_err("malformed rows refused");
    assert!(error.to_string().contains("Code: "), "{error}");
    let count: u64 = db.query("SELECT count() FROM samples").fetch_one().await.expect("count");
    assert_eq!(count, 1_002);

    drop_database(&client, &database).await;
}

async fn fetch_text(client: &Client, sql: &str, format: &str) -> String {
    let mut cursor = client.query(sql).fetch_bytes(format).expect("fetch_bytes");
    let bytes = cursor.collect().await.expect("collect");
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn concurrent_clients_each_get_their_own_results() {
    let client = Client::default().with_url(support::clickhouse_url());
    let (db, database) = scratch_table(&client).await;
    let tasks: Vec<_> = (0..16u32)
        .map(|worker| {
            let db = db.clone();
            tokio::spawn(async move {
                for round in 0..10u32 {
                    let id = worker * 1_000 + round;
                    let mut insert = db.insert::<Sample>("samples").await.expect("insert");
                    insert.write(&Sample { id, name: format!("w{worker}"), score: 0.0 }).await.expect("write");
                    insert.end().await.expect("end");
                    let name: String = db
                        .query("SELECT name FROM samples WHERE id = {id:UInt32}")
                        .param("id", id)
                        .fetch_one()
                        .await
                        .expect("read own row");
                    assert_eq!(name, format!("w{worker}"));
                    // A per-request setting must not leak into other requests.
                    let threads: String = db
                        .query("SELECT toString(getSetting('max_threads'))")
                        .with_setting("max_threads", (worker + 1).to_string())
                        .fetch_one()
                        .await
                        .expect("setting");
                    assert_eq!(threads, (worker + 1).to_string());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("worker");
    }
    let count: u64 = db.query("SELECT count() FROM samples").fetch_one().await.expect("count");
    assert_eq!(count, 160);
    let leaked: u8 =
        db.query("SELECT changed FROM system.settings WHERE name = 'max_threads'").fetch_one().await.expect("settings");
    assert_eq!(leaked, 0, "per-request settings are reset after each request");
    drop_database(&client, &database).await;
}
