//! Finding which organization a resource named in a request belongs to.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use sea_orm::ConnectionTrait;

/// Finds which organization a resource named in a request belongs to, so that another
/// organization's resources answer NOT_FOUND before any handler runs.
pub trait OrganizationResolver: Send + Sync + 'static {
    /// The request fields this resolver knows: (service name prefix, field path, kind).
    /// E.g. `("ebb.lifecycle.v1.", "workspace_id", "workspace")`.
    fn references(&self) -> &'static [(&'static str, &'static str, &'static str)];

    /// The organization owning the resource of `kind` with `id` (`Some("")` for things of no
    /// organization), or `None` when there is no such resource (the handler answers that).
    fn organization_of<'a>(
        &'a self,
        kind: &'static str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, crate::Error>>;
}

/// Resolves resources to organizations by reading `organization_id` from the service's own
/// tables: `tables` maps a kind to its table and id column.
pub struct TableResolver {
    db: crate::db::Db,
    references: &'static [(&'static str, &'static str, &'static str)],
    tables: &'static [(&'static str, &'static str, &'static str)],
    /// Owners already read, when they can never change (see [`TableResolver::remembering`]).
    owners: Option<Mutex<HashMap<(&'static str, String), String>>>,
}

/// Most owners a remembering resolver keeps; past that it starts again from empty.
const OWNERS_CAPACITY: usize = 20_000;

impl TableResolver {
    /// A resolver of `references` (service prefix, field path, kind) through `tables`
    /// (kind, table, id column) of `db`.
    pub fn new(
        db: crate::db::Db,
        references: &'static [(&'static str, &'static str, &'static str)],
        tables: &'static [(&'static str, &'static str, &'static str)],
    ) -> Self {
        Self {
            db,
            references,
            tables,
            owners: None,
        }
    }

    /// The same resolver remembering each owner it reads, so that a resource's organization
    /// is read once per process rather than on every call. Only for tables whose rows never
    /// move to another organization and whose ids are never reused: a remembered owner is then
    /// right for as long as the row exists, and one deleted since is answered by the handler
    /// (NOT_FOUND) as before. Missing resources are never remembered.
    pub fn remembering(mut self) -> Self {
        self.owners = Some(Mutex::new(HashMap::new()));
        self
    }

    fn remembered(&self, kind: &'static str, id: &str) -> Option<String> {
        let owners = self.owners.as_ref()?;
        let owners = owners.lock().unwrap_or_else(|e| e.into_inner());
        owners.get(&(kind, id.to_owned())).cloned()
    }

    fn remember(&self, kind: &'static str, id: &str, organization_id: &str) {
        let Some(owners) = &self.owners else {
            return;
        };
        let mut owners = owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.len() >= OWNERS_CAPACITY {
            owners.clear();
        }
        owners.insert((kind, id.to_owned()), organization_id.to_owned());
    }
}

impl OrganizationResolver for TableResolver {
    fn references(&self) -> &'static [(&'static str, &'static str, &'static str)] {
        self.references
    }

    fn organization_of<'a>(
        &'a self,
        kind: &'static str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, crate::Error>> {
        Box::pin(async move {
            let Some((_, table, column)) = self.tables.iter().find(|(k, _, _)| *k == kind) else {
                return Ok(None);
            };
            if let Some(org) = self.remembered(kind, id) {
                return Ok(Some(org));
            }
            let row = self
                .db
                .read
                .query_one_raw(self.db.stmt(
                    &format!("SELECT organization_id FROM {table} WHERE {column} = $1"),
                    [id.into()],
                ))
                .await?;
            match row {
                None => Ok(None),
                Some(r) => {
                    let org: Option<String> = r.try_get("", "organization_id")?;
                    let org = org.unwrap_or_default();
                    self.remember(kind, id, &org);
                    Ok(Some(org))
                }
            }
        })
    }
}
