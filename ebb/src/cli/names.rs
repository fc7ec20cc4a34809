//! Names wherever a command takes an id. An id (a UUID) is used as given, without a lookup;
//! anything else is a name, looked up on the server with the exact-name filters of the list
//! RPCs:
//!
//! * an organization by its name (`ListOrganizations`);
//! * a project as `ORG/PROJECT`, or a bare name in the command's organization
//!   (`ListProjects`);
//! * a workspace as `ORG/PROJECT/NAME`, `PROJECT/NAME`, or a bare name searched across the
//!   projects of the command's organization (`ListWorkspaces`);
//! * an entity as `KIND/NAME`, or a bare name of any kind, in the command's organization
//!   (`ListEntities`).
//!
//! The command's organization is its `--org` (or `EBB_ORGANIZATION_ID`, or the context's),
//! itself an id or a name; without one, a token bound to an organization looks in its own.
//! Names may contain `/`, so a path is read the most specific way first and then as one whole
//! name: the first reading that matches anything wins. A name several things carry is
//! refused, listing each by its full path and id; a name nothing carries is an error saying
//! what was looked for and where.

use std::collections::HashMap;

use ebb_common::client::TracedChannel;
use ebb_proto::lifecycle::v1 as pb;
use ebb_proto::lifecycle::v1::deprovision_service_client::DeprovisionServiceClient;
use ebb_proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;

use super::CliError;

type Lifecycle = LifecycleServiceClient<TracedChannel>;
type Deprovision = DeprovisionServiceClient<TracedChannel>;

/// Most pages one name lookup reads (of 1000 each).
const MAX_PAGES: usize = 10;

/// The organization names are looked up in, for commands that take no `--org` of their own.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Scope {
    /// Organization (id or name) the names given are looked up in. Default: the context's;
    /// without one, the token's own organization.
    #[arg(
        long,
        visible_alias = "org",
        env = "EBB_ORGANIZATION_ID",
        value_name = "ORG"
    )]
    pub organization: Option<String>,
}

/// A workspace argument: an id or a name, and the organization a name is looked up in.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkspaceRef {
    /// Workspace: its id, or [ORG/][PROJECT/]NAME (a bare NAME is searched across the
    /// projects of --org).
    #[arg(value_name = "WORKSPACE")]
    pub workspace: String,
    #[command(flatten)]
    pub scope: Scope,
}

impl WorkspaceRef {
    /// The workspace's id, looked up when a name was given.
    pub async fn id(&self, channel: &TracedChannel) -> Result<String, CliError> {
        Names::new(channel, self.scope.organization.as_deref())
            .workspace(&self.workspace)
            .await
    }
}

/// The id of the organization `text` (an id, or a name looked up).
pub async fn org_id(channel: &TracedChannel, text: &str) -> Result<String, CliError> {
    Names::new(channel, None).organization(text).await
}

/// The organization of an audit command: looked up by name where the server also serves
/// lifecycle (`ebb serve`); an audit-svc on its own has no organizations to look names up in,
/// so there `text` is the organization's id as the audit trail records it.
pub async fn audit_org_id(channel: &TracedChannel, text: &str) -> Result<String, CliError> {
    match org_id(channel, text).await {
        Err(CliError::Status { status, .. }) if status.code() == tonic::Code::Unimplemented => {
            Ok(text.trim().to_owned())
        }
        other => other,
    }
}

/// Whether `text` is an id (a UUID), used as given.
pub fn is_id(text: &str) -> bool {
    uuid::Uuid::parse_str(text.trim()).is_ok()
}

/// Whether `text` can be an entity kind (as the catalog names them).
fn is_kind(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 100
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// An organization as looked up: its id (empty: the token's own) and how to name it.
#[derive(Debug, Clone)]
struct Org {
    id: String,
    name: Option<String>,
}

impl Org {
    /// How messages name it.
    fn label(&self) -> String {
        match (&self.name, self.id.is_empty()) {
            (Some(name), _) => format!("organization `{name}`"),
            (None, true) => "the token's organization".to_owned(),
            (None, false) => format!("organization {}", self.id),
        }
    }
}

/// What the lookups of one argument found, and where they found nothing.
struct Findings<T> {
    found: Vec<T>,
    misses: Vec<String>,
    /// A lookup needed an organization and none was given (the token is bound to none).
    needs_org: bool,
}

impl<T> Default for Findings<T> {
    fn default() -> Self {
        Self {
            found: Vec::new(),
            misses: Vec::new(),
            needs_org: false,
        }
    }
}

/// Looks names up for one command.
pub struct Names {
    lifecycle: Lifecycle,
    deprovision: Deprovision,
    /// The command's organization as given, id or name.
    scope: Option<String>,
    /// It, looked up.
    scope_org: Option<Org>,
    /// Names of organizations and projects by id, for the candidates of an ambiguous name.
    org_names: HashMap<String, String>,
    project_names: HashMap<String, String>,
}

impl Names {
    /// Lookups on `channel` within `organization` (an id or a name), when given.
    pub fn new(channel: &TracedChannel, organization: Option<&str>) -> Self {
        Self {
            lifecycle: Lifecycle::new(channel.clone()),
            deprovision: Deprovision::new(channel.clone()),
            scope: organization
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned),
            scope_org: None,
            org_names: HashMap::new(),
            project_names: HashMap::new(),
        }
    }

    /// The id of the command's organization (its `--org`, an id or a name).
    pub async fn organization_id(&mut self) -> Result<String, CliError> {
        match self.scope().await? {
            Some(org) => Ok(org.id),
            None => Err(CliError::Usage(
                "no organization: give one with --org (an id or a name), \
                 EBB_ORGANIZATION_ID, or a context's organization"
                    .into(),
            )),
        }
    }

    /// The id of the organization `text` (an id or a name).
    pub async fn organization(&mut self, text: &str) -> Result<String, CliError> {
        Ok(self.find_org(text).await?.id)
    }

    /// `text` when it is an organization's id; else the organization of that name.
    async fn find_org(&mut self, text: &str) -> Result<Org, CliError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CliError::Usage("the organization is empty".into()));
        }
        if is_id(text) {
            return Ok(Org {
                id: text.to_owned(),
                name: None,
            });
        }
        self.lookup_org(text).await?.ok_or_else(|| {
            CliError::Failed(format!(
                "organization `{text}` not found: no organization the token sees has that name"
            ))
        })
    }

    /// The organization a name without one is looked up in: the command's, or the token's
    /// own. `None`, with the miss noted, when the command's organization is not found (a
    /// path that names its own organization may still be found).
    async fn fallback_scope<T>(&mut self, f: &mut Findings<T>) -> Result<Option<Org>, CliError> {
        match self.scope().await {
            Ok(org) => Ok(Some(org.unwrap_or(Org {
                id: String::new(),
                name: None,
            }))),
            Err(CliError::Failed(_)) => {
                let given = self.scope.clone().unwrap_or_default();
                f.misses.push(format!("no organization named `{given}`"));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The organization named `name`, if the token sees one.
    async fn lookup_org(&mut self, name: &str) -> Result<Option<Org>, CliError> {
        let answer = self
            .lifecycle
            .list_organizations(pb::ListOrganizationsRequest {
                name: name.to_owned(),
                page_size: 1,
                page_token: String::new(),
            })
            .await
            .map_err(|s| CliError::status(format!("look up organization `{name}`"), s))?
            .into_inner();
        Ok(answer.organizations.into_iter().next().map(|o| {
            self.org_names.insert(o.id.clone(), o.name.clone());
            Org {
                id: o.id,
                name: Some(o.name),
            }
        }))
    }

    /// The command's organization, looked up once; `None` when none was given.
    async fn scope(&mut self) -> Result<Option<Org>, CliError> {
        if let Some(org) = &self.scope_org {
            return Ok(Some(org.clone()));
        }
        let Some(text) = self.scope.clone() else {
            return Ok(None);
        };
        let org = self.find_org(&text).await?;
        self.scope_org = Some(org.clone());
        Ok(Some(org))
    }

    /// The id of the project `text`: an id, `ORG/PROJECT`, or a name in the command's
    /// organization.
    pub async fn project(&mut self, text: &str) -> Result<String, CliError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CliError::Usage("the project is empty".into()));
        }
        if is_id(text) {
            return Ok(text.to_owned());
        }
        let mut f = Findings::default();
        if let Some((org, name)) = text
            .split_once('/')
            .filter(|(o, n)| !o.is_empty() && !n.is_empty())
        {
            match self.lookup_org(org).await? {
                Some(org) => self.projects_in(&org, name, &mut f).await?,
                None => f.misses.push(format!("no organization named `{org}`")),
            }
        }
        if f.found.is_empty()
            && let Some(scope) = self.fallback_scope(&mut f).await?
        {
            self.projects_in(&scope, text, &mut f).await?;
        }
        match f.found.len() {
            1 => Ok(f.found.remove(0).id),
            0 => Err(self.not_found("project", text, "ORG/PROJECT", f)),
            n => {
                let mut candidates = Vec::new();
                for p in &f.found {
                    let org = self.org_name(&p.organization_id).await;
                    candidates.push(format!("{org}/{} ({})", p.name, p.id));
                }
                Err(ambiguous("project", text, n, &candidates, "ORG/PROJECT"))
            }
        }
    }

    /// The projects named `name` in `org` (one at most).
    async fn projects_in(
        &mut self,
        org: &Org,
        name: &str,
        f: &mut Findings<pb::Project>,
    ) -> Result<(), CliError> {
        match self.project_named(org, name).await? {
            Looked::Found(p) => f.found.push(p),
            Looked::Missing => f
                .misses
                .push(format!("no project `{name}` in {}", self.label(org).await)),
            Looked::NeedsOrg => f.needs_org = true,
        }
        Ok(())
    }

    /// The project named `name` in `org`.
    async fn project_named(
        &mut self,
        org: &Org,
        name: &str,
    ) -> Result<Looked<pb::Project>, CliError> {
        let answer = self
            .lifecycle
            .list_projects(pb::ListProjectsRequest {
                organization_id: org.id.clone(),
                name: name.to_owned(),
                page_size: 1,
                page_token: String::new(),
            })
            .await;
        let answer = match answer {
            Ok(a) => a.into_inner(),
            Err(s) if needs_org(org, &s) => return Ok(Looked::NeedsOrg),
            Err(s) => {
                return Err(CliError::status(
                    format!("look up project `{name}` in {}", org.label()),
                    s,
                ));
            }
        };
        Ok(match answer.projects.into_iter().next() {
            Some(p) => {
                self.project_names.insert(p.id.clone(), p.name.clone());
                Looked::Found(p)
            }
            None => Looked::Missing,
        })
    }

    /// The id of the workspace `text`: an id, `ORG/PROJECT/NAME`, `PROJECT/NAME` in the
    /// command's organization, or a name searched across that organization's projects.
    pub async fn workspace(&mut self, text: &str) -> Result<String, CliError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CliError::Usage("the workspace is empty".into()));
        }
        if is_id(text) {
            return Ok(text.to_owned());
        }
        let mut f = Findings::default();
        if let Some((first, rest)) = text.split_once('/') {
            if let Some((project, name)) = rest.split_once('/')
                && ![first, project, name].iter().any(|p| p.is_empty())
            {
                match self.lookup_org(first).await? {
                    Some(org) => {
                        self.workspaces_in(&org, Some(project), name, &mut f)
                            .await?;
                    }
                    None => f.misses.push(format!("no organization named `{first}`")),
                }
            }
            if f.found.is_empty()
                && !first.is_empty()
                && !rest.is_empty()
                && let Some(scope) = self.fallback_scope(&mut f).await?
            {
                self.workspaces_in(&scope, Some(first), rest, &mut f)
                    .await?;
            }
        }
        if f.found.is_empty()
            && let Some(scope) = self.fallback_scope(&mut f).await?
        {
            self.workspaces_in(&scope, None, text, &mut f).await?;
        }
        match f.found.len() {
            1 => Ok(f.found.remove(0).id),
            0 => Err(self.not_found("workspace", text, "ORG/PROJECT/NAME", f)),
            n => {
                let mut candidates = Vec::new();
                for w in &f.found {
                    let org = self.org_name(&w.organization_id).await;
                    let project = self.project_name(&w.project_id).await;
                    candidates.push(format!("{org}/{project}/{} ({})", w.name, w.id));
                }
                Err(ambiguous(
                    "workspace",
                    text,
                    n,
                    &candidates,
                    "PROJECT/NAME or ORG/PROJECT/NAME",
                ))
            }
        }
    }

    /// The workspaces named `name` in `org`, in the project `project` (an id or a name) or in
    /// any.
    async fn workspaces_in(
        &mut self,
        org: &Org,
        project: Option<&str>,
        name: &str,
        f: &mut Findings<pb::Workspace>,
    ) -> Result<(), CliError> {
        let project_id = match project {
            None => String::new(),
            Some(p) if is_id(p) => p.to_owned(),
            Some(p) => match self.project_named(org, p).await? {
                Looked::Found(found) => found.id,
                Looked::Missing => {
                    let label = self.label(org).await;
                    f.misses.push(format!("no project `{p}` in {label}"));
                    return Ok(());
                }
                Looked::NeedsOrg => {
                    f.needs_org = true;
                    return Ok(());
                }
            },
        };
        let mut request = pb::ListWorkspacesRequest {
            organization_id: org.id.clone(),
            project_id,
            name: name.to_owned(),
            page_size: 1000,
            ..Default::default()
        };
        let mut found = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = match self.lifecycle.list_workspaces(request.clone()).await {
                Ok(page) => page.into_inner(),
                Err(s) if needs_org(org, &s) => {
                    f.needs_org = true;
                    return Ok(());
                }
                Err(s) => {
                    return Err(CliError::status(
                        format!("look up workspace `{name}` in {}", org.label()),
                        s,
                    ));
                }
            };
            found.extend(page.workspaces);
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        if found.is_empty() {
            let label = self.label(org).await;
            f.misses.push(match project {
                Some(p) => format!("no workspace `{name}` in project `{p}` of {label}"),
                None => format!("no workspace `{name}` in any project of {label}"),
            });
        }
        f.found.extend(found);
        Ok(())
    }

    /// The id of the entity `text`: an id, `KIND/NAME`, or a name of any kind, in the
    /// command's organization.
    pub async fn entity(&mut self, text: &str) -> Result<String, CliError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CliError::Usage("the entity is empty".into()));
        }
        if is_id(text) {
            return Ok(text.to_owned());
        }
        let mut f = Findings::default();
        let Some(scope) = self.fallback_scope(&mut f).await? else {
            return Err(self.not_found("entity", text, "KIND/NAME", f));
        };
        if let Some((kind, name)) = text
            .split_once('/')
            .filter(|(k, n)| is_kind(k) && !n.is_empty())
        {
            self.entities_in(&scope, Some(kind), name, &mut f).await?;
        }
        if f.found.is_empty() {
            self.entities_in(&scope, None, text, &mut f).await?;
        }
        match f.found.len() {
            1 => Ok(f.found.remove(0).id),
            0 => Err(self.not_found("entity", text, "KIND/NAME", f)),
            n => {
                let candidates: Vec<String> = f
                    .found
                    .iter()
                    .map(|e| format!("{}/{} ({})", e.kind, e.name, e.id))
                    .collect();
                Err(ambiguous("entity", text, n, &candidates, "KIND/NAME"))
            }
        }
    }

    /// The entities named `name` in `org`, of `kind` or of any.
    async fn entities_in(
        &mut self,
        org: &Org,
        kind: Option<&str>,
        name: &str,
        f: &mut Findings<pb::Entity>,
    ) -> Result<(), CliError> {
        let mut request = pb::ListEntitiesRequest {
            organization_id: org.id.clone(),
            kind: kind.unwrap_or_default().to_owned(),
            name: name.to_owned(),
            page_size: 1000,
            ..Default::default()
        };
        let mut found = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = match self.deprovision.list_entities(request.clone()).await {
                Ok(page) => page.into_inner(),
                Err(s) if needs_org(org, &s) => {
                    f.needs_org = true;
                    return Ok(());
                }
                Err(s) => {
                    return Err(CliError::status(
                        format!("look up entity `{name}` in {}", org.label()),
                        s,
                    ));
                }
            };
            found.extend(page.entities);
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        if found.is_empty() {
            let label = self.label(org).await;
            f.misses.push(match kind {
                Some(k) => format!("no {k} named `{name}` in {label}"),
                None => format!("no entity named `{name}` in {label}"),
            });
        }
        f.found.extend(found);
        Ok(())
    }

    /// The error for a name nothing carries: what was looked for and where, or that an
    /// organization is needed to look.
    fn not_found<T>(&self, what: &str, text: &str, path: &str, mut f: Findings<T>) -> CliError {
        let mut seen = std::collections::HashSet::new();
        f.misses.retain(|m| seen.insert(m.clone()));
        if f.needs_org && f.misses.is_empty() {
            return CliError::Usage(format!(
                "{what} `{text}` is a name: give the organization to look it up in with --org \
                 (an id or a name), EBB_ORGANIZATION_ID or a context's organization, or name it \
                 as {path}"
            ));
        }
        CliError::Failed(format!(
            "{what} `{text}` not found: {}",
            f.misses.join("; ")
        ))
    }

    /// How messages name `org`: by its name, looked up when only its id is known.
    async fn label(&mut self, org: &Org) -> String {
        if org.name.is_some() || org.id.is_empty() {
            return org.label();
        }
        let name = self.org_name(&org.id).await;
        if name == org.id {
            org.label()
        } else {
            format!("organization `{name}`")
        }
    }

    /// The name of the organization `id`, or the id when it cannot be read.
    async fn org_name(&mut self, id: &str) -> String {
        if let Some(name) = self.org_names.get(id) {
            return name.clone();
        }
        let name = self
            .lifecycle
            .get_organization(pb::GetOrganizationRequest {
                organization_id: id.to_owned(),
            })
            .await
            .ok()
            .and_then(|a| a.into_inner().organization)
            .map_or_else(|| id.to_owned(), |o| o.name);
        self.org_names.insert(id.to_owned(), name.clone());
        name
    }

    /// The name of the project `id`, or the id when it cannot be read.
    async fn project_name(&mut self, id: &str) -> String {
        if let Some(name) = self.project_names.get(id) {
            return name.clone();
        }
        let name = self
            .lifecycle
            .get_project(pb::GetProjectRequest {
                project_id: id.to_owned(),
            })
            .await
            .ok()
            .and_then(|a| a.into_inner().project)
            .map_or_else(|| id.to_owned(), |p| p.name);
        self.project_names.insert(id.to_owned(), name.clone());
        name
    }
}

/// One lookup by name.
enum Looked<T> {
    Found(T),
    Missing,
    /// No organization was given and the token is bound to none.
    NeedsOrg,
}

/// Whether `status` refuses a lookup in the token's own organization because the token has
/// none (the bootstrap admin): the organization must be given.
fn needs_org(org: &Org, status: &tonic::Status) -> bool {
    org.id.is_empty()
        && status.code() == tonic::Code::InvalidArgument
        && status.message().contains("organization_id")
}

/// The error for a name several things carry: each by its full path and id.
fn ambiguous(what: &str, text: &str, n: usize, candidates: &[String], path: &str) -> CliError {
    CliError::Usage(format!(
        "{what} `{text}` is ambiguous, {n} match: {}; name one by its id or as {path}",
        candidates.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuids_and_kinds_are_short_names() {
        assert!(is_id("0190a1b2-0000-7000-8000-000000000000"));
        assert!(is_id(" 0190a1b2-0000-7000-8000-000000000000 "));
        assert!(!is_id("pr-a"));
        assert!(!is_id("acme/previews/pr-a"));
        assert!(is_kind("tenant") && is_kind("app_stack") && is_kind("a.b-c"));
        assert!(!is_kind("") && !is_kind("feature branch") && !is_kind("ünï"));
    }

    #[test]
    fn ambiguity_lists_every_candidate() {
        let e = ambiguous(
            "workspace",
            "pr-a",
            2,
            &["acme/a/pr-a (1)".into(), "acme/b/pr-a (2)".into()],
            "PROJECT/NAME",
        );
        let text = e.to_string();
        assert!(
            text.contains("acme/a/pr-a (1)") && text.contains("acme/b/pr-a (2)"),
            "{text}"
        );
        assert!(matches!(e, CliError::Usage(_)));
    }
}
