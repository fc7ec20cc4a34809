//! The world under test: one organization in a fresh database, set up from a [`Setup`],
//! its transactions in the scope of their actors, and what the checks read back.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use ebb_common::Error;
use ebb_common::db::Db;
use futures::future::BoxFuture;
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult};

use crate::actor::{self, Actor};
use crate::core::Lifecycle;
use crate::deprovision::{catalog, entities, relationships, steps};
use crate::finish;
use crate::store::query_all;
use crate::tenancy::orgs::{self, OrgSettings};
use crate::tenancy::projects;
use crate::timing::windows::{DestroyWindows, WindowSpec, WindowsSpec};
use crate::workspaces::{
    self, NewWorkspace, WORKSPACE_COLUMNS, WORKSPACE_FROM, WorkspaceRow, state_versions,
};

use super::case::{
    ACCOUNTS, API, APPROVAL_WINDOW_HOURS, DAY, FIRST_ACCOUNT_WORKSPACE, FIRST_TENANT_WORKSPACE,
    HOUR, LAYOUT, LEAD_TIMES, MINUTE, START, Setup, WINDOWS, WORKSPACES,
};
use super::model::Model;

/// What a mutation ended as: done, or refused as the API would refuse it (nothing changed).
pub(super) enum Done<T> {
    Ok(T),
    Refused(Error),
}

/// What one applied operation tells the checks.
#[derive(Default)]
pub(super) struct Applied {
    pub(super) refused: Option<String>,
    /// Workspaces whose schedule a policy change (AD-12) may have brought forward.
    pub(super) implicit: Vec<usize>,
    /// Workspaces whose one-shot the operator set or extended.
    pub(super) explicit: Vec<usize>,
    /// Workspaces that got an applied state version.
    pub(super) activity: Vec<usize>,
    /// Workspaces whose schedule the operator set anew: set, cleared, extended, or the project
    /// default they inherit.
    pub(super) resettled: Vec<usize>,
    pub(super) tick: bool,
}

impl Applied {
    pub(super) fn refused(e: &Error) -> Self {
        Self {
            refused: Some(e.to_string()),
            ..Self::default()
        }
    }
}

/// A run as the checks read it.
#[derive(Debug, FromQueryResult)]
pub(super) struct RunView {
    pub(super) id: String,
    pub(super) workspace_id: String,
    pub(super) source: String,
    pub(super) status: String,
    pub(super) is_destroy: bool,
    pub(super) fire_due_at: Option<i64>,
    pub(super) created_at: i64,
    pub(super) approval: Option<String>,
}

/// An outbox event as the checks read it.
#[derive(Debug, FromQueryResult)]
pub(super) struct EventView {
    pub(super) actor: String,
    pub(super) data: String,
}

/// One case's organization in its database, and the model's memory of it.
pub(super) struct World {
    pub(super) core: Lifecycle,
    /// How runs finish: retry backoff and the settings of action runs.
    pub(super) policy: finish::Policy,
    pub(super) org: String,
    pub(super) projects: [String; 2],
    /// Workspace ids by [`LAYOUT`] index, and back.
    pub(super) ws: Vec<String>,
    pub(super) index: HashMap<String, usize>,
    /// Tenant entity ids, by tenant index.
    pub(super) tenants: Vec<String>,
    pub(super) model: Model,
}

/// The operator calling the API.
pub(super) fn admin() -> Actor {
    Actor::Token {
        token_id: "model-admin".into(),
        role: "admin".into(),
        description: "safety model operator".into(),
    }
}

/// The scheduler's `task` working `shard`.
pub(super) fn scheduler(task: &str, shard: i32) -> Actor {
    Actor::Scheduler {
        task: task.into(),
        shard: shard.to_string(),
        replica: "model".into(),
        token_id: "service".into(),
    }
}

/// Runner `runner_id` claiming runs with the model's runner token.
pub(super) fn claimant(runner_id: &str) -> Actor {
    Actor::Runner {
        runner_id: runner_id.into(),
        run_id: String::new(),
        token_id: "model-runner".into(),
    }
}

/// A runner's token, completing a run through the API.
pub(super) fn runner_token() -> Actor {
    Actor::Token {
        token_id: "model-runner".into(),
        role: "runner".into(),
        description: "safety model runner".into(),
    }
}

/// An error the model does not expect: a failure of the case.
pub(super) fn unexpected(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: unexpected error: {e}")
}

impl World {
    /// Sets up `setup` in `db`: the organization, two projects, the workspaces of [`LAYOUT`]
    /// (each with one applied state version), the catalog, the tenants and the accounts they
    /// run on.
    pub(super) async fn create(db: Db, setup: &Setup) -> Result<Self, String> {
        let core = Lifecycle::new(db, crate::Config::default());
        let policy = finish::Policy {
            retry_backoff_ms: MINUTE,
            engine: steps::Engine {
                callback_secret: vec![7; 32],
                step_timeout_ms: DAY,
                callback_ttl_ms: 7 * DAY,
            },
        };
        let now = START;
        let setup = setup.clone();
        let built = Self::in_txn(&core, admin(), move |t| {
            Box::pin(async move {
                let labels = |prod: bool| {
                    BTreeMap::from([("env".to_owned(), (if prod { "prod" } else { "dev" }).into())])
                };
                let settings = OrgSettings {
                    reminder_lead_times_ms: LEAD_TIMES.to_vec(),
                    destroy_retry_limit: setup.retry_limit,
                    protected_labels: if setup.protect_prod {
                        labels(true)
                    } else {
                        BTreeMap::new()
                    },
                    minimum_notice_ms: setup.minimum_notice_hours.map(|h| h * HOUR),
                    confirm_threshold: setup.confirm_threshold,
                    require_approval: setup.require_approval,
                    approval_window_ms: APPROVAL_WINDOW_HOURS * HOUR,
                    destroy_windows: setup.windows.map(windows),
                    approval_labels: if setup.approval_prod_only {
                        BTreeMap::from([("env".into(), "prod".into())])
                    } else {
                        BTreeMap::new()
                    },
                    ..OrgSettings::default()
                };
                let org = orgs::create_org(t, "model", &settings, API, now).await?;
                let mut project_ids = Vec::new();
                for (i, hours) in setup.project_default_hours.iter().enumerate() {
                    let p = projects::create_project(
                        t,
                        &org.id,
                        &format!("p{i}"),
                        hours.map(|h| h * HOUR),
                        None,
                        API,
                        now,
                    )
                    .await?;
                    project_ids.push(p.id);
                }
                let mut ws_ids = Vec::new();
                for (i, (project, prod)) in LAYOUT.iter().enumerate() {
                    let w = workspaces::create_workspace(
                        t,
                        NewWorkspace {
                            project_id: project_ids[*project].clone(),
                            name: format!("w{i}"),
                            labels: labels(*prod),
                            protected: false,
                            working_directory: String::new(),
                            owner_email: String::new(),
                            owner_slack_user_id: String::new(),
                        },
                        API,
                        now,
                    )
                    .await?;
                    // Applied once, so that inactivity counts from the start (AD-3).
                    state_versions::record_state_version(t, &w.id, 1, None, false, API, now)
                        .await?;
                    // A shard chosen by index, not at random, so that the order in which the
                    // shards' ticks queue runs — and so which run a runner claims — is the
                    // same every time a sequence is replayed (shrinking depends on it).
                    crate::store::exec(
                        t,
                        "UPDATE workspaces SET shard_key = $1 WHERE id = $2",
                        [(i as i32).into(), w.id.clone().into()],
                    )
                    .await?;
                    ws_ids.push(w.id);
                }
                let text = include_str!("../../../deploy/catalog/deprovision-tenant.yaml");
                let parsed = catalog::parse(text).map_err(|e| Error::Internal(e.to_string()))?;
                catalog::store(t, &parsed, "file", now).await?;
                let mut accounts = Vec::new();
                for a in 0..ACCOUNTS {
                    let e = entities::create_entity(
                        t,
                        &org.id,
                        "account",
                        &format!("a{a}"),
                        &BTreeMap::new(),
                        Some(&ws_ids[FIRST_ACCOUNT_WORKSPACE + a]),
                        ("", ""),
                        API,
                        now,
                    )
                    .await?;
                    accounts.push(e.id);
                }
                let mut tenants = Vec::new();
                for (i, mask) in setup.runs_on.iter().enumerate() {
                    let e = entities::create_entity(
                        t,
                        &org.id,
                        "tenant",
                        &format!("t{i}"),
                        &BTreeMap::new(),
                        Some(&ws_ids[FIRST_TENANT_WORKSPACE + i]),
                        ("", ""),
                        API,
                        now,
                    )
                    .await?;
                    for (a, account) in accounts.iter().enumerate() {
                        if mask & (1 << a) != 0 {
                            relationships::create_relationship(
                                t, "runs_on", &e.id, account, API, now,
                            )
                            .await?;
                        }
                    }
                    tenants.push(e.id);
                }
                Ok((org.id, project_ids, ws_ids, tenants))
            })
        })
        .await?;
        let (org, project_ids, ws, tenants) = match built {
            Done::Ok(b) => b,
            Done::Refused(e) => return Err(format!("set-up refused: {e}")),
        };
        let index = ws
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        let model = Model {
            now,
            notice_ms: setup
                .minimum_notice_hours
                .map_or(LEAD_TIMES[0], |h| h * HOUR),
            flag: [false; WORKSPACES],
            prod: LAYOUT.map(|(_, prod)| prod),
            policy_prod: setup.protect_prod,
            protected_since: LAYOUT.map(|(_, prod)| (prod && setup.protect_prod).then_some(now)),
            implicit_at: [None; WORKSPACES],
            explicit_at: vec![BTreeSet::new(); WORKSPACES],
            recurring: vec![None; WORKSPACES],
            recurring_extended: vec![BTreeSet::new(); WORKSPACES],
            windows: setup.windows,
            approval: setup.require_approval.then_some(setup.approval_prod_only),
            came_due_protected: BTreeSet::new(),
            runs: BTreeSet::new(),
            abandoned: VecDeque::new(),
        };
        Ok(Self {
            core,
            policy,
            org,
            projects: [project_ids[0].clone(), project_ids[1].clone()],
            ws,
            index,
            tenants,
            model,
        })
    }

    /// Runs `f` in one write transaction as `actor`: committed when it succeeds, rolled back
    /// when it is refused. Any other error is a failure of the model run.
    async fn in_txn<T, F>(core: &Lifecycle, actor: Actor, f: F) -> Result<Done<T>, String>
    where
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, ebb_common::Result<T>>,
    {
        let txn = core.begin().await.map_err(|e| unexpected("begin", e))?;
        match actor::acting(actor, f(&txn)).await {
            Ok(v) => {
                txn.commit().await.map_err(|e| unexpected("commit", e))?;
                Ok(Done::Ok(v))
            }
            Err(e @ (Error::InvalidArgument(_) | Error::FailedPrecondition(_))) => {
                txn.rollback()
                    .await
                    .map_err(|e| unexpected("rollback", e))?;
                Ok(Done::Refused(e))
            }
            Err(e) => Err(unexpected("operation", e)),
        }
    }

    pub(super) async fn txn<T, F>(&self, actor: Actor, f: F) -> Result<Done<T>, String>
    where
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, ebb_common::Result<T>>,
    {
        Self::in_txn(&self.core, actor, f).await
    }

    /// Every workspace, by model index.
    pub(super) async fn workspaces(
        &self,
        conn: &impl ConnectionTrait,
    ) -> Result<Vec<WorkspaceRow>, String> {
        let rows: Vec<WorkspaceRow> = query_all(
            conn,
            &format!(
                "SELECT {WORKSPACE_COLUMNS} FROM {WORKSPACE_FROM} WHERE w.organization_id = $1"
            ),
            [self.org.clone().into()],
        )
        .await
        .map_err(|e| unexpected("reading workspaces", e))?;
        let mut by_index: Vec<Option<WorkspaceRow>> = vec![None; WORKSPACES];
        for row in rows {
            let i = self.index[&row.id];
            by_index[i] = Some(row);
        }
        by_index
            .into_iter()
            .enumerate()
            .map(|(i, w)| w.ok_or_else(|| format!("workspace w{i} vanished")))
            .collect()
    }

    pub(super) async fn runs(&self) -> Result<Vec<RunView>, String> {
        query_all(
            &self.core.db.conn,
            "SELECT id, workspace_id, source, status, is_destroy, fire_due_at, created_at, \
             approval FROM runs WHERE organization_id = $1 ORDER BY created_at, id",
            [self.org.clone().into()],
        )
        .await
        .map_err(|e| unexpected("reading runs", e))
    }

    pub(super) async fn events(
        &self,
        event_type: &str,
        subject_id: &str,
    ) -> Result<Vec<EventView>, String> {
        query_all(
            &self.core.db.conn,
            "SELECT actor, data FROM outbox WHERE type = $1 AND subject_id = $2 ORDER BY seq",
            [event_type.into(), subject_id.into()],
        )
        .await
        .map_err(|e| unexpected("reading the outbox", e))
    }
}

/// The destroy windows [`WINDOWS`]`[i]` as the API takes them.
pub(super) fn windows(i: usize) -> DestroyWindows {
    let (days, start, end, zone) = WINDOWS[i];
    DestroyWindows::parse(
        &WindowsSpec {
            time_zone: zone.into(),
            windows: vec![WindowSpec {
                days: days.into(),
                start: start.into(),
                end: end.into(),
            }],
        },
        "destroy_windows",
    )
    .expect("the windows of the cases are valid")
}
