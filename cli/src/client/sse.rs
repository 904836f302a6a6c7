//! Server-sent events of `GET /api/v1/events/stream`: `data:` lines
//! holding one event each (JSON), `event: error` when a poll of the event
//! store failed (the stream goes on), `:` keep-alive comments.

use super::{ClientError, echo, error_chain};
use crate::model::{ErrorBody, Event};

/// What a live tail delivers.
#[derive(Debug)]
pub enum StreamItem {
    /// A new event.
    Event(Box<Event>),
    /// The server could not read events for a while (the tail goes on).
    Warning(String),
}

/// A server-sent event stream of events (`data:` lines holding one event
/// each; `event: error` says a poll failed, and the stream goes on).
#[derive(Debug)]
pub struct EventStream {
    response: reqwest::Response,
    url: String,
    parser: SseParser,
}

impl EventStream {
    /// Reads the body of a stream response from `url`.
    pub(super) fn new(response: reqwest::Response, url: String) -> Self {
        Self { response, url, parser: SseParser::default() }
    }

    /// The next event or warning; None when the server ends the stream.
    pub async fn next(&mut self) -> Result<Option<StreamItem>, ClientError> {
        loop {
            if let Some(event) = self.parser.next_event(&self.url)? {
                return Ok(Some(event));
            }
            let chunk = self
                .response
                .chunk()
                .await
                .map_err(|error| ClientError::Transport { url: self.url.clone(), message: error_chain(&error) })?;
            match chunk {
                Some(bytes) => self.parser.push(&bytes),
                None => return Ok(None),
            }
        }
    }
}

/// Server-sent events, parsed from bytes as they arrive.
#[derive(Debug, Default)]
struct SseParser {
    /// Bytes not yet forming a whole line.
    buffer: Vec<u8>,
    /// The `data:` lines of the event being read.
    data: String,
    /// Its `event:` name.
    event: Option<String>,
}

/// The longest event accepted, in bytes (an event row is a few KiB).
const MAX_SSE_EVENT: usize = 4 * 1024 * 1024;

impl SseParser {
    fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete event in what was pushed, if any.
    fn next_event(&mut self, url: &str) -> Result<Option<StreamItem>, ClientError> {
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(event) = self.line(line.trim_end_matches(['\n', '\r']), url)? {
                return Ok(Some(event));
            }
        }
        if self.buffer.len() + self.data.len() > MAX_SSE_EVENT {
            return Err(ClientError::Decode { url: url.to_owned(), message: "an event larger than 4 MiB".to_owned() });
        }
        Ok(None)
    }

    /// Takes one line; an event when the line ends one.
    fn line(&mut self, line: &str, url: &str) -> Result<Option<StreamItem>, ClientError> {
        if line.is_empty() {
            let data = std::mem::take(&mut self.data);
            let event = self.event.take();
            if data.is_empty() {
                return Ok(None);
            }
            if event.as_deref() == Some("error") {
                let message = match serde_json::from_str::<ErrorBody>(&data) {
                    Ok(body) => body.error.message,
                    Err(_) => echo(&data),
                };
                return Ok(Some(StreamItem::Warning(message)));
            }
            return serde_json::from_str(&data).map(|event| Some(StreamItem::Event(Box::new(event)))).map_err(
                |error| ClientError::Decode { url: url.to_owned(), message: format!("{error}: {}", echo(&data)) },
            );
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value);
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events() {
        let id = "0190b6d2-0000-7000-8000-000000000001";
        let event = format!(r#"{{"event_id":"{id}","daemon_id":"{id}","kind":"NET_CONNECT","verdict":"DENY"}}"#);
        let mut parser = SseParser::default();
        parser.push(b": keep-alive\n\nevent: event\r\ndata: ");
        assert!(parser.next_event("u").expect("no error").is_none(), "an incomplete event waits");
        parser.push(format!("{event}\r\n\r\ndata: {event}\n\n").as_bytes());
        let Some(StreamItem::Event(first)) = parser.next_event("u").expect("parses") else { panic!("an event") };
        assert_eq!(first.kind, "NET_CONNECT");
        assert!(parser.next_event("u").expect("parses").is_some(), "the second event");
        assert!(parser.next_event("u").expect("parses").is_none());
        parser.push(b"event: error\ndata: event store query failed: down\n\n");
        let Some(StreamItem::Warning(warning)) = parser.next_event("u").expect("a warning, not an error") else {
            panic!("a warning")
        };
        assert_eq!(warning, "event store query failed: down");
        parser.push(b"data: {not json}\n\n");
        assert!(parser.next_event("u").is_err(), "a malformed event is an error");
    }
}
