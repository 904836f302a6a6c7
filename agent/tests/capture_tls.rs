//! TLS SNI capture at the socket layer: a TLS server on 127.0.0.1, and three
//! TLS stacks connecting to it with SNI `api.openai.com` — curl (OpenSSL),
//! rustls in this process, Python's `ssl` — each yields a TLS event with the
//! SNI, the remote address, the provider, and the right pid.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use support::{Observer, field, meta};

const SNI: &str = "api.openai.com";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server for SNI on 127.0.0.1 answering every connection with a
/// short HTTP response; returns its port and its certificate.
fn tls_server() -> (u16, CertificateDer<'static>) {
    let key = rcgen::generate_simple_self_signed(vec![SNI.to_owned()]).expect("certificate");
    let cert = key.cert.der().clone();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], private)
        .expect("server config");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut buf = [0u8; 1024];
                let _ = tls.read(&mut buf);
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (port, cert)
}

/// A rustls client in this process, trusting only the test certificate.
fn rustls_client(port: u16, cert: CertificateDer<'static>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(SNI).expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET / HTTP/1.1\r\nhost: api.openai.com\r\n\r\n").expect("request over TLS");
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    assert!(String::from_utf8_lossy(&response).contains("200 OK"), "handshake completed");
}

#[test]
fn sni_from_openssl_rustls_and_python() {
    let (port, cert) = tls_server();
    let observer = Observer::start(&["--kind", "tls"]);

    let curl = Command::new("curl")
        .args(["-sk", "--max-time", "10", "--resolve", &format!("{SNI}:{port}:127.0.0.1")])
        .arg(format!("https://{SNI}:{port}/"))
        .spawn()
        .expect("curl");
    let curl_pid = curl.id();
    let curl_out = curl.wait_with_output().expect("curl finished");
    assert!(curl_out.status.success(), "curl: {curl_out:?}");

    rustls_client(port, cert);

    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context()\n\
         ctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE\n\
         s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})), server_hostname='{SNI}')\n\
         s.close()\n"
    );
    let python = Command::new("python3").args(["-c", &script]).spawn().expect("python3");
    let python_pid = python.id();
    let python_out = python.wait_with_output().expect("python finished");
    assert!(python_out.status.success());

    let me = std::process::id();
    for (who, pid) in [("curl", curl_pid), ("rustls", me), ("python", python_pid)] {
        let event = observer.wait_for(who, |e| field(e, "kind") == "TLS" && e["pid"].as_i64() == Some(i64::from(pid)));
        assert_eq!(field(&event, "resource"), SNI, "{who}: {event}");
        assert_eq!(meta(&event, "sni"), SNI, "{who}");
        assert_eq!(meta(&event, "remote_ip"), "127.0.0.1", "{who}");
        assert_eq!(meta(&event, "remote_port"), port.to_string(), "{who}");
        assert_eq!(meta(&event, "provider"), "openai", "{who}");
    }
    let observed = observer.stop();
    assert_eq!(observed.counters["tls_unparsed"], 0);
}

/// TLS rules are decided in userspace from every ClientHello, whatever the
/// filters: under the product pages' SNI policy, with only execs of another
/// command selected, a handshake to an unapproved name is reported as a
/// would-be DENY (TLS cannot be refused once the hello is sent), and one to
/// an approved provider, a plain allow, is not printed.
#[test]
fn tls_rules_are_decided_whatever_the_filters() {
    let (port, _cert) = tls_server();
    let dir = std::env::temp_dir().join(support::marker("tyr-tls-policy-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "- name: only-approved-llm-providers\n  action: tls_connect\n  sni_pattern: \"*.openai.com|*.anthropic.com|api.mistral.ai\"\n  verdict: allow\n  severity: low\n\
         - name: block-unknown-llm-destinations\n  action: tls_connect\n  verdict: deny\n  severity: high\n",
    )
    .expect("policy");
    let observer =
        Observer::start(&["--kind", "exec", "--comm", "no-such-comm", "--policy", policy.to_str().expect("utf-8")]);

    let curl = |name: &str| {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "10", "--resolve", &format!("{name}:{port}:127.0.0.1")])
            .arg(format!("https://{name}:{port}/"))
            .output()
            .expect("curl");
        assert!(out.status.success(), "TLS rules cannot refuse a handshake: {out:?}");
    };
    curl(SNI);
    curl("evil.example.com");

    let denied = observer.wait_for("unapproved TLS", |e| field(e, "resource") == "evil.example.com");
    let observed = observer.stop();
    assert_eq!(field(&denied, "kind"), "TLS");
    assert_eq!(field(&denied, "verdict"), "ALLOW", "the handshake went through");
    assert_eq!(meta(&denied, "policy_verdict"), "DENY");
    assert_eq!(meta(&denied, "enforced"), "false");
    assert_eq!(meta(&denied, "rule"), "block-unknown-llm-destinations");
    assert_eq!(field(&denied, "severity"), "HIGH");
    let approved = observed.events.iter().find(|e| field(e, "resource") == SNI);
    assert!(approved.is_none(), "a plain allow outside the filters was printed: {approved:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
