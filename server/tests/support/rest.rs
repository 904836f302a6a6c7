//! An HTTPS client for the REST API of a [`crate::support::serving::TestServer`],
//! trusting only that server's CA, as `tyr` does after `tyr login`.

#![allow(dead_code)]

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

/// A REST client, optionally logged in.
pub struct Rest {
    base: String,
    client: reqwest::Client,
    /// The bearer token sent with requests.
    pub token: Option<String>,
}

/// A response: status, body as JSON (Null when empty or not JSON), headers.
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// The error code of an error reply.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Rest {
    /// A client for `server`'s REST address.
    pub fn new(server: &crate::support::serving::TestServer) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(server.ca_pem().as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder().use_preconfigured_tls(tls).build().expect("client");
        Self { base: format!("https://localhost:{}", server.rest_addr.port()), client, token: None }
    }

    /// Sends a request with an optional JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        Self::reply(request.send().await.expect("request")).await
    }

    /// Sends raw bytes as a JSON body.
    pub async fn raw(&self, method: Method, path: &str, body: Vec<u8>) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        Self::reply(request.send().await.expect("request")).await
    }

    async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, body, text, headers }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, None).await
    }

    /// Logs in; panics unless it succeeds.
    pub async fn login(&mut self, username: &str, password: &str) {
        let reply = self.post("/api/v1/login", serde_json::json!({ "username": username, "password": password })).await;
        assert_eq!(reply.status, StatusCode::OK, "login: {}", reply.text);
        self.token = Some(reply.body["token"].as_str().expect("token").to_owned());
    }
}

impl Rest {
    /// Opens a streaming GET (server-sent events).
    pub async fn stream(&self, path: &str) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("stream request");
        assert_eq!(response.status(), StatusCode::OK);
        response
    }
}
