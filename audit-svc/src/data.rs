//! An event's `data`: between `google.protobuf.Struct` and canonical JSON text.
//!
//! Protobuf numbers are doubles. An integral value within ±2^53 becomes a JSON integer, any
//! other finite value a JSON number; NaN and infinities have no JSON form and are refused.
//! Read back, every number is again the same double, so a stored event's data round-trips.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Number, Value as Json};

use crate::chain::{Record, canonical_json};

/// Largest integer a double holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

fn to_json(value: &Value, path: &str) -> Result<Json, String> {
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            if !n.is_finite() {
                return Err(format!("{path}: {n} is not a finite number"));
            }
            if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER {
                Json::Number(Number::from(*n as i64))
            } else {
                Json::Number(
                    Number::from_f64(*n).ok_or_else(|| format!("{path}: {n} is not finite"))?,
                )
            }
        }
        Some(Kind::StructValue(s)) => Json::Object(object(s, path)?),
        Some(Kind::ListValue(list)) => Json::Array(
            list.values
                .iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn object(s: &Struct, path: &str) -> Result<Map<String, Json>, String> {
    s.fields
        .iter()
        .map(|(k, v)| Ok((k.clone(), to_json(v, &format!("{path}.{k}"))?)))
        .collect()
}

/// The canonical JSON text of `data` (an absent Struct is `{}`).
pub fn canonical_struct(data: Option<&Struct>) -> Result<String, String> {
    let value = match data {
        None => Json::Object(Map::new()),
        Some(s) => Json::Object(object(s, "data")?),
    };
    canonical_json(&value)
}

fn from_json(value: Json) -> Value {
    let kind = match value {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(from_json).collect(),
        }),
        Json::Object(map) => Kind::StructValue(Struct {
            fields: map.into_iter().map(|(k, v)| (k, from_json(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// The chain record of an event as the API returns it (one line of an export).
pub fn record_from_proto(event: &ebb_proto::audit::v1::AuditEvent) -> Result<Record, String> {
    let input = event.event.as_ref().ok_or("event is missing")?;
    let data = match &input.data {
        None => Map::new(),
        Some(s) => object(s, "data")?,
    };
    let ms = |ts: &Option<prost_types::Timestamp>, field: &str| {
        ts.as_ref()
            .ok_or_else(|| format!("{field} is missing"))
            .and_then(|t| ebb_common::time::from_timestamp(t).map_err(|e| format!("{field}: {e}")))
    };
    Ok(Record {
        organization_id: input.organization_id.clone(),
        sequence: event.sequence,
        id: input.id.clone(),
        action: input.action.clone(),
        subject_type: input.subject_type.clone(),
        subject_id: input.subject_id.clone(),
        actor: input.actor.clone(),
        data: Json::Object(data),
        occur_time_ms: ms(&input.occur_time, "occur_time")?,
        record_time_ms: ms(&event.record_time, "record_time")?,
        prev_hash: event.prev_hash.clone(),
        hash: event.hash.clone(),
    })
}

/// The Struct of stored canonical JSON text.
pub fn struct_from_canonical(text: &str) -> Result<Struct, String> {
    match serde_json::from_str(text).map_err(|e| e.to_string())? {
        Json::Object(map) => Ok(Struct {
            fields: map.into_iter().map(|(k, v)| (k, from_json(v))).collect(),
        }),
        _ => Err("is not a JSON object".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    #[test]
    fn data_round_trips_through_canonical_text() {
        let mut s = Struct::default();
        s.fields.insert("b".into(), number(3.0));
        s.fields.insert("a".into(), number(0.1));
        s.fields.insert("big".into(), number(1e300));
        s.fields.insert(
            "list".into(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![number(-2.0), Value { kind: None }],
                })),
            },
        );
        let text = canonical_struct(Some(&s)).expect("canonical");
        assert_eq!(text, r#"{"a":0.1,"b":3,"big":1e+300,"list":[-2,null]}"#);
        let back = struct_from_canonical(&text).expect("parse");
        assert_eq!(back.fields["b"], number(3.0));
        assert_eq!(back.fields["big"], number(1e300));
        assert_eq!(canonical_struct(Some(&back)).expect("again"), text);
    }

    #[test]
    fn non_finite_numbers_are_refused_with_their_path() {
        let mut s = Struct::default();
        s.fields.insert("ratio".into(), number(f64::NAN));
        let err = canonical_struct(Some(&s)).expect_err("nan");
        assert!(err.starts_with("data.ratio"), "{err}");
        assert_eq!(canonical_struct(None).expect("empty"), "{}");
    }
}
