//! The catalog: entity kinds, their states and the actions declared on them. Loaded from a
//! YAML file at start and managed over RPC; a bad catalog is refused with where and why.

use std::collections::BTreeMap;

use crate::store::exec;
use crate::store::query_all;
use crate::store::query_one;
use ebb_common::time::EpochMs;
use ebb_common::{Error, Result};
use sea_orm::{ConnectionTrait, FromQueryResult};
use serde::{Deserialize, Serialize};

mod parse;

pub use parse::{check_param, parse};

/// A catalog document: the entity kinds of a fleet, their states, and the actions that
/// deprovision them. `docs/catalog.schema.json` is this type's JSON Schema (editors validate
/// catalog files with it); ApplyCatalog refuses a bad document naming the same paths
/// (`kinds[0].actions[1].onSuccess`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Ebb catalog")]
pub struct Catalog {
    /// The entity kinds it declares.
    pub kinds: Vec<KindDef>,
}

/// An entity kind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KindDef {
    /// The kind's name (`tenant`, `account`): 1-100 letters, digits, `_`, `-` or `.`; unique.
    pub name: String,
    /// Every state an entity of this kind can be in, each named like a kind; at least one.
    pub states: Vec<String>,
    /// The state new entities start in; defaults to the first state.
    #[serde(default)]
    pub initial_state: Option<String>,
    /// The actions that can be triggered on entities of this kind.
    #[serde(default)]
    pub actions: Vec<ActionDef>,
}

impl KindDef {
    /// The state new entities start in.
    pub fn initial(&self) -> &str {
        self.initial_state
            .as_deref()
            .or(self.states.first().map(String::as_str))
            .unwrap_or_default()
    }

    /// The action named `name`.
    pub fn action(&self, name: &str) -> Option<&ActionDef> {
        self.actions.iter().find(|a| a.name == name)
    }
}

/// An action declared on a kind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActionDef {
    /// The action's name (`DeprovisionTenant`), unique within its kind.
    pub name: String,
    /// What it acts on: only `instance` (one entity and its cascade).
    #[serde(default = "instance")]
    pub scope: String,
    /// What it does: only `transition-entity` (move through onTrigger, then onSuccess or
    /// onFailure).
    #[serde(default = "transition_entity")]
    pub operation: String,
    /// Conditions the entity must meet to be triggered: `state == VALUE`,
    /// `state != VALUE`, `attributes.KEY == VALUE` or `attributes.KEY != VALUE`.
    #[serde(default)]
    pub conditions: Vec<String>,
    /// Typed parameters a trigger may give (`gracePeriodSeconds` sets the grace period of
    /// each relationship the cascade finalizes).
    #[serde(default)]
    pub parameters: Vec<ParamDef>,
    /// The state the entity (and each entity of the cascade) enters when triggered.
    pub on_trigger: String,
    /// The state after its step succeeded.
    pub on_success: String,
    /// The state after its step failed.
    pub on_failure: String,
    /// The relationships the cascade walks, leaves first.
    #[serde(default)]
    pub cascade_rules: Vec<CascadeRuleDef>,
    /// What each step of the action does.
    pub trigger: TriggerDef,
}

impl ActionDef {
    /// The relationship types its cascade walks.
    pub fn cascaded_types(&self) -> Vec<String> {
        self.cascade_rules
            .iter()
            .map(|r| r.relationship_type.clone())
            .collect()
    }
}

fn instance() -> String {
    "instance".into()
}

fn transition_entity() -> String {
    "transition-entity".into()
}

/// A typed parameter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParamDef {
    /// The parameter's name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// Whether a trigger must give it.
    #[serde(default)]
    pub required: bool,
    /// The smallest value an integer parameter takes.
    #[serde(default)]
    pub minimum: Option<i64>,
    /// The value when a trigger gives none; of the parameter's type.
    #[serde(default)]
    pub default: Option<serde_json::Value>,
}

/// Parameter types.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Integer,
    String,
    Boolean,
}

/// Relationships an action walks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CascadeRuleDef {
    /// The relationship type to walk (`runs_on`): from the entity to what it runs on.
    pub relationship_type: String,
    /// What to do with an entity this rule reaches that others still run on (DP-10).
    #[serde(default)]
    pub shared_upstream: SharedUpstream,
}

/// What a cascade does with a shared upstream: an entity it reaches that entities outside the
/// action run still run on.
#[derive(
    Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SharedUpstream {
    /// Leave it (and what it runs on) standing; the plan lists it as kept with who uses it.
    #[default]
    Keep,
    /// Refuse the trigger, naming the upstream and who uses it.
    Refuse,
}

impl SharedUpstream {
    /// The catalog's word for it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Keep => "keep",
            Self::Refuse => "refuse",
        }
    }
}

/// What a step does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TriggerDef {
    /// A destroy run on the entity's workspace.
    DestroyRun,
    /// A POST to an external system (a PR-driven flow) that calls back with a token.
    Webhook {
        /// Where the step's request is POSTed (`http://` or `https://`).
        url: String,
    },
    /// Nothing to do: the step succeeds at once.
    Noop,
}

impl TriggerDef {
    /// The name stored on steps.
    pub fn name(&self) -> &'static str {
        match self {
            Self::DestroyRun => "destroy_run",
            Self::Webhook { .. } => "webhook",
            Self::Noop => "noop",
        }
    }
}

/// A condition on an entity, such as `state == active`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `state` or `attributes.KEY`.
    pub subject: String,
    pub equal: bool,
    pub value: String,
}

impl Condition {
    /// Parses `SUBJECT == VALUE` or `SUBJECT != VALUE`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let (subject, equal, value) = if let Some((l, r)) = text.split_once("==") {
            (l, true, r)
        } else if let Some((l, r)) = text.split_once("!=") {
            (l, false, r)
        } else {
            return Err(format!(
                "`{text}` is not a condition; use `state == active` or `attributes.KEY != VALUE`"
            ));
        };
        let subject = subject.trim();
        let value = value.trim().trim_matches('"').trim_matches('\'');
        if subject != "state"
            && subject
                .strip_prefix("attributes.")
                .is_none_or(|k| k.is_empty())
        {
            return Err(format!("`{subject}` is not `state` or `attributes.KEY`"));
        }
        if value.is_empty() {
            return Err(format!("`{text}` compares with nothing"));
        }
        Ok(Self {
            subject: subject.to_owned(),
            equal,
            value: value.to_owned(),
        })
    }

    /// Whether an entity in `state` with `attributes` satisfies it.
    pub fn holds(&self, state: &str, attributes: &BTreeMap<String, String>) -> bool {
        let actual = if self.subject == "state" {
            Some(state)
        } else {
            attributes
                .get(&self.subject["attributes.".len()..])
                .map(String::as_str)
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

#[derive(FromQueryResult)]
struct KindRow {
    definition: String,
}

/// Stores the kinds of a validated catalog (replacing same-named kinds).
pub async fn store(
    conn: &impl ConnectionTrait,
    catalog: &Catalog,
    source: &str,
    now: EpochMs,
) -> Result<()> {
    for kind in &catalog.kinds {
        let definition = serde_json::to_string(kind).map_err(|e| Error::Internal(e.to_string()))?;
        exec(
            conn,
            "INSERT INTO entity_kinds (name, definition, source, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
             source = excluded.source, updated_at = excluded.updated_at",
            [kind.name.clone().into(), definition.into(), source.into(), now.into()],
        )
        .await?;
    }
    Ok(())
}

/// A kind by name.
pub async fn kind(conn: &impl ConnectionTrait, name: &str) -> Result<KindDef> {
    let row: Option<KindRow> = query_one(
        conn,
        "SELECT definition FROM entity_kinds WHERE name = $1",
        [name.into()],
    )
    .await?;
    let row = row.ok_or_else(|| Error::not_found("entity kind", name))?;
    serde_json::from_str(&row.definition)
        .map_err(|e| Error::Internal(format!("stored kind {name} does not decode: {e}")))
}

/// Every kind, by name.
pub async fn kinds(conn: &impl ConnectionTrait) -> Result<Vec<KindDef>> {
    let rows: Vec<KindRow> = query_all(
        conn,
        "SELECT definition FROM entity_kinds ORDER BY name",
        [],
    )
    .await?;
    rows.iter()
        .map(|r| {
            serde_json::from_str(&r.definition)
                .map_err(|e| Error::Internal(format!("stored kind does not decode: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse::*;
    use super::*;

    const EXAMPLE: &str = include_str!("../../../../deploy/catalog/deprovision-tenant.yaml");

    #[test]
    fn the_example_catalog_is_valid() {
        let c = parse(EXAMPLE).expect("example catalog");
        let tenant = c.kinds.iter().find(|k| k.name == "tenant").expect("tenant");
        let action = tenant.action("DeprovisionTenant").expect("action");
        assert_eq!(action.on_success, "decommissioned");
        assert_eq!(action.parameters[0].name, "gracePeriodSeconds");
    }

    #[test]
    fn an_alias_bomb_is_refused_without_expanding_it() {
        let mut bomb = String::from("kinds:\n  - name: t\n    states: &s [");
        bomb.push_str(
            &(0..1000)
                .map(|i| format!("s{i}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        bomb.push_str("]\n    actions:\n      - name: a\n        parameters:\n          - name: p\n            type: string\n            default: [");
        bomb.push_str(&vec!["*s"; 500].join(", "));
        bomb.push_str("]\n");
        let started = std::time::Instant::now();
        let e = parse(&bomb).expect_err("alias bomb");
        assert!(e.reason.contains("expands to more than"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // The same anchors used a few times are fine.
        let fine = "kinds:\n  - name: t\n    states: &s [a, b]\n  - name: u\n    states: *s\n";
        assert_eq!(
            parse(fine).expect("aliases within the limit").kinds[1].states,
            ["a", "b"]
        );
    }

    #[test]
    fn refusals_name_the_path_and_reason() {
        let bad = EXAMPLE.replace("onSuccess: decommissioned", "onSuccess: gone");
        let e = parse(&bad).expect_err("unknown state");
        assert!(e.path.starts_with("kinds[0].actions[0].onSuccess"), "{e}");
        assert!(e.reason.contains("`gone` is not a state"), "{e}");

        let e = parse("kinds:\n  - name: t\n    states: [a]\n    colour: red\n")
            .expect_err("unknown field");
        assert!(e.path.contains("kinds[0]"), "{e}");
        assert!(e.reason.contains("colour"), "{e}");

        let e = parse("kinds: 5").expect_err("type");
        assert!(e.to_string().contains("kinds"), "{e}");
        assert!(parse(": : :").is_err());
    }

    #[test]
    fn shared_upstreams_are_kept_unless_a_rule_refuses() {
        let rule = |yaml: &str| parse(yaml).map(|c| c.kinds[0].actions[0].cascade_rules[0].clone());
        let keep = "            sharedUpstream: keep\n";
        assert!(EXAMPLE.contains(keep));
        let default = rule(&EXAMPLE.replace(keep, "")).expect("no policy given");
        assert_eq!(default.shared_upstream, SharedUpstream::Keep, "the default");
        let refusing = rule(&EXAMPLE.replace(keep, "            sharedUpstream: refuse\n"))
            .expect("refusing catalog");
        assert_eq!(refusing.shared_upstream, SharedUpstream::Refuse);
        let e = rule(&EXAMPLE.replace(keep, "            sharedUpstream: destroy\n"))
            .expect_err("unknown policy");
        assert!(e.path.contains("sharedUpstream"), "{e}");
        // A kind stored before the field existed still decodes, keeping shared upstreams.
        let stored: CascadeRuleDef =
            serde_json::from_str(r#"{"relationshipType":"runs_on"}"#).expect("decode");
        assert_eq!(stored.shared_upstream, SharedUpstream::Keep);
    }

    #[test]
    fn conditions_parse_and_hold() {
        let c = Condition::parse("state == active").expect("parse");
        assert!(c.holds("active", &BTreeMap::new()));
        assert!(!c.holds("removing", &BTreeMap::new()));
        let a = Condition::parse("attributes.tier != 'gold'").expect("parse");
        assert!(a.holds("x", &BTreeMap::new()));
        assert!(Condition::parse("state ~ active").is_err());
        assert!(Condition::parse("colour == red").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

        /// Any text, including mangled versions of a valid catalog, parses or is refused with a
        /// reason; it never panics.
        #[test]
        fn the_parser_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
            if let Err(e) = parse(&text) {
                proptest::prop_assert!(!e.reason.is_empty());
            }
        }

        #[test]
        fn the_parser_never_panics_on_a_mangled_catalog(at in 0usize..1400, cut in 0usize..40, insert in "\\PC{0,12}") {
            let mut text: String = EXAMPLE.chars().collect();
            let start = text.char_indices().map(|(i, _)| i).nth(at % EXAMPLE.chars().count()).unwrap_or(0);
            let end = text.char_indices().map(|(i, _)| i).find(|i| *i >= start + cut).unwrap_or(text.len());
            text.replace_range(start..end, &insert);
            if let Err(e) = parse(&text) {
                proptest::prop_assert!(!e.reason.is_empty());
            }
        }

        #[test]
        fn conditions_never_panic(text in "\\PC{0,60}") {
            let _ = Condition::parse(&text);
        }
    }

    #[test]
    fn parameters_are_typed() {
        let p = ParamDef {
            name: "g".into(),
            ty: ParamType::Integer,
            required: false,
            minimum: Some(0),
            default: None,
        };
        assert!(check_param(&p, &serde_json::json!(30)).is_ok());
        assert!(check_param(&p, &serde_json::json!(30.0)).is_ok());
        assert!(check_param(&p, &serde_json::json!(-1)).is_err());
        assert!(check_param(&p, &serde_json::json!(1.5)).is_err());
        assert!(check_param(&p, &serde_json::json!("30")).is_err());
    }
}
