//! Organization scoping of a request message: its `organization_id`s checked and filled, ids read.

use prost_reflect::{DynamicMessage, Kind, ReflectMessage, Value};
use tonic::Status;

/// An id as shown in a message: at most 100 characters of it.
pub(super) fn shown(id: &str) -> String {
    id.chars().take(100).collect()
}

/// Checks every `organization_id` in `message` and in its singular sub-messages (two levels):
/// another organization's answers NOT_FOUND; an empty one becomes `own`. Whether anything
/// changed.
pub(super) fn scope_organization(
    message: &mut DynamicMessage,
    own: &str,
    depth: usize,
) -> Result<bool, Status> {
    let mut changed = false;
    let descriptor = message.descriptor();
    for field in descriptor.fields() {
        if field.is_list() || field.is_map() {
            continue;
        }
        match field.kind() {
            Kind::String if field.name() == "organization_id" => {
                let current = message
                    .get_field(&field)
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_default();
                if current.is_empty() {
                    message.set_field(&field, Value::String(own.to_owned()));
                    changed = true;
                } else if current != own {
                    return Err(Status::not_found(format!(
                        "organization {} not found",
                        shown(&current)
                    )));
                }
            }
            Kind::Message(_) if depth < 1 && message.has_field(&field) => {
                if let Some(sub) = message.get_field_mut(&field).as_message_mut() {
                    if sub.descriptor().full_name().starts_with("google.") {
                        continue;
                    }
                    changed |= scope_organization(sub, own, depth + 1)?;
                }
            }
            _ => {}
        }
    }
    Ok(changed)
}

/// The string at a dotted field path, if every step is present.
pub(super) fn string_at(message: &DynamicMessage, path: &str) -> Option<String> {
    let mut current = message.clone();
    let mut steps = path.split('.').peekable();
    while let Some(step) = steps.next() {
        let field = current.descriptor().get_field_by_name(step)?;
        if steps.peek().is_none() {
            return current.get_field(&field).as_str().map(str::to_owned);
        }
        if !current.has_field(&field) {
            return None;
        }
        let next = current.get_field(&field).as_message()?.clone();
        current = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::auth::frames::{decode_frame, encode_frame};
    use crate::methods::input_of;

    #[test]
    fn organization_fields_are_checked_and_filled() {
        let input = input_of("/ebb.lifecycle.v1.LifecycleService/ListWorkspaces").expect("input");
        let mut m = DynamicMessage::new(input.clone());
        assert!(scope_organization(&mut m, "org-a", 0).expect("fill"));
        assert_eq!(string_at(&m, "organization_id").as_deref(), Some("org-a"));
        let mut other = DynamicMessage::new(input);
        other.set_field_by_name("organization_id", Value::String("org-b".into()));
        let err = scope_organization(&mut other, "org-a", 0).expect_err("other org");
        assert_eq!(err.code(), Code::NotFound);

        let nested = input_of("/ebb.notifier.v1.NotifierService/CreateNotificationConfiguration")
            .expect("input");
        let mut m = DynamicMessage::new(nested);
        let conf = m
            .descriptor()
            .get_field_by_name("configuration")
            .expect("field");
        let conf_desc = match conf.kind() {
            Kind::Message(d) => d,
            _ => panic!("configuration is a message"),
        };
        m.set_field(&conf, Value::Message(DynamicMessage::new(conf_desc)));
        assert!(scope_organization(&mut m, "org-a", 0).expect("fill"));
        assert_eq!(
            string_at(&m, "configuration.organization_id").as_deref(),
            Some("org-a")
        );
        let framed = encode_frame(&m);
        let back = decode_frame(&m.descriptor(), &framed).expect("decode");
        assert_eq!(back, m);
    }
}
