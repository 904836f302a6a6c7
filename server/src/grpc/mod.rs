//! AgentService over gRPC: Register (enrollment token, plain TLS) and the
//! Stream session (mutual TLS: the client certificate names the daemon).

pub mod discovered;
pub mod register;
pub mod stream;

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tyr_proto::agent_service_server::AgentService;
use tyr_proto::{AgentMessage, RegisterRequest, RegisterResponse, ServerMessage};

use self::register::RegisterContext;
use self::stream::StreamContext;

/// The AgentService implementation: what Register and Stream share.
#[derive(Debug, Clone)]
pub struct AgentServiceImpl {
    /// Enrollment: tokens, CSR signing.
    pub register: Arc<RegisterContext>,
    /// Stream sessions: identity, policy, ingest.
    pub stream: Arc<StreamContext>,
}

/// The server half of a Stream: messages to the daemon.
pub type ServerStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentService for AgentServiceImpl {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let response = register::register(&self.register, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    type StreamStream = ServerStream;

    async fn stream(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let outbound = stream::open(Arc::clone(&self.stream), request).await?;
        Ok(Response::new(outbound))
    }
}
