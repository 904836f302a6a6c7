//! The generated AgentService compiles into a tonic server and client that
//! talk over loopback: Register answers, and Stream carries one message each
//! way.

use std::pin::Pin;

use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tyr_proto::agent_message::Payload as AgentPayload;
use tyr_proto::agent_service_client::AgentServiceClient;
use tyr_proto::agent_service_server::{AgentService, AgentServiceServer};
use tyr_proto::server_message::Payload as ServerPayload;
use tyr_proto::{
    AgentMessage, CapabilityReport, Event, EventBatch, EventKind, PolicyPush, RegisterRequest, RegisterResponse,
    ServerMessage, Verdict,
};

/// Answers Register with a fixed identity and each CapabilityReport with a
/// PolicyPush naming the reporting kernel, as the real lifecycle does.
struct Echo;

type ServerStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Echo {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let request = request.into_inner();
        if request.enrollment_token != "tyr_good" {
            return Err(Status::unauthenticated("enrollment token refused"));
        }
        Ok(Response::new(RegisterResponse {
            agent_id: format!("id-of-{}", request.agent_name),
            client_cert_pem: request.csr_pem,
            ca_cert_pem: b"ca".to_vec(),
        }))
    }

    type StreamStream = ServerStream;

    async fn stream(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (replies, outbound) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(Ok(message)) = inbound.next().await {
                if let Some(AgentPayload::Capabilities(report)) = message.payload {
                    let push = PolicyPush {
                        policy_version: 42,
                        cedar_text: format!("// for {}", report.kernel_version),
                        ..PolicyPush::default()
                    };
                    let reply = ServerMessage { payload: Some(ServerPayload::Policy(push)) };
                    if replies.send(Ok(reply)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }
}

#[tokio::test]
async fn register_and_stream_round_trip_over_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(Echo))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let mut client = AgentServiceClient::connect(format!("http://{address}")).await.expect("connect");

    let registered = client
        .register(RegisterRequest {
            agent_name: "host-a".into(),
            enrollment_token: "tyr_good".into(),
            csr_pem: b"csr".to_vec(),
            kernel_version: "6.1.0".into(),
            arch: "x86_64".into(),
        })
        .await
        .expect("register")
        .into_inner();
    assert_eq!(registered.agent_id, "id-of-host-a");
    assert_eq!(registered.client_cert_pem, b"csr");

    let refused = client
        .register(RegisterRequest { enrollment_token: "wrong".into(), ..RegisterRequest::default() })
        .await
        .expect_err("bad token refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let report = AgentMessage {
        payload: Some(AgentPayload::Capabilities(CapabilityReport {
            kernel_version: "6.18.44".into(),
            arch: "x86_64".into(),
            ..CapabilityReport::default()
        })),
    };
    let mut responses = client.stream(tokio_stream::iter([report])).await.expect("open stream").into_inner();
    let reply = responses.next().await.expect("one reply").expect("ok reply");
    match reply.payload {
        Some(ServerPayload::Policy(push)) => {
            assert_eq!(push.policy_version, 42);
            assert_eq!(push.cedar_text, "// for 6.18.44");
        }
        other => panic!("expected a PolicyPush, got {other:?}"),
    }
    assert!(responses.next().await.is_none(), "stream ends when the agent's side ends");
    server.abort();
}

#[test]
fn event_fields_keep_their_documented_numbers() {
    use prost::Message;
    // Field 4 (kind) = TLS, field 13 (seq) = 7: numbers are the wire contract.
    let event = Event { kind: EventKind::Tls as i32, verdict: Verdict::Deny as i32, seq: 7, ..Event::default() };
    let bytes = event.encode_to_vec();
    assert_eq!(bytes, [4 << 3, 5, 6 << 3, 2, 13 << 3, 7]);
    let batch = EventBatch { events: vec![event.clone()], batch_id: 1 };
    let decoded = EventBatch::decode(batch.encode_to_vec().as_slice()).expect("decode");
    assert_eq!(decoded.events, [event]);
}
