//! Finding which organization a resource named in a request belongs to.

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
}

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
        }
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
                    Ok(Some(org.unwrap_or_default()))
                }
            }
        })
    }
}
