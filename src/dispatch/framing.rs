//! How a delivery goes on the wire, by its target's `format`: the body as it is (Standard
//! Webhooks), or a CloudEvent per the CloudEvents HTTP protocol binding, binary or structured
//! mode. Pure: the sender signs whatever this frames.

use base64::Engine;
use chrono::SecondsFormat;
use serde_json::{Value, json};

use crate::api::DeliveryFormat;
use crate::store::deliveries::Claimed;

/// The body, its content type, and the headers a format adds.
#[derive(Debug, Clone, PartialEq)]
pub struct Framed {
    pub body: Vec<u8>,
    pub content_type: String,
    pub headers: Vec<(&'static str, String)>,
}

const SPEC_VERSION: &str = "1.0";
const STRUCTURED: &str = "application/cloudevents+json";

/// Frames a delivery. `transformed`: its body is a transform's, not the event's own.
pub fn frame(format: DeliveryFormat, delivery: &Claimed, transformed: bool) -> Framed {
    let content_type = delivery
        .content_type
        .clone()
        .unwrap_or_else(|| "application/json".to_owned());
    if format == DeliveryFormat::StandardWebhooks {
        return Framed {
            body: delivery.body.clone(),
            content_type,
            headers: Vec::new(),
        };
    }
    let (data, data_type) = data_of(delivery, transformed, content_type);
    let source = if delivery.source.is_empty() {
        format!("/namespaces/{}/events", delivery.namespace)
    } else {
        format!("/namespaces/{}/sources/{}", delivery.namespace, delivery.source)
    };
    let id = delivery.id.to_string();
    let time = delivery.received_at.to_rfc3339_opts(SecondsFormat::Millis, true);
    match format {
        DeliveryFormat::CloudeventsBinary => Framed {
            body: data,
            content_type: data_type,
            headers: vec![
                ("ce-specversion", SPEC_VERSION.to_owned()),
                ("ce-id", id),
                ("ce-source", source),
                ("ce-type", delivery.event_type.clone()),
                ("ce-time", time),
            ],
        },
        _ => {
            let mut event = json!({
                "specversion": SPEC_VERSION, "id": id, "source": source, "type": delivery.event_type,
                "time": time, "datacontenttype": data_type,
            });
            // JSON data is embedded as JSON; anything else travels as base64.
            match is_json(&data_type)
                .then(|| serde_json::from_slice::<Value>(&data).ok())
                .flatten()
            {
                Some(value) => event["data"] = value,
                None => event["data_base64"] = base64::engine::general_purpose::STANDARD.encode(&data).into(),
            }
            Framed {
                body: event.to_string().into_bytes(),
                content_type: STRUCTURED.to_owned(),
                headers: Vec::new(),
            }
        }
    }
}

/// The event's data and its content type: a published event's `data` (its type and time are
/// attributes already), else the body as it is.
fn data_of(delivery: &Claimed, transformed: bool, content_type: String) -> (Vec<u8>, String) {
    if delivery.source.is_empty()
        && !transformed
        && let Ok(Value::Object(mut envelope)) = serde_json::from_slice::<Value>(&delivery.body)
        && let Some(data) = envelope.remove("data")
    {
        return (data.to_string().into_bytes(), "application/json".to_owned());
    }
    (delivery.body.clone(), content_type)
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence == "application/json" || essence.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(source: &str, body: &str, content_type: Option<&str>) -> Claimed {
        Claimed {
            id: uuid::Uuid::nil(),
            namespace: "shop".into(),
            target_kind: crate::api::TargetKind::Subscription,
            target: "crm".into(),
            attempts: 0,
            lease_until: chrono::Utc::now(),
            source: source.into(),
            event_type: "order.created".into(),
            body: body.as_bytes().to_vec(),
            content_type: content_type.map(str::to_owned),
            received_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            event_id: uuid::Uuid::nil(),
            ordering_key: None,
            traceparent: None,
            tracestate: None,
            held: crate::store::deliveries::Held::Queue,
        }
    }

    const ENVELOPE: &str =
        r#"{"type":"order.created","timestamp":"2027-01-15T08:00:00.000Z","data":{"n":7}}"#;

    #[test]
    fn standard_webhooks_sends_the_body_as_it_is() {
        let framed = frame(
            DeliveryFormat::StandardWebhooks,
            &claimed("", ENVELOPE, None),
            false,
        );
        assert_eq!(framed.body, ENVELOPE.as_bytes());
        assert!(framed.headers.is_empty());
    }

    #[test]
    fn binary_mode_puts_the_attributes_in_headers_and_a_published_events_data_in_the_body() {
        let framed = frame(
            DeliveryFormat::CloudeventsBinary,
            &claimed("", ENVELOPE, None),
            false,
        );
        assert_eq!(framed.body, br#"{"n":7}"#);
        assert_eq!(framed.content_type, "application/json");
        let header = |name: &str| {
            framed
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("ce-id"), Some("00000000-0000-0000-0000-000000000000"));
        assert_eq!(header("ce-source"), Some("/namespaces/shop/events"));
        assert_eq!(header("ce-type"), Some("order.created"));
        assert_eq!(header("ce-time"), Some("2027-01-15T08:00:00.000Z"));
        // A provider's event is its data, as received.
        let stripe = frame(
            DeliveryFormat::CloudeventsBinary,
            &claimed("stripe", "{\"id\":\"evt_1\"}", None),
            false,
        );
        assert_eq!(stripe.body, b"{\"id\":\"evt_1\"}");
        assert!(
            stripe
                .headers
                .contains(&("ce-source", "/namespaces/shop/sources/stripe".to_owned()))
        );
    }

    #[test]
    fn structured_mode_embeds_json_data_and_base64_for_the_rest() {
        let framed = frame(
            DeliveryFormat::CloudeventsStructured,
            &claimed("", ENVELOPE, None),
            false,
        );
        assert_eq!(framed.content_type, "application/cloudevents+json");
        let event: Value = serde_json::from_slice(&framed.body).unwrap();
        assert_eq!(event["data"], json!({"n": 7}));
        assert_eq!(event["specversion"], "1.0");
        let form = claimed("gh", "payload=%7B%7D", Some("application/x-www-form-urlencoded"));
        let event: Value =
            serde_json::from_slice(&frame(DeliveryFormat::CloudeventsStructured, &form, false).body).unwrap();
        assert_eq!(event["data_base64"], "cGF5bG9hZD0lN0IlN0Q=");
        assert_eq!(event["datacontenttype"], "application/x-www-form-urlencoded");
        // A transformed published event is the transform's output, not the envelope's data.
        let transformed = frame(
            DeliveryFormat::CloudeventsStructured,
            &claimed("", r#"{"text":"hi"}"#, None),
            true,
        );
        let event: Value = serde_json::from_slice(&transformed.body).unwrap();
        assert_eq!(event["data"], json!({"text": "hi"}));
    }
}
