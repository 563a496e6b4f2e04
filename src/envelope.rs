//! The event envelope: CloudEvents 1.0 attributes in structured JSON mode.
//!
//! Our S1 publishes `{"specversion":"1.0","id":…,"type":…,"source":…,"subject":…,"time":…,
//! "correlationid":…,"datacontenttype":"application/json","data":{…}}`, and the same
//! attributes as `ce_*` headers (CloudEvents' Kafka binding names), so any Kafka client can
//! read it as plain JSON. Consumers also accept a bare entity object (the seeds' own
//! producers send those), which [`data_of`] returns unchanged.

use serde::Serialize;
use serde_json::Value;

/// The `source` attribute of everything S1 publishes.
pub const SOURCE: &str = "livros/s1";

/// An event around `data`, serialized straight from the entity (no intermediate tree).
#[derive(Debug, Serialize)]
pub struct Envelope<'a, T: Serialize> {
    specversion: &'static str,
    id: String,
    #[serde(rename = "type")]
    kind: &'a str,
    source: &'static str,
    subject: &'a str,
    time: String,
    correlationid: String,
    datacontenttype: &'static str,
    data: &'a T,
}

impl<'a, T: Serialize> Envelope<'a, T> {
    /// An event of type `kind` about entity `subject`. Without a correlation id, the event
    /// starts its own conversation: its correlation id is its id.
    pub fn new(kind: &'a str, subject: &'a str, correlation_id: Option<&str>, data: &'a T) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        Self {
            specversion: "1.0",
            correlationid: correlation_id.map_or_else(|| id.clone(), str::to_string),
            id,
            kind,
            source: SOURCE,
            subject,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            datacontenttype: "application/json",
            data,
        }
    }

    /// The envelope as JSON bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("entities serialize")
    }

    /// The headers that repeat the attributes (CloudEvents Kafka binding, `ce_` prefix).
    pub fn headers(&self) -> Vec<(String, String)> {
        vec![
            ("ce_id".into(), self.id.clone()),
            ("ce_type".into(), self.kind.to_string()),
            ("ce_source".into(), self.source.to_string()),
            ("ce_time".into(), self.time.clone()),
            ("ce_subject".into(), self.subject.to_string()),
            ("ce_correlationid".into(), self.correlationid.clone()),
        ]
    }
}

/// The entity inside a message: the envelope's `data`, or the value itself when it is bare.
pub fn data_of(value: Value) -> Value {
    match value {
        Value::Object(mut map) if map.contains_key("specversion") && map.contains_key("data") => {
            map.remove("data").unwrap_or(Value::Null)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_round_trip_and_headers() {
        let data = json!({"id": "b1"});
        let e = Envelope::new("livros.book", "b1", Some("corr"), &data);
        let h = e.headers();
        assert!(h.contains(&("ce_subject".into(), "b1".into())));
        assert!(h.contains(&("ce_correlationid".into(), "corr".into())));
        let value: Value = serde_json::from_slice(&e.to_vec()).unwrap();
        assert_eq!(value["specversion"], "1.0");
        assert_eq!(value["type"], "livros.book");
        assert_eq!(data_of(value), json!({"id": "b1"}));
        assert_eq!(data_of(json!({"id": "x"})), json!({"id": "x"}));
        let own = Envelope::new("t", "s", None, &data);
        assert_eq!(own.id, own.correlationid);
    }
}
