//! W3C trace context: the `traceparent` header (`00-<trace id>-<parent id>-<flags>`) that
//! makes one request one trace across gateway → bus → processor → reply. The HTTP APIs
//! read it from a request (or start a trace) and put it on every message the request
//! publishes; S2 carries it from a request message to its reply; the audit log keeps
//! headers, so the trace id is searchable (`livros logs trace <trace id>`).
//!
//! **Export**: with `OTEL_EXPORTER_OTLP_ENDPOINT` set (and [`init_export`] called, as the
//! binary does), each hop is also a span sent over OTLP/HTTP (protobuf) in batches: the
//! API's server span, the producer span of each message it publishes, S2's consumer span
//! of each traced message. A span's id is the one the next hop's `traceparent` names as
//! its parent, so a collector joins them into one trace. Unset: nothing is exported and
//! nothing is buffered.

use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanProcessor};

/// The header's name, in HTTP and in message headers alike.
pub const HEADER: &str = "traceparent";

tokio::task_local! {
    /// The trace of the request being served (set by [`middleware`]).
    static CURRENT: TraceParent;
}

/// The trace of the HTTP request this task serves, if any: what a handler puts, as a
/// child, on the messages it publishes.
pub fn current() -> Option<TraceParent> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The `traceparent` header for a message published now on `topic`: a child of the
/// request's trace (the producer span).
pub fn header_for_publish(topic: &str) -> Option<(String, String)> {
    let request = current()?;
    let send = request.child();
    export(
        SpanKind::Producer,
        &send,
        Some(&request),
        SystemTime::now(),
        || (format!("send {topic}"), destination(topic)),
    );
    Some((HEADER.to_string(), send.header()))
}

/// Axum middleware: continues the request's `traceparent` (or starts a trace) for the
/// handler, and answers with the server span's `traceparent`, so a client learns the
/// trace id it can search for (`livros logs trace`).
pub async fn middleware(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let incoming = request.headers().get(HEADER).and_then(|v| v.to_str().ok());
    let parent = incoming.and_then(TraceParent::parse);
    let span = parent
        .as_ref()
        .map(TraceParent::child)
        .unwrap_or_else(TraceParent::root);
    let value = span.header();
    // The server span's details are built only when something exports them: most runs
    // export nothing, and every request would pay for them.
    let exported = EXPORTER.get().map(|_| {
        (
            span.clone(),
            SystemTime::now(),
            request.method().to_string(),
            request.uri().path().to_string(),
        )
    });
    let mut response = CURRENT.scope(span, next.run(request)).await;
    if let Ok(value) = axum::http::HeaderValue::try_from(value) {
        response.headers_mut().insert(HEADER, value);
    }
    if let Some((span, started, method, path)) = exported {
        let status = i64::from(response.status().as_u16());
        export(SpanKind::Server, &span, parent.as_ref(), started, || {
            let attributes = vec![
                KeyValue::new("http.request.method", method.clone()),
                KeyValue::new("url.path", path.clone()),
                KeyValue::new("http.response.status_code", status),
            ];
            (format!("{method} {path}"), attributes)
        });
    }
    response
}

/// The consumer span of a traced message (`headers` holding a `traceparent`) processed
/// from `started` until now: exported, and returned so what the processing publishes
/// ([`propagate`]) joins the trace under it. `None` for a message with no trace.
pub fn consumed(
    topic: &str,
    headers: &[(String, String)],
    started: SystemTime,
) -> Option<TraceParent> {
    let parent = headers
        .iter()
        .find(|(k, _)| k == HEADER)
        .and_then(|(_, v)| TraceParent::parse(v))?;
    let span = parent.child();
    export(SpanKind::Consumer, &span, Some(&parent), started, || {
        (format!("process {topic}"), destination(topic))
    });
    Some(span)
}

/// Puts on `out`, published because of a message processed in span `by`, a `traceparent`
/// naming `by` as its parent, unless the record has one already.
pub fn propagate(by: &TraceParent, out: &mut crate::bus::Record) {
    if !out.headers.iter().any(|(k, _)| k == HEADER) {
        out.headers.push((HEADER.to_string(), by.header()));
    }
}

static EXPORTER: OnceLock<BatchSpanProcessor> = OnceLock::new();

/// Starts exporting spans over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the
/// exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables, and `OTEL_SERVICE_NAME`
/// names the service, `livros` by default). Returns whether it exports.
pub fn init_export() -> Result<bool, String> {
    if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").map_or(true, |v| v.is_empty()) {
        return Ok(false);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "livros".to_string());
    processor.set_resource(
        &opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build(),
    );
    let _ = EXPORTER.set(processor);
    Ok(true)
}

/// Sends what is buffered and stops exporting (at exit).
pub fn shutdown_export() {
    if let Some(processor) = EXPORTER.get() {
        let _ = processor.shutdown();
    }
}

/// The attributes of a span that sends or takes a message on `topic`.
fn destination(topic: &str) -> Vec<KeyValue> {
    vec![KeyValue::new(
        "messaging.destination.name",
        topic.to_string(),
    )]
}

/// Hands one finished span to the exporter, if exporting. Its name and attributes
/// (`details`) are made only then: most runs export nothing.
fn export(
    kind: SpanKind,
    span: &TraceParent,
    parent: Option<&TraceParent>,
    started: SystemTime,
    details: impl FnOnce() -> (String, Vec<KeyValue>),
) {
    let Some(processor) = EXPORTER.get() else {
        return;
    };
    let (name, attributes) = details();
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(&span.trace_id),
        SpanId::from_hex(&span.parent_id),
    ) else {
        return;
    };
    let parent_span_id = parent
        .and_then(|p| SpanId::from_hex(&p.parent_id).ok())
        .unwrap_or(SpanId::INVALID);
    processor.on_end(SpanData {
        span_context: SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(span.flags),
            false,
            TraceState::default(),
        ),
        parent_span_id,
        parent_span_is_remote: parent.is_some(),
        span_kind: kind,
        name: name.into(),
        start_time: started,
        end_time: SystemTime::now(),
        attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: Status::Unset,
        instrumentation_scope: InstrumentationScope::builder("livros").build(),
    });
}

/// One `traceparent` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero: the span that sent it.
    pub parent_id: String,
    /// Trace flags (`01`: sampled).
    pub flags: u8,
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn valid_id(id: &str, len: usize) -> bool {
    id.len() == len
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id.bytes().any(|b| b != b'0')
}

impl TraceParent {
    /// Reads a header value; `None` if it is not a valid version-00 one (the spec says to
    /// start a new trace then).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        if !valid_id(trace_id, 32) || !valid_id(parent_id, 16) || flags.len() != 2 {
            return None;
        }
        Some(Self {
            trace_id: trace_id.to_string(),
            parent_id: parent_id.to_string(),
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// A new trace, sampled.
    pub fn root() -> Self {
        // A v4 UUID's 122 random bits are plenty, and never all zero.
        Self {
            trace_id: hex(uuid::Uuid::new_v4().as_bytes()),
            parent_id: new_span_id(),
            flags: 1,
        }
    }

    /// The same trace, sent by a new span (what a service puts on what it sends on).
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            parent_id: new_span_id(),
            flags: self.flags,
        }
    }

    /// The header value.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.parent_id, self.flags)
    }
}

fn new_span_id() -> String {
    let mut span = [0u8; 8];
    span.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    span[0] |= 1; // never all zero
    hex(&span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_writes_and_continues_trace_context() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceParent::parse(value).unwrap();
        assert_eq!(t.header(), value);
        let child = t.child();
        assert_eq!(child.trace_id, t.trace_id);
        assert_ne!(child.parent_id, t.parent_id);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
        let root = TraceParent::root();
        assert!(TraceParent::parse(&root.header()).is_some());
        assert_ne!(root.trace_id, TraceParent::root().trace_id);
    }
}
