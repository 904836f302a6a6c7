//! Operator queries over stored events (the dev endpoint, or
//! TYR_CLICKHOUSE_URL): `top_resources` and a filtered `count` through the
//! REST API of a real `tyr-server serve` (HTTPS, a logged-in operator),
//! through `tyr_server::event_query` (what REST calls), and as the same SQL
//! sent directly to ClickHouse with its values written in, measured in the
//! same run.
//!
//! `TYR_BENCH_EVENTS` sets how many events are stored first (default
//! 20,000 so that `cargo test --benches` stays fast; the figure
//! uses 10,000,000). Besides criterion's report, p50 and p95 over
//! interleaved samples are printed for the four queries.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tyr_bench::fleet::{Scratch, Server, wait_until, work_dir};
use tyr_proto::{Event, EventKind, Severity, Verdict};
use tyr_server::auth::Role;
use tyr_server::control_db::audit::Actor;
use tyr_server::control_db::users;
use tyr_server::event_query::{self, EventFilter, ResolvedFilter, ResourceCount};
use tyr_server::event_store::arrow_batch::{EventBatchBuilder, StoredEvent};
use tyr_server::event_store::{EventStore, schema};
use uuid::Uuid;

const OPERATOR_PASSWORD: &str = "bench operator password";

const DEFAULT_EVENTS: usize = 20_000;
/// Events per INSERT.
const CHUNK: usize = 500_000;
const BATCH: usize = 65_536;
const DAEMONS: usize = 200;
const TOP_N: u32 = 10;
const HOUR_NS: i64 = 3_600 * 1_000_000_000;

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Event `i`: one of DAEMONS hosts, a skewed choice among 5,000 resources,
/// every kind and verdict, within the last 20 hours of `now_ns`.
fn event(i: usize, now_ns: i64) -> (usize, Event) {
    const KINDS: [EventKind; 5] =
        [EventKind::FileRead, EventKind::FileWrite, EventKind::Exec, EventKind::NetConnect, EventKind::Tls];
    let r = mix(i as u64);
    let skewed = (r >> 20) % 5_000 * ((r >> 20) % 5_000) / 5_000;
    let verdict = match (r >> 8) % 10 {
        0..=6 => Verdict::Allow,
        7 | 8 => Verdict::Deny,
        _ => Verdict::Alert,
    };
    let event = Event {
        event_id: Uuid::from_u64_pair(mix(r), mix(r ^ 0xA5A5)).to_string(),
        kind: KINDS[((r >> 16) % 5) as usize] as i32,
        resource: format!("/home/dev/project/src/module_{skewed}.rs"),
        verdict: verdict as i32,
        severity: Severity::Info as i32,
        pid: 1_000 + ((r >> 40) % 5_000) as i64,
        process_exe: "/usr/bin/cargo".to_owned(),
        cmdline: "cargo build".to_owned(),
        timestamp_ns: now_ns - (mix(r) % (20 * HOUR_NS as u64)) as i64,
        seq: i as u64 + 1,
        agent_type: ["cursor", "claude-code", "codex"][(r % 3) as usize].to_owned(),
        policy_version: 1,
        ..Event::default()
    };
    ((r % DAEMONS as u64) as usize, event)
}

/// Stores `total` events in inserts of CHUNK rows.
fn fill(runtime: &Runtime, store: &EventStore, daemons: &[Uuid], total: usize, now_ns: i64) {
    let started = Instant::now();
    for start in (0..total).step_by(CHUNK) {
        let mut builder = EventBatchBuilder::with_capacity(BATCH);
        let mut batches = Vec::new();
        for i in start..(start + CHUNK).min(total) {
            let (daemon, event) = event(i, now_ns);
            builder
                .push(StoredEvent {
                    agent_id: daemons[daemon],
                    event: &event,
                    server_verdict: Verdict::Allow,
                    drift_detected: false,
                })
                .expect("valid event");
            if builder.len() == BATCH {
                batches.push(builder.finish());
            }
        }
        batches.push(builder.finish());
        runtime.block_on(store.insert_batches(&batches)).expect("insert_arrow");
    }
    eprintln!("event_queries: stored {total} events in {:.1} s", started.elapsed().as_secs_f64());
}

/// The measured queries.
struct Queries<'a> {
    runtime: &'a Runtime,
    store: &'a EventStore,
    rest: RestClient,
    top_filter: ResolvedFilter,
    count_filter: ResolvedFilter,
    direct_top_sql: String,
    direct_count_sql: String,
    rest_top_path: String,
    rest_count_path: String,
}

/// An HTTPS client of the server's REST API, trusting only its CA, logged in.
struct RestClient {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl RestClient {
    fn login(runtime: &Runtime, server: &Server, username: &str) -> Self {
        let ca = std::fs::read(server.data_dir.join("ca.pem")).expect("server CA");
        let mut roots = rustls::RootCertStore::empty();
        for cert in <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(&ca) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let tls =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        let client = reqwest::Client::builder().use_preconfigured_tls(tls).build().expect("client");
        let base = format!("https://localhost:{}", server.rest_addr.port());
        let body = serde_json::json!({ "username": username, "password": OPERATOR_PASSWORD });
        let reply: serde_json::Value = runtime.block_on(async {
            let response = client.post(format!("{base}/api/v1/login")).json(&body).send().await.expect("login");
            assert!(response.status().is_success(), "login refused: {}", response.status());
            response.json().await.expect("login reply")
        });
        let token = reply["token"].as_str().expect("token").to_owned();
        Self { client, base, token }
    }

    fn get(&self, runtime: &Runtime, path: &str) -> serde_json::Value {
        runtime.block_on(async {
            let response =
                self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.expect("GET");
            assert!(response.status().is_success(), "{path}: {}", response.status());
            response.json().await.expect("JSON")
        })
    }
}

impl Queries<'_> {
    fn top_through_rest(&self) -> Vec<ResourceCount> {
        let rows = self.rest.get(self.runtime, &self.rest_top_path);
        rows.as_array()
            .expect("rows")
            .iter()
            .map(|row| ResourceCount {
                resource: row["resource"].as_str().expect("resource").to_owned(),
                events: row["events"].as_u64().expect("events"),
                denied: row["denied"].as_u64().expect("denied"),
            })
            .collect()
    }

    fn count_through_rest(&self) -> u64 {
        self.rest.get(self.runtime, &self.rest_count_path)["count"].as_u64().expect("count")
    }

    fn top_through_functions(&self) -> Vec<ResourceCount> {
        self.runtime.block_on(event_query::top_resources(self.store, &self.top_filter, TOP_N)).expect("top_resources")
    }

    fn top_direct(&self) -> Vec<ResourceCount> {
        self.runtime.block_on(self.store.client().query(&self.direct_top_sql).fetch_all()).expect("direct top")
    }

    fn count_through_functions(&self) -> u64 {
        self.runtime.block_on(event_query::count(self.store, &self.count_filter)).expect("count")
    }

    fn count_direct(&self) -> u64 {
        self.runtime.block_on(self.store.client().query(&self.direct_count_sql).fetch_one()).expect("direct count")
    }
}

/// p50 and p95 of `samples`, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[index].as_secs_f64() * 1e3
    };
    (at(0.50), at(0.95))
}

fn event_queries(c: &mut Criterion) {
    let total = std::env::var("TYR_BENCH_EVENTS")
        .ok()
        .map(|v| v.replace('_', "").parse::<usize>().expect("TYR_BENCH_EVENTS is a number"))
        .unwrap_or(DEFAULT_EVENTS);
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    // A real server over scratch databases; the events go straight into its ClickHouse database.
    let scratch = runtime.block_on(Scratch::create("tyr_bench_queries"));
    let store = scratch.event_store();
    runtime.block_on(schema::apply(&store, 30)).expect("ClickHouse must be running (deploy/dev/setup.sh starts it)");
    let server = Server::start(&scratch, &work_dir("bench-queries"), &[("TYR_LOG", "warn")]);
    let pool = runtime.block_on(scratch.pool());
    // The server migrates as it starts; this waits for that (migrations take a lock).
    runtime.block_on(tyr_server::control_db::migrate(&pool)).expect("migrate");
    runtime
        .block_on(users::create(&pool, &Actor::local_admin(), "bench", OPERATOR_PASSWORD.to_owned(), Role::Viewer))
        .expect("operator");
    // Ready once the CA exists (the server makes it after migrating).
    let ca_ready = wait_until(Duration::from_secs(60), || server.data_dir.join("ca.pem").exists());
    assert!(ca_ready, "the server made no CA:\n{}", server.log.text());
    let rest = RestClient::login(&runtime, &server, "bench");

    let now_ns =
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()))
            .unwrap_or(i64::MAX);
    let daemons: Vec<Uuid> = (0..DAEMONS).map(|i| Uuid::from_u64_pair(0x7e57, i as u64 + 1)).collect();
    fill(&runtime, &store, &daemons, total, now_ns);

    // Top resources over the default range (the last 24 h: every event);
    // count of one daemon's denied file reads.
    let top_filter = EventFilter::default().resolve(Vec::new()).expect("valid filter");
    let count_filter = EventFilter {
        daemon_id: Some(daemons[7]),
        kind: Some("FILE_READ".to_owned()),
        verdict: Some("DENY".to_owned()),
        ..EventFilter::default()
    }
    .resolve(Vec::new())
    .expect("valid filter");
    // The statements the functions send, with the values written in.
    let from = top_filter.from_ns();
    let direct_top_sql = format!(
        "SELECT resource, count() AS events, countIf(verdict = 'DENY') AS denied FROM events FINAL \
         WHERE 1 AND timestamp >= fromUnixTimestamp64Nano({from}, 'UTC') \
         GROUP BY resource ORDER BY events DESC, resource LIMIT {TOP_N}"
    );
    let direct_count_sql = format!(
        "SELECT count() FROM events FINAL WHERE 1 AND timestamp >= fromUnixTimestamp64Nano({}, 'UTC') \
         AND agent_id = '{}' AND kind = 'FILE_READ' AND verdict = 'DENY'",
        count_filter.from_ns(),
        daemons[7]
    );
    let rest_top_path = format!("/api/v1/analytics/top-resources?n={TOP_N}");
    let rest_count_path = format!("/api/v1/events/count?daemon_id={}&kind=FILE_READ&verdict=DENY", daemons[7]);
    let queries = Queries {
        runtime: &runtime,
        store: &store,
        rest,
        top_filter,
        count_filter,
        direct_top_sql,
        direct_count_sql,
        rest_top_path,
        rest_count_path,
    };
    assert_eq!(queries.top_through_functions(), queries.top_direct(), "the same query both ways");
    assert_eq!(queries.top_through_rest(), queries.top_direct(), "the same query through REST");
    let matching = queries.count_through_functions();
    assert_eq!(matching, queries.count_direct(), "the same count both ways");
    assert_eq!(matching, queries.count_through_rest(), "the same count through REST");
    assert!(total < 1_000 || matching > 0, "the filter matches something");

    // Interleaved samples: both paths see the same cache and background merges.
    let rounds = if bench_mode { 40 } else { 2 };
    let mut samples: [Vec<Duration>; 6] = Default::default();
    for _ in 0..rounds {
        let timed = |f: &dyn Fn()| {
            let started = Instant::now();
            f();
            started.elapsed()
        };
        samples[0].push(timed(&|| {
            black_box(queries.top_through_functions());
        }));
        samples[1].push(timed(&|| {
            black_box(queries.top_direct());
        }));
        samples[2].push(timed(&|| {
            black_box(queries.count_through_functions());
        }));
        samples[3].push(timed(&|| {
            black_box(queries.count_direct());
        }));
        samples[4].push(timed(&|| {
            black_box(queries.top_through_rest());
        }));
        samples[5].push(timed(&|| {
            black_box(queries.count_through_rest());
        }));
    }
    let names = [
        "top_resources (event_query)",
        "top_resources (direct SQL)",
        "count (event_query)",
        "count (direct SQL)",
        "top_resources (REST)",
        "count (REST)",
    ];
    eprintln!("event_queries over {total} events ({rounds} samples each, filtered count = {matching}):");
    for (name, samples) in names.iter().zip(samples.iter_mut()) {
        let (p50, p95) = percentiles(samples);
        eprintln!("  {name:<28} p50 {p50:>9.1} ms   p95 {p95:>9.1} ms");
    }

    let mut group = c.benchmark_group("event_queries");
    group.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_secs(3));
    group.bench_function("top_resources/event_query", |b| b.iter(|| black_box(queries.top_through_functions())));
    group.bench_function("top_resources/direct_sql", |b| b.iter(|| black_box(queries.top_direct())));
    group.bench_function("filtered_count/event_query", |b| b.iter(|| black_box(queries.count_through_functions())));
    group.bench_function("filtered_count/direct_sql", |b| b.iter(|| black_box(queries.count_direct())));
    group.bench_function("top_resources/rest", |b| b.iter(|| black_box(queries.top_through_rest())));
    group.bench_function("filtered_count/rest", |b| b.iter(|| black_box(queries.count_through_rest())));
    group.finish();

    drop(queries);
    drop(server);
    runtime.block_on(scratch.drop_now());
}

criterion_group!(benches, event_queries);
criterion_main!(benches);
