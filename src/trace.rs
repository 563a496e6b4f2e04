//! W3C trace context: the `traceparent` header (`00-<trace id>-<parent id>-<flags>`) that
//! makes one request one trace across gateway → bus → processor → reply. The HTTP APIs
//! read it from a request (or start a trace) and put it on every message the request
//! publishes; S2 carries it from a request message to its reply; the audit log keeps
//! headers, so the trace id is searchable (`livros logs trace <trace id>`).

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

/// The `traceparent` header for a message published now: a child of the request's trace.
pub fn header_for_publish() -> Option<(String, String)> {
    current().map(|t| (HEADER.to_string(), t.child().header()))
}

/// Axum middleware: continues the request's `traceparent` (or starts a trace) for the
/// handler, and answers with the server span's `traceparent`, so a client learns the
/// trace id it can search for (`livros logs trace`).
pub async fn middleware(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let incoming = request.headers().get(HEADER).and_then(|v| v.to_str().ok());
    let span = TraceParent::continue_or_start(incoming);
    let value = span.header();
    let mut response = CURRENT.scope(span, next.run(request)).await;
    if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

/// Puts on each record `out` caused by `cause` (a consumed message's headers) the trace
/// `cause` carries, as a child, unless the record has one already.
pub fn propagate(cause: &[(String, String)], out: &mut crate::bus::Record) {
    let Some(parent) = cause
        .iter()
        .find(|(k, _)| k == HEADER)
        .and_then(|(_, v)| TraceParent::parse(v))
    else {
        return;
    };
    if !out.headers.iter().any(|(k, _)| k == HEADER) {
        out.headers
            .push((HEADER.to_string(), parent.child().header()));
    }
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
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    /// The trace of `value` continued, or a new one when `value` is absent or invalid.
    pub fn continue_or_start(value: Option<&str>) -> Self {
        value
            .and_then(Self::parse)
            .map(|t| t.child())
            .unwrap_or_else(Self::root)
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
        let root = TraceParent::continue_or_start(Some("garbage"));
        assert!(TraceParent::parse(&root.header()).is_some());
        let continued = TraceParent::continue_or_start(Some(value));
        assert_eq!(continued.trace_id, t.trace_id);
    }
}
