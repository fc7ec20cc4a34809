//! Reading a catalog document: YAML parsed with limits (size, expanded values), then checked
//! for what types cannot say (names, states, references between fields), and parameters
//! checked against their declarations. Refusals name the path, as the JSON Schema does.

use std::collections::BTreeSet;

use super::{Catalog, Condition, ParamDef, ParamType, TriggerDef};
/// A catalog refusal: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogError {
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for CatalogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "at {}: {}", self.path, self.reason)
        }
    }
}

fn refuse(path: impl Into<String>, reason: impl Into<String>) -> CatalogError {
    CatalogError {
        path: path.into(),
        reason: reason.into(),
    }
}

/// The largest catalog document, in bytes.
pub const MAX_CATALOG_BYTES: usize = 1024 * 1024;

/// The most values (scalars, lists, maps) a catalog may hold once its YAML aliases are
/// expanded. Real catalogs hold a few hundred; an alias bomb ("billion laughs": an anchor
/// referenced thousands of times) expands into millions and would keep a thread busy for many
/// seconds. Counting stops at the limit, so refusing costs no more than the limit.
pub const MAX_CATALOG_VALUES: usize = 100_000;

/// Parses and validates a catalog document. Parsing is CPU work bounded by
/// [`MAX_CATALOG_BYTES`] and [`MAX_CATALOG_VALUES`]; call it off the async runtime
/// (`spawn_blocking`) when serving.
pub fn parse(yaml: &str) -> std::result::Result<Catalog, CatalogError> {
    if yaml.len() > MAX_CATALOG_BYTES {
        return Err(refuse("", "the catalog is larger than 1 MiB"));
    }
    check_expanded_size(yaml)?;
    let de = serde_norway::Deserializer::from_str(yaml);
    let catalog: Catalog = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let reason = e.inner().to_string();
        refuse(if path == "." { String::new() } else { path }, reason)
    })?;
    validate(&catalog)?;
    Ok(catalog)
}

/// Refuses a document that expands to more than [`MAX_CATALOG_VALUES`] values. Other errors
/// are left to the typed parse, which names where they are.
fn check_expanded_size(yaml: &str) -> std::result::Result<(), CatalogError> {
    use serde::de::DeserializeSeed;
    let budget = std::cell::Cell::new(MAX_CATALOG_VALUES);
    let de = serde_norway::Deserializer::from_str(yaml);
    match (ValueBudget(&budget)).deserialize(de) {
        Err(_) if budget.get() == 0 => Err(refuse(
            "",
            format!(
                "the catalog expands to more than {MAX_CATALOG_VALUES} values (YAML aliases \
                 included)"
            ),
        )),
        _ => Ok(()),
    }
}

/// Walks any YAML value, spending one unit of the budget per value and failing once it is
/// spent.
struct ValueBudget<'a>(&'a std::cell::Cell<usize>);

impl ValueBudget<'_> {
    fn spend<E: serde::de::Error>(&self) -> std::result::Result<(), E> {
        match self.0.get() {
            0 => Err(E::custom("too many values")),
            n => {
                self.0.set(n - 1);
                Ok(())
            }
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for ValueBudget<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ValueBudget<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> std::result::Result<(), E> {
        self.spend()
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> std::result::Result<(), E> {
        self.spend()
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> std::result::Result<(), E> {
        self.spend()
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> std::result::Result<(), E> {
        self.spend()
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> std::result::Result<(), E> {
        self.spend()
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        self.spend()
    }

    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        self.spend()
    }

    fn visit_some<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        serde::de::DeserializeSeed::deserialize(self, deserializer)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        self.spend()?;
        while seq.next_element_seed(ValueBudget(self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<(), A::Error> {
        self.spend()?;
        while map.next_key_seed(ValueBudget(self.0))?.is_some() {
            map.next_value_seed(ValueBudget(self.0))?;
        }
        Ok(())
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(
        self,
        data: A,
    ) -> std::result::Result<(), A::Error> {
        use serde::de::VariantAccess;
        self.spend()?;
        let ((), variant) = data.variant_seed(ValueBudget(self.0))?;
        variant.newtype_variant_seed(ValueBudget(self.0))
    }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// Checks what types cannot: names, states, references between fields.
pub fn validate(catalog: &Catalog) -> std::result::Result<(), CatalogError> {
    if catalog.kinds.is_empty() {
        return Err(refuse("kinds", "declare at least one kind"));
    }
    let mut kinds = BTreeSet::new();
    for (k, kind) in catalog.kinds.iter().enumerate() {
        let at = format!("kinds[{k}]");
        if !name_ok(&kind.name) {
            return Err(refuse(
                format!("{at}.name"),
                "must be 1-100 letters, digits, '_', '-' or '.'",
            ));
        }
        if !kinds.insert(&kind.name) {
            return Err(refuse(
                format!("{at}.name"),
                format!("kind `{}` is declared twice", kind.name),
            ));
        }
        if kind.states.is_empty() {
            return Err(refuse(format!("{at}.states"), "declare at least one state"));
        }
        let mut states = BTreeSet::new();
        for (s, state) in kind.states.iter().enumerate() {
            if !name_ok(state) {
                return Err(refuse(
                    format!("{at}.states[{s}]"),
                    "must be 1-100 letters, digits, '_', '-' or '.'",
                ));
            }
            if !states.insert(state.as_str()) {
                return Err(refuse(
                    format!("{at}.states[{s}]"),
                    format!("state `{state}` is declared twice"),
                ));
            }
        }
        if let Some(initial) = &kind.initial_state
            && !states.contains(initial.as_str())
        {
            return Err(refuse(
                format!("{at}.initialState"),
                format!("`{initial}` is not a state of kind {}", kind.name),
            ));
        }
        let mut actions = BTreeSet::new();
        for (a, action) in kind.actions.iter().enumerate() {
            let at = format!("{at}.actions[{a}]");
            if !name_ok(&action.name) {
                return Err(refuse(
                    format!("{at}.name"),
                    "must be 1-100 letters, digits, '_', '-' or '.'",
                ));
            }
            if !actions.insert(&action.name) {
                return Err(refuse(
                    format!("{at}.name"),
                    format!("action `{}` is declared twice", action.name),
                ));
            }
            if action.scope != "instance" {
                return Err(refuse(
                    format!("{at}.scope"),
                    "only `instance` scope is supported",
                ));
            }
            if action.operation != "transition-entity" {
                return Err(refuse(
                    format!("{at}.operation"),
                    "only `transition-entity` is supported",
                ));
            }
            for (field, state) in [
                ("onTrigger", &action.on_trigger),
                ("onSuccess", &action.on_success),
                ("onFailure", &action.on_failure),
            ] {
                if !states.contains(state.as_str()) {
                    return Err(refuse(
                        format!("{at}.{field}"),
                        format!("`{state}` is not a state of kind {}", kind.name),
                    ));
                }
            }
            for (c, condition) in action.conditions.iter().enumerate() {
                Condition::parse(condition)
                    .map_err(|e| refuse(format!("{at}.conditions[{c}]"), e))?;
            }
            let mut params = BTreeSet::new();
            for (p, param) in action.parameters.iter().enumerate() {
                let at = format!("{at}.parameters[{p}]");
                if !name_ok(&param.name) || !params.insert(&param.name) {
                    return Err(refuse(
                        format!("{at}.name"),
                        "must be a unique name of letters, digits, '_', '-' or '.'",
                    ));
                }
                if param.minimum.is_some() && param.ty != ParamType::Integer {
                    return Err(refuse(
                        format!("{at}.minimum"),
                        "only integers take a minimum",
                    ));
                }
                if let Some(default) = &param.default {
                    check_param(param, default).map_err(|e| refuse(format!("{at}.default"), e))?;
                }
            }
            for (r, rule) in action.cascade_rules.iter().enumerate() {
                if !name_ok(&rule.relationship_type) {
                    return Err(refuse(
                        format!("{at}.cascadeRules[{r}].relationshipType"),
                        "must be a relationship type name",
                    ));
                }
            }
            if let TriggerDef::Webhook { url } = &action.trigger
                && (!(url.starts_with("http://") || url.starts_with("https://"))
                    || url.len() > 2048)
            {
                return Err(refuse(
                    format!("{at}.trigger.url"),
                    "must be an http:// or https:// URL",
                ));
            }
        }
    }
    Ok(())
}

/// Checks one parameter value against its definition.
pub fn check_param(def: &ParamDef, value: &serde_json::Value) -> std::result::Result<(), String> {
    match def.ty {
        ParamType::Integer => {
            let n = value
                .as_i64()
                .or_else(|| {
                    value
                        .as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                        .map(|f| f as i64)
                })
                .ok_or_else(|| format!("must be an integer, got {value}"))?;
            if let Some(min) = def.minimum
                && n < min
            {
                return Err(format!("must be at least {min}, got {n}"));
            }
            Ok(())
        }
        ParamType::String => value
            .as_str()
            .map(|_| ())
            .ok_or_else(|| format!("must be a string, got {value}")),
        ParamType::Boolean => value
            .as_bool()
            .map(|_| ())
            .ok_or_else(|| format!("must be a boolean, got {value}")),
    }
}
