//! Printing answers: tables (see [`super::grid`]) with times in UTC RFC 3339 and relative to
//! now, or the proto answer as JSON or YAML (the proto3 JSON mapping, defaults included) for
//! scripts, or `kind/id` lines (`-o name`) to feed other commands.

use std::io::Write;

use chrono::{DateTime, Utc};
use prost_reflect::{DynamicMessage, ReflectMessage, SerializeOptions, Value};

use super::CliError;
pub use super::grid::{Grid, table};

pub use super::mode::{Output, mode, set_mode};

/// Renders an answer for people.
pub type Render<'a, M> = &'a dyn Fn(&M) -> String;

/// Prints `message` as `output` says.
pub fn print<M: prost::Message>(
    output: Output,
    message: &M,
    full_name: &str,
    render: Render<'_, M>,
) -> Result<(), CliError> {
    let text = match output {
        Output::Table | Output::Wide => render(message),
        Output::Json => to_json(message, full_name)?,
        Output::Yaml => to_yaml(&json_value(message, full_name)?)?,
        Output::Name => {
            let dynamic = dynamic(message, full_name)?;
            let names = names(&dynamic);
            if names.is_empty() && !lists_something(&dynamic) {
                return Err(CliError::Usage(format!(
                    "-o name: the answer ({}) names no object",
                    dynamic.descriptor().name()
                )));
            }
            names.join("\n")
        }
    };
    if !text.is_empty() {
        emit(&text);
    }
    Ok(())
}

/// Prints an answer that is not a proto message (the config file's contexts): `value` for
/// JSON and YAML, `names` for `-o name`, `render` for tables.
pub fn print_value(
    output: Output,
    value: &serde_json::Value,
    names: &[String],
    render: &dyn Fn() -> String,
) -> Result<(), CliError> {
    let text = match output {
        Output::Table | Output::Wide => render(),
        Output::Json => serde_json::to_string_pretty(value)
            .map_err(|e| CliError::Failed(format!("JSON output: {e}")))?,
        Output::Yaml => to_yaml(value)?,
        Output::Name => names.join("\n"),
    };
    if !text.is_empty() {
        emit(&text);
    }
    Ok(())
}

/// Writes `text` and a newline to standard output; a closed pipe (`| head`) is not an error.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

fn dynamic<M: prost::Message>(message: &M, full_name: &str) -> Result<DynamicMessage, CliError> {
    let descriptor = ebb_common::methods::DESCRIPTORS
        .get_message_by_name(full_name)
        .ok_or_else(|| CliError::Failed(format!("unknown message type {full_name}")))?;
    DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| CliError::Failed(format!("cannot re-read the answer: {e}")))
}

/// `message` (of proto type `full_name`) in the proto3 JSON mapping, pretty-printed, with
/// fields at their default values included so scripts always find them.
pub fn to_json<M: prost::Message>(message: &M, full_name: &str) -> Result<String, CliError> {
    let dynamic = dynamic(message, full_name)?;
    let mut out = Vec::new();
    let mut serializer =
        serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::new());
    dynamic
        .serialize_with_options(
            &mut serializer,
            &SerializeOptions::new().skip_default_fields(false),
        )
        .map_err(|e| CliError::Failed(format!("cannot print the answer as JSON: {e}")))?;
    String::from_utf8(out).map_err(|e| CliError::Failed(format!("JSON output: {e}")))
}

fn json_value<M: prost::Message>(
    message: &M,
    full_name: &str,
) -> Result<serde_json::Value, CliError> {
    serde_json::from_str(&to_json(message, full_name)?)
        .map_err(|e| CliError::Failed(format!("JSON output: {e}")))
}

fn to_yaml(value: &serde_json::Value) -> Result<String, CliError> {
    serde_norway::to_string(value)
        .map_err(|e| CliError::Failed(format!("cannot print the answer as YAML: {e}")))
}

/// `kind/id` of `message` when it has an `id` (a task: its `name`), else of every object in
/// its message fields (the items of a list answer, the run of a trigger answer).
fn names(message: &DynamicMessage) -> Vec<String> {
    if let Some(name) = own_name(message) {
        return vec![name];
    }
    let mut out = Vec::new();
    for (field, value) in message.fields() {
        if field.name().ends_with("page_token") {
            continue;
        }
        match value {
            Value::Message(m) => out.extend(own_name(m)),
            Value::List(items) => out.extend(items.iter().filter_map(|v| match v {
                Value::Message(m) => own_name(m),
                _ => None,
            })),
            _ => {}
        }
    }
    out
}

/// Whether the answer has a list field (an empty list prints no names, and that is fine).
fn lists_something(message: &DynamicMessage) -> bool {
    message.descriptor().fields().any(|f| f.is_list())
}

fn own_name(message: &DynamicMessage) -> Option<String> {
    let descriptor = message.descriptor();
    let key = if descriptor.get_field_by_name("id").is_some() {
        "id"
    } else if descriptor.name() == "Task" {
        "name"
    } else {
        return None;
    };
    let id = message.get_field_by_name(key)?;
    let id = id.as_str()?.to_owned();
    (!id.is_empty()).then(|| format!("{}/{id}", kebab(descriptor.name())))
}

/// `ActionRun` as `action-run`.
fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// A two-column table of one object's fields.
pub fn fields(rows: Vec<(&str, String)>) -> String {
    let mut t = super::grid::new_table(mode().output == Output::Wide);
    for (k, v) in rows {
        t.add_row(vec![k.to_owned(), v]);
    }
    t.to_string()
}

/// A table, or a line saying there is nothing, for an empty list.
pub fn or_none(t: Grid, rows: usize, none: &str) -> String {
    if rows == 0 {
        none.to_owned()
    } else {
        t.to_string()
    }
}

/// Text of an optional string: `-` when empty.
pub fn text(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// `yes` or `no`.
pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// The short, lower-case name of a proto enum value (`failed` for
/// `DELIVERY_STATUS_FAILED`), or the number when unknown.
pub fn label<E: TryFrom<i32>>(value: i32, prefix: &str, name: fn(&E) -> &'static str) -> String {
    match E::try_from(value) {
        Ok(e) => {
            let n = name(&e);
            n.strip_prefix(prefix).unwrap_or(n).to_ascii_lowercase()
        }
        Err(_) => value.to_string(),
    }
}

/// A proto timestamp as a UTC time.
pub fn datetime(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let ts = ts?;
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0))
}

/// UTC RFC 3339 to the second, `-` when unset.
pub fn time(ts: Option<&prost_types::Timestamp>) -> String {
    match datetime(ts) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => "-".to_owned(),
    }
}

/// UTC RFC 3339 and how far from now: `2030-01-01T00:00:00Z (in 2h 5m)`.
pub fn when(ts: Option<&prost_types::Timestamp>) -> String {
    match datetime(ts) {
        Some(_) => format!("{} ({})", time(ts), relative(ts)),
        None => "-".to_owned(),
    }
}

/// How far a time is from now: `in 2h 5m`, `3m ago`, `now`; `-` when unset.
pub fn relative(ts: Option<&prost_types::Timestamp>) -> String {
    match datetime(ts) {
        Some(t) => relative_to(t, Utc::now()),
        None => "-".to_owned(),
    }
}

/// How far `t` is from `now`.
pub fn relative_to(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    if secs == 0 {
        return "now".to_owned();
    }
    let span = compact(secs.unsigned_abs());
    if secs > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// A proto duration as `14d`, `1d 6h`, `90s`; `-` when unset.
pub fn span(d: Option<&prost_types::Duration>) -> String {
    match d {
        Some(d) if d.seconds == 0 && d.nanos > 0 => format!("{}ms", d.nanos / 1_000_000),
        Some(d) if d.seconds > 0 => compact(d.seconds.unsigned_abs()),
        Some(_) => "0s".to_owned(),
        None => "-".to_owned(),
    }
}

/// Seconds as the two largest units, rounded to the smaller one: `3d 4h`, `2h 5m`,
/// `5m 10s`, `42s`.
pub fn compact(secs: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    // Round to the second-largest unit that is shown.
    let largest = units
        .iter()
        .position(|(size, _)| secs >= *size)
        .unwrap_or(3);
    let step = units.get(largest + 1).map_or(1, |(size, _)| *size);
    let secs = (secs + step / 2) / step * step;
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, unit) in units {
        let n = rest / size;
        rest %= size;
        if n > 0 || !parts.is_empty() {
            parts.push((n, unit));
        }
        if parts.len() == 2 {
            break;
        }
    }
    match parts.as_slice() {
        [] => "0s".to_owned(),
        [(n, u)] | [(n, u), (0, _)] => format!("{n}{u}"),
        [(n, u), (m, v), ..] => format!("{n}{u} {m}{v}"),
    }
}

/// A protobuf `Struct` as compact JSON text.
pub fn struct_text(s: Option<&prost_types::Struct>) -> String {
    match s {
        Some(s) if !s.fields.is_empty() => struct_json(Some(s)).to_string(),
        _ => "-".to_owned(),
    }
}

/// A protobuf `Struct` as a JSON object (empty when unset).
pub fn struct_json(s: Option<&prost_types::Struct>) -> serde_json::Value {
    serde_json::Value::Object(
        s.into_iter()
            .flat_map(|s| s.fields.iter())
            .map(|(k, v)| (k.clone(), json(v)))
            .collect(),
    )
}

/// A protobuf `Value` as JSON.
pub fn json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map(serde_json::Value::Number)
                    .unwrap_or(serde_json::Value::Null)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => {
            serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), json(v))).collect())
        }
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(json).collect()),
    }
}

/// A JSON value as a protobuf `Value`.
pub fn from_json(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(from_json).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), from_json(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_keep_the_two_largest_units() {
        assert_eq!(compact(0), "0s");
        assert_eq!(compact(42), "42s");
        assert_eq!(compact(3 * 3600 + 12 * 60 + 5), "3h 12m");
        assert_eq!(compact(7200), "2h");
        assert_eq!(compact(14 * 86_400), "14d");
        assert_eq!(compact(86_400 + 3600 * 6), "1d 6h");
        assert_eq!(compact(86_400 + 59), "1d");
        assert_eq!(compact(3 * 3600 - 1), "3h");
        assert_eq!(compact(3 * 3600 + 12 * 60 + 40), "3h 13m");
        assert_eq!(compact(59 * 60 + 59), "59m 59s");
        assert_eq!(compact(86_399), "1d");
    }

    #[test]
    fn relative_times_read_both_ways() {
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(2 * 3600 + 5 * 60);
        assert_eq!(relative_to(later, now), "in 2h 5m");
        let earlier = now - chrono::Duration::seconds(180);
        assert_eq!(relative_to(earlier, now), "3m ago");
        assert_eq!(relative_to(now, now), "now");
    }

    #[test]
    fn names_are_kind_and_id() {
        let list = ebb_proto::lifecycle::v1::ListWorkspacesResponse {
            workspaces: vec![ebb_proto::lifecycle::v1::Workspace {
                id: "w1".into(),
                ..Default::default()
            }],
            next_page_token: "next".into(),
        };
        let d = dynamic(&list, "ebb.lifecycle.v1.ListWorkspacesResponse").expect("dynamic");
        assert_eq!(names(&d), vec!["workspace/w1"]);
        assert_eq!(kebab("ActionRun"), "action-run");
    }

    #[test]
    fn json_output_uses_the_proto_mapping_with_defaults() {
        let ws = ebb_proto::lifecycle::v1::Workspace {
            id: "w1".into(),
            state: 1,
            auto_destroy_at: Some(prost_types::Timestamp {
                seconds: 1_893_456_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let text = to_json(&ws, "ebb.lifecycle.v1.Workspace").expect("json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("parses");
        assert_eq!(v["id"], "w1");
        assert_eq!(v["state"], "WORKSPACE_STATE_ACTIVE");
        assert_eq!(v["autoDestroyAt"], "2030-01-01T00:00:00Z");
        assert_eq!(v["protected"], false);
    }
}
