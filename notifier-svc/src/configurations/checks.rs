//! Checking a client's configuration: its name, destination, event types and scope.

use ebb_common::error::Violations;
use ebb_common::{Error, Result};
use ebb_proto::notifier::v1 as pb;

use super::model::{Destination, Scope, Spec};
use crate::{egress, patterns};

/// What checking a destination depends on besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Checks<'a> {
    /// Whether an SMTP relay is configured.
    pub smtp_configured: bool,
    /// The egress guard, for IP-literal URLs.
    pub guard: &'a egress::EgressGuard,
}

/// Checks one field group of a client's configuration; `prefix` is the path of the message in
/// the request (`configuration.`).
pub fn check_name(name: &str, v: &mut Violations) -> String {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        v.add("configuration.name", "must be 1 to 200 characters");
    }
    name.to_owned()
}

/// Checks the destination's address fields.
pub fn check_destination(
    destination: Destination,
    url: &str,
    emails: &[String],
    checks: &Checks<'_>,
    v: &mut Violations,
) {
    match destination {
        Destination::Email => {
            if !url.is_empty() {
                v.add("configuration.url", "must be empty for email destinations");
            }
            if !checks.smtp_configured {
                v.add(
                    "configuration.destination_type",
                    "email needs an SMTP relay (smtp.relay) in notifier-svc's configuration",
                );
            }
            if emails.is_empty() || emails.len() > 50 {
                v.add(
                    "configuration.email_addresses",
                    "must list 1 to 50 addresses",
                );
            }
            for (i, e) in emails.iter().enumerate() {
                if e.parse::<lettre::Address>().is_err() {
                    v.add(
                        format!("configuration.email_addresses[{i}]"),
                        format!("`{e}` is not an email address"),
                    );
                }
            }
        }
        _ => {
            if !emails.is_empty() {
                v.add(
                    "configuration.email_addresses",
                    "only email destinations take addresses",
                );
            }
            if let Err(e) = check_url(url, checks.guard) {
                v.add("configuration.url", e);
            }
        }
    }
}

fn check_url(url: &str, guard: &egress::EgressGuard) -> std::result::Result<(), String> {
    if url.is_empty() {
        return Err("is required".into());
    }
    if url.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".into());
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| "must name a host".to_owned())?;
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        guard.check(ip)?;
    }
    Ok(())
}

/// Checks the subscribed event types.
pub fn check_event_types(types: &[String], v: &mut Violations) {
    if types.is_empty() || types.len() > 100 {
        v.add("configuration.event_types", "must list 1 to 100 patterns");
    }
    for (i, t) in types.iter().enumerate() {
        if let Err(e) = patterns::validate(t) {
            v.add(format!("configuration.event_types[{i}]"), e);
        }
    }
}

/// Checks a new configuration.
pub fn spec_from_proto(
    c: &pb::NotificationConfiguration,
    checks: &Checks<'_>,
) -> Result<(String, Spec)> {
    let mut v = Violations::new();
    let org = c.organization_id.trim().to_owned();
    if org.is_empty() || org.len() > 200 {
        v.add(
            "configuration.organization_id",
            "is required (at most 200 characters)",
        );
    }
    let name = check_name(&c.name, &mut v);
    let mut inner = Violations::new();
    let scope = Scope::from_proto(c.scope_type, &c.scope_id, &mut inner);
    prefix_into(inner, "configuration.", &mut v);
    let destination = Destination::from_proto(c.destination_type);
    match destination {
        None => v.add(
            "configuration.destination_type",
            "must be WEBHOOK, SLACK, EMAIL or TEAMS",
        ),
        Some(d) => check_destination(d, &c.url, &c.email_addresses, checks, &mut v),
    }
    check_event_types(&c.event_types, &mut v);
    v.finish()?;
    match (scope, destination) {
        (Some(scope), Some(destination)) => Ok((
            org,
            Spec {
                name,
                scope,
                destination,
                url: c.url.clone(),
                email_addresses: c.email_addresses.clone(),
                event_types: c.event_types.clone(),
            },
        )),
        _ => Err(Error::invalid("configuration", "invalid")),
    }
}

/// Moves violations under `prefix`.
pub fn prefix_into(inner: Violations, prefix: &str, v: &mut Violations) {
    if let Err(Error::InvalidArgument(list)) = inner.finish() {
        for f in list {
            v.add(format!("{prefix}{}", f.field), f.description);
        }
    }
}
