//! Names wherever the CLI takes an id, against a live `ebb serve` (on PostgreSQL when
//! `EBB_TEST_DATABASE_URL` is set): organizations by name, projects as `org/project` or a
//! name in `--org`, workspaces as `org/project/name`, `project/name` or a bare name searched
//! across the organization's projects, entities as `kind/name`; an ambiguous name refused
//! listing its candidates, a missing one named with where it was looked for; and the exact-name
//! filters of `ListWorkspaces` and `ListEntities` the lookups stand on.

use crate::cli::{Ebb, Run, string};
use crate::cli_contexts::{admin_token, assert_code, serve};
use crate::support::repo_file;
use ebb_tests::TestDatabases;
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::deprovision_service_client::DeprovisionServiceClient;
use ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient;

/// Standard error of a command that must fail with `code`, checked to name no internal error.
fn refused(r: Run, code: i32, what: &str) -> String {
    assert_code(&r, code, what);
    assert!(
        !r.stderr.to_ascii_lowercase().contains("internal"),
        "{what}: {}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
    r.stderr
}

/// `ebb workspaces create --project PROJECT NAME [--org ORG]`: the new workspace's id.
async fn create(ebb: &Ebb, project: &str, name: &str, org: Option<&str>) -> String {
    let mut args = vec!["workspaces", "create", "--project", project, name];
    if let Some(o) = org {
        args.extend(["--org", o]);
    }
    string(&ebb.json(&args).await, "id")
}

/// `ebb workspaces show ARGS`: the id of the workspace shown.
async fn show(ebb: &Ebb, args: &[&str]) -> String {
    let mut all = vec!["workspaces", "show"];
    all.extend(args);
    string(&ebb.json(&all).await, "id")
}

/// `ebb deprovision create-entity` of `kind` and `name` in `names-org`, materialized by
/// `workspace`: the entity's id.
async fn entity(ebb: &Ebb, kind: &str, name: &str, workspace: &str) -> String {
    let e = ebb
        .json(&[
            "deprovision",
            "create-entity",
            "--org",
            "names-org",
            "--kind",
            kind,
            name,
            "--workspace",
            "names-org/previews/pr-b",
        ])
        .await;
    assert_eq!(e["workspaceId"], workspace, "{e:#}");
    string(&e, "id")
}

#[tokio::test]
async fn names_stand_for_ids_and_ambiguous_names_are_refused_with_their_candidates() {
    let mut dbs = TestDatabases::new();
    let (server, data) = serve(&mut dbs, &[]).await;
    let ebb = Ebb::new(&server, &data, &dbs);

    // An organization by name: created, shown, and the --org of the commands after.
    let org = string(&ebb.json(&["orgs", "create", "names-org"]).await, "id");
    let shown = ebb.json(&["orgs", "show", "names-org"]).await;
    assert_eq!(shown["id"], org.as_str(), "{shown:#}");
    let r = refused(
        ebb.run(&["orgs", "show", "no-such-org"]).await,
        1,
        "unknown org",
    );
    assert!(r.contains("organization `no-such-org` not found"), "{r}");

    // Projects in the organization named by name; shown as org/project or a name in --org.
    let previews = string(
        &ebb.json(&["projects", "create", "--org", "names-org", "previews"])
            .await,
        "id",
    );
    let staging = string(
        &ebb.json(&["projects", "create", "--org", "names-org", "staging"])
            .await,
        "id",
    );
    let p = ebb.json(&["projects", "show", "names-org/previews"]).await;
    assert_eq!(p["id"], previews.as_str());
    assert_eq!(p["organizationId"], org.as_str());
    let p = ebb
        .json(&["projects", "show", "staging", "--org", "names-org"])
        .await;
    assert_eq!(p["id"], staging.as_str());
    let p = ebb
        .json(&["projects", "show", "staging", "--org", &org])
        .await;
    assert_eq!(p["id"], staging.as_str());
    let listed = ebb
        .json(&[
            "projects",
            "list",
            "--org",
            "names-org",
            "--name",
            "previews",
        ])
        .await;
    assert_eq!(listed["projects"][0]["id"], previews.as_str());
    ebb.ok(&[
        "projects",
        "set-default-inactivity",
        "names-org/staging",
        "7d",
    ])
    .await;
    let r = refused(
        ebb.run(&["projects", "show", "nope", "--org", "names-org"])
            .await,
        1,
        "unknown project",
    );
    assert!(
        r.contains("project `nope` not found") && r.contains("organization `names-org`"),
        "{r}"
    );

    // Workspaces created in projects given by name: pr-a in both projects, pr-b in one, and
    // a name with a slash in it.
    let a_previews = create(&ebb, "names-org/previews", "pr-a", None).await;
    let a_staging = create(&ebb, "staging", "pr-a", Some("names-org")).await;
    let b = create(&ebb, &previews, "pr-b", None).await;
    let slash = create(&ebb, "names-org/previews", "feature/login", None).await;

    // Shown by a bare name (searched across the projects), by project/name, by
    // org/project/name without --org, and by id as before.
    assert_eq!(show(&ebb, &["pr-b", "--org", "names-org"]).await, b);
    assert_eq!(show(&ebb, &["pr-b", "--org", &org]).await, b);
    assert_eq!(
        show(&ebb, &["staging/pr-a", "--org", "names-org"]).await,
        a_staging
    );
    assert_eq!(show(&ebb, &["names-org/previews/pr-a"]).await, a_previews);
    assert_eq!(show(&ebb, &[&a_staging]).await, a_staging);
    // A name with a slash: no project `feature`, so it is the whole name.
    assert_eq!(
        show(&ebb, &["feature/login", "--org", "names-org"]).await,
        slash
    );
    assert_eq!(
        show(&ebb, &["previews/feature/login", "--org", "names-org"]).await,
        slash
    );

    // A bare name two projects carry is refused, listing both by full path and id.
    let r = refused(
        ebb.run(&["workspaces", "show", "pr-a", "--org", "names-org"])
            .await,
        2,
        "ambiguous workspace",
    );
    assert!(r.contains("workspace `pr-a` is ambiguous, 2 match"), "{r}");
    for candidate in [
        format!("names-org/previews/pr-a ({a_previews})"),
        format!("names-org/staging/pr-a ({a_staging})"),
    ] {
        assert!(r.contains(&candidate), "{candidate} missing: {r}");
    }
    // So is a change through it: nothing is changed.
    let r = refused(
        ebb.run(&[
            "workspaces",
            "lock",
            "pr-a",
            "--org",
            "names-org",
            "--reason",
            "x",
        ])
        .await,
        2,
        "ambiguous lock",
    );
    assert!(r.contains("ambiguous"), "{r}");

    // Not found: what was looked for, and where.
    let r = refused(
        ebb.run(&["workspaces", "show", "pr-z", "--org", "names-org"])
            .await,
        1,
        "unknown workspace",
    );
    assert!(
        r.contains("workspace `pr-z` not found")
            && r.contains("no workspace `pr-z` in any project of organization `names-org`"),
        "{r}"
    );
    let r = refused(
        ebb.run(&["workspaces", "show", "names-org/nope/pr-a"])
            .await,
        1,
        "unknown project in a path",
    );
    assert!(
        r.contains("no project `nope` in organization `names-org`"),
        "{r}"
    );
    let r = refused(
        ebb.run(&["workspaces", "show", "other/previews/pr-a", "--org", &org])
            .await,
        1,
        "unknown organization in a path",
    );
    assert!(r.contains("no organization named `other`"), "{r}");
    // The bootstrap admin belongs to no organization: a bare name needs one.
    let r = refused(
        ebb.run(&["workspaces", "show", "pr-b"]).await,
        2,
        "no organization",
    );
    assert!(r.contains("--org") && r.contains("pr-b"), "{r}");

    // Changes and listings take names too.
    let scheduled = ebb
        .json(&[
            "workspaces",
            "schedule",
            "previews/pr-b",
            "--org",
            "names-org",
            "--in",
            "3h",
        ])
        .await;
    assert_eq!(scheduled["id"], b.as_str());
    let listed = ebb
        .json(&[
            "workspaces",
            "list",
            "--org",
            "names-org",
            "--project",
            "staging",
        ])
        .await;
    let ids: Vec<&str> = listed["workspaces"]
        .as_array()
        .expect("workspaces")
        .iter()
        .filter_map(|w| w["id"].as_str())
        .collect();
    assert_eq!(ids, [a_staging.as_str()]);
    let runs = ebb
        .json(&["runs", "list", "--org", "names-org", "--workspace", "pr-b"])
        .await;
    assert!(runs["runs"].as_array().is_none_or(Vec::is_empty), "{runs}");

    // A token bound to the organization looks in its own without --org; a token of another
    // organization does not see this one's names.
    let operator = ebb
        .json(&[
            "tokens",
            "create",
            "--org",
            "names-org",
            "--role",
            "operator",
            "--description",
            "names",
        ])
        .await;
    let operator = string(&operator, "secret");
    let w = ebb
        .run(&[
            "workspaces",
            "show",
            "pr-b",
            "--token",
            &operator,
            "-o",
            "json",
        ])
        .await
        .json("show with an organization's token");
    assert_eq!(w["id"], b.as_str());
    ebb.json(&["orgs", "create", "elsewhere"]).await;
    let outsider = ebb
        .json(&[
            "tokens",
            "create",
            "--org",
            "elsewhere",
            "--role",
            "reader",
            "--description",
            "outsider",
        ])
        .await;
    let outsider = string(&outsider, "secret");
    let r = refused(
        ebb.run(&[
            "workspaces",
            "show",
            "names-org/previews/pr-b",
            "--token",
            &outsider,
        ])
        .await,
        1,
        "another organization's token",
    );
    assert!(r.contains("no organization named `names-org`"), "{r}");

    // A context whose organization is a name: bare names need no --org.
    let token_file = data.join("admin-token");
    ebb.bare(
        &[
            "config",
            "set-context",
            "names",
            "--server",
            &ebb.server,
            "--token-file",
            token_file.to_str().expect("utf-8"),
            "--org",
            "names-org",
        ],
        &[],
    )
    .await
    .ok("set-context");
    let w = ebb
        .bare(&["workspaces", "show", "pr-b", "-o", "json"], &[])
        .await
        .json("show with the context's organization");
    assert_eq!(w["id"], b.as_str());
    let w = ebb
        .bare(&["workspaces", "show", "staging/pr-a", "-o", "json"], &[])
        .await
        .json("project/name with the context's organization");
    assert_eq!(w["id"], a_staging.as_str());

    // Entities as kind/name in the organization, in a deprovisioning plan and in edges.
    let catalog = repo_file("deploy/catalog/deprovision-tenant.yaml");
    ebb.ok(&[
        "deprovision",
        "apply-catalog",
        catalog.to_str().expect("utf-8 path"),
    ])
    .await;
    let tenant = entity(&ebb, "tenant", "acme", &b).await;
    let account = entity(&ebb, "account", "acme", &b).await;
    let edge = ebb
        .json(&[
            "deprovision",
            "relate",
            "tenant/acme",
            "account/acme",
            "--org",
            "names-org",
        ])
        .await;
    assert_eq!(edge["fromEntityId"], tenant.as_str(), "{edge:#}");
    assert_eq!(edge["toEntityId"], account.as_str(), "{edge:#}");
    let plan = ebb
        .json(&[
            "deprovision",
            "plan",
            "tenant/acme",
            "--org",
            "names-org",
            "--action",
            "DeprovisionTenant",
        ])
        .await;
    assert_eq!(plan["plan"][0]["entityId"], tenant.as_str(), "{plan:#}");
    assert!(plan["actionRun"].is_null(), "a dry run starts no run");
    let edges = ebb
        .json(&[
            "deprovision",
            "relationships",
            "--org",
            "names-org",
            "--entity",
            "account/acme",
        ])
        .await;
    assert_eq!(
        edges["relationships"].as_array().map(Vec::len),
        Some(1),
        "{edges:#}"
    );
    // A bare name two kinds carry is refused, listing both; an unknown one is named.
    let r = refused(
        ebb.run(&[
            "deprovision",
            "plan",
            "acme",
            "--org",
            "names-org",
            "--action",
            "DeprovisionTenant",
        ])
        .await,
        2,
        "ambiguous entity",
    );
    assert!(
        r.contains(&format!("tenant/acme ({tenant})"))
            && r.contains(&format!("account/acme ({account})")),
        "{r}"
    );
    let r = refused(
        ebb.run(&[
            "deprovision",
            "plan",
            "tenant/globex",
            "--org",
            "names-org",
            "--action",
            "DeprovisionTenant",
        ])
        .await,
        1,
        "unknown entity",
    );
    assert!(
        r.contains("entity `tenant/globex` not found")
            && r.contains("no tenant named `globex` in organization `names-org`"),
        "{r}"
    );

    server.kill().await;
}

#[tokio::test]
async fn list_workspaces_and_entities_filter_by_exact_name() {
    let mut dbs = TestDatabases::new();
    let (server, data) = serve(&mut dbs, &[]).await;
    let channel = server.channel_as(&admin_token(&data)).await;
    let mut api = LifecycleServiceClient::new(channel.clone());
    let org = api
        .create_organization(pb::CreateOrganizationRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            name: "filters".into(),
            settings: None,
        })
        .await
        .expect("org")
        .into_inner()
        .organization
        .expect("org")
        .id;
    let mut workspaces = Vec::new();
    for project in ["one", "two", "three"] {
        let p = api
            .create_project(pb::CreateProjectRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                organization_id: org.clone(),
                name: project.into(),
                ..Default::default()
            })
            .await
            .expect("project")
            .into_inner()
            .project
            .expect("project")
            .id;
        for name in ["web", "Web", "web-2"] {
            let w = api
                .create_workspace(pb::CreateWorkspaceRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    project_id: p.clone(),
                    name: name.into(),
                    ..Default::default()
                })
                .await
                .expect("workspace")
                .into_inner()
                .workspace
                .expect("workspace");
            workspaces.push((project, w));
        }
    }
    let list = |request: pb::ListWorkspacesRequest| {
        let mut api = api.clone();
        async move {
            api.list_workspaces(request)
                .await
                .expect("list")
                .into_inner()
        }
    };
    let named = |name: &str| {
        let mut ids: Vec<String> = workspaces
            .iter()
            .filter(|(_, w)| w.name == name)
            .map(|(_, w)| w.id.clone())
            .collect();
        ids.sort();
        ids
    };
    // Exact and case-sensitive: `web` is neither `Web` nor `web-2`, in every project.
    let answer = list(pb::ListWorkspacesRequest {
        organization_id: org.clone(),
        name: "web".into(),
        ..Default::default()
    })
    .await;
    let mut ids: Vec<String> = answer.workspaces.iter().map(|w| w.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, named("web"));
    assert_eq!(ids.len(), 3);
    // Paged with the filter: one per page, the same three, then no token.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(pb::ListWorkspacesRequest {
            organization_id: org.clone(),
            name: "web".into(),
            page_size: 1,
            page_token: token,
            ..Default::default()
        })
        .await;
        paged.extend(page.workspaces.into_iter().map(|w| w.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    paged.sort();
    assert_eq!(paged, named("web"));
    // A page token of one filter is refused for another.
    let first = list(pb::ListWorkspacesRequest {
        organization_id: org.clone(),
        name: "web".into(),
        page_size: 1,
        ..Default::default()
    })
    .await;
    let err = api
        .clone()
        .list_workspaces(pb::ListWorkspacesRequest {
            organization_id: org.clone(),
            name: "Web".into(),
            page_size: 1,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .expect_err("a token of another filter");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // With a project: at most one.
    let (_, in_two) = workspaces
        .iter()
        .find(|(p, w)| *p == "two" && w.name == "web-2")
        .expect("two/web-2");
    let answer = list(pb::ListWorkspacesRequest {
        organization_id: org.clone(),
        project_id: in_two.project_id.clone(),
        name: "web-2".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(answer.workspaces.len(), 1);
    assert_eq!(answer.workspaces[0].id, in_two.id);
    // No match is an empty answer; a bad name is refused naming the field.
    let none = list(pb::ListWorkspacesRequest {
        organization_id: org.clone(),
        name: "we".into(),
        ..Default::default()
    })
    .await;
    assert!(none.workspaces.is_empty());
    let err = api
        .clone()
        .list_workspaces(pb::ListWorkspacesRequest {
            organization_id: org.clone(),
            name: "bad\u{202e}name".into(),
            ..Default::default()
        })
        .await
        .expect_err("a control character");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("name"), "{err:?}");

    // Entities: by name across kinds, and by kind and name.
    let mut dep = DeprovisionServiceClient::new(channel);
    let yaml = std::fs::read_to_string(repo_file("deploy/catalog/deprovision-tenant.yaml"))
        .expect("catalog");
    dep.apply_catalog(pb::ApplyCatalogRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        yaml,
    })
    .await
    .expect("catalog");
    let mut entities = Vec::new();
    for (kind, name) in [
        ("tenant", "acme"),
        ("account", "acme"),
        ("tenant", "acme-2"),
    ] {
        let e = dep
            .create_entity(pb::CreateEntityRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                organization_id: org.clone(),
                kind: kind.into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("entity")
            .into_inner()
            .entity
            .expect("entity");
        entities.push(e);
    }
    let find = |kind: &str, name: &str| {
        let request = pb::ListEntitiesRequest {
            organization_id: org.clone(),
            kind: kind.into(),
            name: name.into(),
            ..Default::default()
        };
        let mut dep = dep.clone();
        async move {
            let mut ids: Vec<String> = dep
                .list_entities(request)
                .await
                .expect("entities")
                .into_inner()
                .entities
                .into_iter()
                .map(|e| e.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![entities[0].id.clone(), entities[1].id.clone()];
    both.sort();
    assert_eq!(find("", "acme").await, both);
    assert_eq!(find("tenant", "acme").await, [entities[0].id.clone()]);
    assert_eq!(find("account", "acme-2").await, Vec::<String>::new());
    assert_eq!(find("tenant", "").await.len(), 2);

    server.kill().await;
}
