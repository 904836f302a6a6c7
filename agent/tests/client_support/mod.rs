//! A fake tyr-server for tyrd's client tests: a CA and a serving
//! certificate made with rcgen, and an in-process tonic AgentService over
//! TLS (client certificates optional for Register, required on Stream) that
//! records what it receives and sends what the test scripts.

#![allow(dead_code)]

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use tyr_proto::agent_service_server::{AgentService, AgentServiceServer};
use tyr_proto::{AgentMessage, RegisterRequest, RegisterResponse, ServerMessage};

/// The token the fake server accepts.
pub const GOOD_TOKEN: &str = "tokid.goodsecret";
/// A second token it accepts (for re-enrollment).
pub const OTHER_TOKEN: &str = "tokid2.othersecret";

/// A CA that can sign.
pub struct TestCa {
    pub pem: String,
    pub der: Vec<u8>,
    pub issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        Self { pem: cert.pem(), der: cert.der().to_vec(), issuer: Issuer::new(params, key) }
    }

    /// A serving certificate for 127.0.0.1: (chain PEM leaf + CA, key PEM).
    pub fn server_identity(&self) -> (String, String) {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("leaf params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (format!("{}{}", cert.pem(), self.pem), key.serialize_pem())
    }

    /// Signs a CSR as a client certificate.
    pub fn sign_csr(&self, csr_pem: &str) -> Result<String, rcgen::Error> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

/// What the fake server saw, and what the test makes it do.
#[derive(Default)]
pub struct FakeState {
    /// Register calls that reached the handler.
    pub registers: AtomicUsize,
    /// Streams opened (accepted or refused).
    pub streams: AtomicUsize,
    /// Every message received on streams, in order, with the stream number.
    pub received: Mutex<Vec<(usize, AgentMessage)>>,
    /// Streams whose request side ended cleanly (end of stream, no error).
    pub clean_ends: AtomicUsize,
    /// Refuse every stream with UNAUTHENTICATED.
    pub refuse_streams: AtomicBool,
    /// The sender to the current stream's client.
    pub to_client: Mutex<Option<mpsc::Sender<Result<ServerMessage, Status>>>>,
    /// Daemon ids handed out.
    pub enrolled: Mutex<Vec<String>>,
    /// Refuse the batch with this id: the stream ends with INVALID_ARGUMENT.
    pub refuse_batch: Mutex<Option<u64>>,
    /// Times a batch was refused.
    pub refused_batches: AtomicUsize,
    /// Acknowledge every batch not refused as soon as it arrives.
    pub auto_ack: AtomicBool,
}

impl FakeState {
    pub fn messages(&self) -> Vec<(usize, AgentMessage)> {
        self.received.lock().expect("lock").clone()
    }

    /// Sends to the client of the current stream.
    pub async fn send(&self, message: tyr_proto::server_message::Payload) {
        let tx = self.to_client.lock().expect("lock").clone().expect("a stream is open");
        tx.send(Ok(ServerMessage { payload: Some(message) })).await.expect("client stream open");
    }

    /// Ends the current stream from the server side.
    pub fn close_stream(&self) {
        self.to_client.lock().expect("lock").take();
    }
}

/// The fake AgentService.
pub struct FakeServer {
    pub state: Arc<FakeState>,
    pub ca: Arc<TestCa>,
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for FakeServer {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        self.state.registers.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        if request.enrollment_token != GOOD_TOKEN && request.enrollment_token != OTHER_TOKEN {
            return Err(Status::unauthenticated("enrollment refused"));
        }
        let csr = String::from_utf8(request.csr_pem).map_err(|_| Status::invalid_argument("csr"))?;
        let cert = self.ca.sign_csr(&csr).map_err(|_| Status::invalid_argument("csr"))?;
        let id = uuid::Uuid::new_v4().to_string();
        self.state.enrolled.lock().expect("lock").push(id.clone());
        Ok(Response::new(RegisterResponse {
            agent_id: id,
            client_cert_pem: cert.into_bytes(),
            ca_cert_pem: self.ca.pem.clone().into_bytes(),
        }))
    }

    type StreamStream = ServerStream;

    async fn stream(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let number = self.state.streams.fetch_add(1, Ordering::SeqCst) + 1;
        if request.peer_certs().is_none_or(|certs| certs.is_empty()) {
            return Err(Status::unauthenticated("client certificate required"));
        }
        if self.state.refuse_streams.load(Ordering::SeqCst) {
            return Err(Status::unauthenticated("unknown or revoked daemon"));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        *self.state.to_client.lock().expect("lock") = Some(tx);
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            // After a refusal, nothing more on this stream is acknowledged.
            let mut refused = false;
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        let batch = match &message.payload {
                            Some(tyr_proto::agent_message::Payload::EventBatch(batch)) => {
                                Some((batch.batch_id, batch.events.last().map_or(batch.batch_id, |e| e.seq)))
                            }
                            _ => None,
                        };
                        state.received.lock().expect("lock").push((number, message));
                        let Some((batch_id, last)) = batch else { continue };
                        if refused {
                            continue;
                        }
                        if *state.refuse_batch.lock().expect("lock") == Some(batch_id) {
                            state.refused_batches.fetch_add(1, Ordering::SeqCst);
                            refused = true;
                            let tx = state.to_client.lock().expect("lock").take();
                            if let Some(tx) = tx {
                                let _ = tx.send(Err(Status::invalid_argument("event field over the limit"))).await;
                            }
                            // Keep reading until the client goes: dropping the request
                            // side now could reset the stream before the status is out.
                            continue;
                        }
                        let tx = state.to_client.lock().expect("lock").clone();
                        let Some(tx) = tx else { continue };
                        if state.auto_ack.load(Ordering::SeqCst) {
                            let ack = tyr_proto::BatchAck { batch_id, acked_seq: last };
                            let payload = Some(tyr_proto::server_message::Payload::Ack(ack));
                            let _ = tx.send(Ok(ServerMessage { payload })).await;
                        }
                    }
                    Ok(None) => {
                        state.clean_ends.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A running fake server.
pub struct Running {
    pub address: String,
    pub ca: Arc<TestCa>,
    pub state: Arc<FakeState>,
    pub shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a fake server on 127.0.0.1 (any port).
pub async fn start() -> Running {
    let ca = Arc::new(TestCa::new("fake tyr CA"));
    let (chain, key) = ca.server_identity();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(chain, key))
        .client_ca_root(Certificate::from_pem(&ca.pem))
        .client_auth_optional(true);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let address = format!("https://{}", listener.local_addr().expect("local addr"));
    let state = Arc::new(FakeState::default());
    let shutdown = CancellationToken::new();
    let service = AgentServiceServer::new(FakeServer { state: Arc::clone(&state), ca: Arc::clone(&ca) });
    let stop = shutdown.clone();
    tokio::spawn(async move {
        Server::builder()
            .tls_config(tls)
            .expect("server tls")
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
            .await
            .expect("fake server runs");
    });
    Running { address, ca, state, shutdown }
}

/// A fresh directory under the system temp dir.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Waits until `check` holds (polling), or panics after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
