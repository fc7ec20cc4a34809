//! What every RPC of Ebb is: its descriptor (the compiled `ebb-proto` descriptors) and who may
//! call it (the role table). Authentication, metrics labels and request fingerprints all read
//! this one table, so none of them needs another.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, MessageDescriptor};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything within its organization (the bootstrap admin: everything).
    Admin,
    /// Day-to-day changes within its organization.
    Operator,
    /// Claims, heartbeats and completes runs of its organization.
    Runner,
    /// Service-to-service calls; never bound to an organization.
    Service,
    /// Reads within its organization.
    Reader,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Runner,
        Role::Service,
        Role::Reader,
    ];

    /// The name stored and logged: `admin`, `operator`, `runner`, `service`, `reader`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Runner => "runner",
            Role::Service => "service",
            Role::Reader => "reader",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// Who may call one RPC.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// Roles allowed.
    pub roles: &'static [Role],
    /// Only tokens bound to no organization (the bootstrap admin, service tokens) may call
    /// it: it acts across organizations.
    pub system_only: bool,
}

const fn org(roles: &'static [Role]) -> Access {
    Access {
        roles,
        system_only: false,
    }
}

const fn system(roles: &'static [Role]) -> Access {
    Access {
        roles,
        system_only: true,
    }
}

use Role::{Admin, Operator, Reader, Runner, Service};

/// Reads within an organization.
const READ: Access = org(&[Admin, Operator, Reader]);
/// Changes within an organization.
const CHANGE: Access = org(&[Admin, Operator]);
/// Organization administration.
const ADMINISTER: Access = org(&[Admin]);
/// The runner protocol.
const RUN: Access = org(&[Admin, Runner]);
/// Service-to-service calls across organizations.
const INTERNAL: Access = system(&[Admin, Service]);

/// The role decision for every RPC of every Ebb service, by full method path. docs/auth.md
/// renders it for people; `every_rpc_has_a_role_decision` fails for an RPC missing here.
pub const ROLE_TABLE: &[(&str, Access)] = &[
    // lifecycle: organizations
    (
        "/ebb.lifecycle.v1.LifecycleService/CreateOrganization",
        system(&[Admin]),
    ),
    ("/ebb.lifecycle.v1.LifecycleService/GetOrganization", READ),
    ("/ebb.lifecycle.v1.LifecycleService/ListOrganizations", READ),
    (
        "/ebb.lifecycle.v1.LifecycleService/UpdateOrganizationSettings",
        ADMINISTER,
    ),
    // lifecycle: projects and workspaces
    ("/ebb.lifecycle.v1.LifecycleService/CreateProject", CHANGE),
    ("/ebb.lifecycle.v1.LifecycleService/GetProject", READ),
    ("/ebb.lifecycle.v1.LifecycleService/ListProjects", READ),
    ("/ebb.lifecycle.v1.LifecycleService/UpdateProject", CHANGE),
    ("/ebb.lifecycle.v1.LifecycleService/CreateWorkspace", CHANGE),
    ("/ebb.lifecycle.v1.LifecycleService/GetWorkspace", READ),
    ("/ebb.lifecycle.v1.LifecycleService/ListWorkspaces", READ),
    ("/ebb.lifecycle.v1.LifecycleService/UpdateWorkspace", CHANGE),
    ("/ebb.lifecycle.v1.LifecycleService/LockWorkspace", CHANGE),
    ("/ebb.lifecycle.v1.LifecycleService/UnlockWorkspace", CHANGE),
    (
        "/ebb.lifecycle.v1.LifecycleService/ArchiveWorkspace",
        CHANGE,
    ),
    (
        "/ebb.lifecycle.v1.LifecycleService/RestoreWorkspace",
        CHANGE,
    ),
    (
        "/ebb.lifecycle.v1.LifecycleService/RecordStateVersion",
        CHANGE,
    ),
    ("/ebb.lifecycle.v1.LifecycleService/ListStateVersions", READ),
    // lifecycle: runs and auto-destroy
    ("/ebb.lifecycle.v1.LifecycleService/CreateRun", CHANGE),
    ("/ebb.lifecycle.v1.LifecycleService/GetRun", READ),
    ("/ebb.lifecycle.v1.LifecycleService/ListRuns", READ),
    ("/ebb.lifecycle.v1.LifecycleService/CancelRun", CHANGE),
    ("/ebb.lifecycle.v1.LifecycleService/ApproveRun", CHANGE),
    ("/ebb.lifecycle.v1.LifecycleService/RejectRun", CHANGE),
    ("/ebb.lifecycle.v1.LifecycleService/SetAutoDestroy", CHANGE),
    (
        "/ebb.lifecycle.v1.LifecycleService/ClearAutoDestroy",
        CHANGE,
    ),
    (
        "/ebb.lifecycle.v1.LifecycleService/ExtendAutoDestroy",
        CHANGE,
    ),
    (
        "/ebb.lifecycle.v1.LifecycleService/PreviewAutoDestroy",
        READ,
    ),
    ("/ebb.lifecycle.v1.LifecycleService/ListOutboxEvents", READ),
    // lifecycle: the runner protocol
    ("/ebb.lifecycle.v1.RunnerService/ClaimRun", RUN),
    ("/ebb.lifecycle.v1.RunnerService/ClaimRuns", RUN),
    ("/ebb.lifecycle.v1.RunnerService/HeartbeatRun", RUN),
    ("/ebb.lifecycle.v1.RunnerService/CompleteRun", RUN),
    ("/ebb.lifecycle.v1.RunnerService/CompleteRuns", RUN),
    // lifecycle: the scheduler's calls
    (
        "/ebb.lifecycle.v1.SchedulingService/FindDueWorkspaces",
        INTERNAL,
    ),
    (
        "/ebb.lifecycle.v1.SchedulingService/QueueAutoDestroyRuns",
        INTERNAL,
    ),
    (
        "/ebb.lifecycle.v1.SchedulingService/QueueDueWorkspaces",
        INTERNAL,
    ),
    (
        "/ebb.lifecycle.v1.SchedulingService/SendDueReminders",
        INTERNAL,
    ),
    (
        "/ebb.lifecycle.v1.SchedulingService/RescueExpiredRunLeases",
        INTERNAL,
    ),
    (
        "/ebb.lifecycle.v1.SchedulingService/FindDueScheduledActions",
        INTERNAL,
    ),
    (
        "/ebb.lifecycle.v1.SchedulingService/FireScheduledActions",
        INTERNAL,
    ),
    (
        "/ebb.lifecycle.v1.SchedulingService/FinalizeElapsedGracePeriods",
        INTERNAL,
    ),
    (
        "/ebb.lifecycle.v1.SchedulingService/TimeOutActionSteps",
        INTERNAL,
    ),
    // lifecycle: entities, relationships, the catalog and action runs
    (
        "/ebb.lifecycle.v1.DeprovisionService/ApplyCatalog",
        system(&[Admin]),
    ),
    ("/ebb.lifecycle.v1.DeprovisionService/ListEntityKinds", READ),
    ("/ebb.lifecycle.v1.DeprovisionService/GetEntityKind", READ),
    ("/ebb.lifecycle.v1.DeprovisionService/CreateEntity", CHANGE),
    ("/ebb.lifecycle.v1.DeprovisionService/GetEntity", READ),
    ("/ebb.lifecycle.v1.DeprovisionService/ListEntities", READ),
    ("/ebb.lifecycle.v1.DeprovisionService/UpdateEntity", CHANGE),
    (
        "/ebb.lifecycle.v1.DeprovisionService/CreateRelationship",
        CHANGE,
    ),
    ("/ebb.lifecycle.v1.DeprovisionService/GetRelationship", READ),
    (
        "/ebb.lifecycle.v1.DeprovisionService/ListRelationships",
        READ,
    ),
    (
        "/ebb.lifecycle.v1.DeprovisionService/ForceFinalizeRelationship",
        CHANGE,
    ),
    ("/ebb.lifecycle.v1.DeprovisionService/TriggerAction", CHANGE),
    ("/ebb.lifecycle.v1.DeprovisionService/GetActionRun", READ),
    ("/ebb.lifecycle.v1.DeprovisionService/ListActionRuns", READ),
    (
        "/ebb.lifecycle.v1.DeprovisionService/RetryActionRun",
        CHANGE,
    ),
    (
        "/ebb.lifecycle.v1.DeprovisionService/CancelActionRun",
        CHANGE,
    ),
    // The external system of a PR-driven flow also presents the step's callback token.
    (
        "/ebb.lifecycle.v1.DeprovisionService/CompleteActionStep",
        CHANGE,
    ),
    (
        "/ebb.lifecycle.v1.DeprovisionService/ScheduleAction",
        CHANGE,
    ),
    (
        "/ebb.lifecycle.v1.DeprovisionService/ListScheduledActions",
        READ,
    ),
    (
        "/ebb.lifecycle.v1.DeprovisionService/CancelScheduledAction",
        CHANGE,
    ),
    // lifecycle: tokens
    ("/ebb.lifecycle.v1.TokenService/CreateToken", ADMINISTER),
    ("/ebb.lifecycle.v1.TokenService/ListTokens", ADMINISTER),
    ("/ebb.lifecycle.v1.TokenService/RevokeToken", ADMINISTER),
    ("/ebb.lifecycle.v1.TokenService/AuthenticateToken", INTERNAL),
    ("/ebb.lifecycle.v1.TokenService/GetCaller", READ),
    // scheduler: tasks act for every organization
    (
        "/ebb.scheduler.v1.SchedulerService/ListTasks",
        org(&[Admin, Operator, Reader]),
    ),
    (
        "/ebb.scheduler.v1.SchedulerService/RunTaskNow",
        system(&[Admin]),
    ),
    (
        "/ebb.scheduler.v1.SchedulerService/PauseTask",
        system(&[Admin]),
    ),
    (
        "/ebb.scheduler.v1.SchedulerService/ResumeTask",
        system(&[Admin]),
    ),
    // notifier
    ("/ebb.notifier.v1.NotifierService/PublishEvent", INTERNAL),
    (
        "/ebb.notifier.v1.NotifierService/CreateNotificationConfiguration",
        CHANGE,
    ),
    (
        "/ebb.notifier.v1.NotifierService/GetNotificationConfiguration",
        READ,
    ),
    (
        "/ebb.notifier.v1.NotifierService/ListNotificationConfigurations",
        READ,
    ),
    (
        "/ebb.notifier.v1.NotifierService/UpdateNotificationConfiguration",
        CHANGE,
    ),
    (
        "/ebb.notifier.v1.NotifierService/DeleteNotificationConfiguration",
        CHANGE,
    ),
    (
        "/ebb.notifier.v1.NotifierService/VerifyNotificationConfiguration",
        CHANGE,
    ),
    (
        "/ebb.notifier.v1.NotifierService/RotateSigningSecret",
        CHANGE,
    ),
    ("/ebb.notifier.v1.NotifierService/ListDeliveries", READ),
    (
        "/ebb.notifier.v1.NotifierService/ListDeliveryAttempts",
        READ,
    ),
    ("/ebb.notifier.v1.NotifierService/RedeliverDelivery", CHANGE),
    (
        "/ebb.notifier.v1.NotifierService/RedeliverDeliveries",
        CHANGE,
    ),
    // audit
    ("/ebb.audit.v1.AuditService/AppendEvents", INTERNAL),
    ("/ebb.audit.v1.AuditService/ListEvents", READ),
    ("/ebb.audit.v1.AuditService/GetEvent", READ),
    ("/ebb.audit.v1.AuditService/VerifyChain", READ),
    ("/ebb.audit.v1.AuditService/ExportEvents", READ),
];

/// The role decision for `path` (`/package.Service/Method`).
pub fn access_for(path: &str) -> Option<Access> {
    ROLE_TABLE
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, access)| *access)
}

/// Paths that need no token: health and reflection.
pub fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Paths whose request carries its own credential, so a bearer token is optional: a call
/// without an `authorization` header goes to the handler, which checks that credential (a
/// webhook step's callback token: single use, expiring, bound to the step by HMAC), so the
/// external system completing a step needs no Ebb token. A call with a bearer token is checked
/// like any other.
pub const SELF_AUTHORIZED: &[&str] = &["/ebb.lifecycle.v1.DeprovisionService/CompleteActionStep"];

/// Whether `path` is one of [`SELF_AUTHORIZED`].
pub fn is_self_authorized(path: &str) -> bool {
    SELF_AUTHORIZED.contains(&path)
}

/// Every Ebb message and service, from the descriptors compiled into `ebb-proto`.
pub static DESCRIPTORS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(ebb_proto::FILE_DESCRIPTOR_SET)
        .unwrap_or_else(|e| panic!("the compiled descriptor set does not decode: {e}"))
});

/// Every RPC of every Ebb service as `/package.Service/Method`.
pub fn all_methods() -> Vec<String> {
    DESCRIPTORS
        .services()
        .filter(|s| s.full_name().starts_with("ebb."))
        .flat_map(|s| {
            s.methods()
                .map(|m| format!("/{}/{}", s.full_name(), m.name()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The request message of the RPC at `path` (`/package.Service/Method`), if it is one of Ebb's.
pub fn input_of(path: &str) -> Option<MessageDescriptor> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    DESCRIPTORS
        .get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == method)
        .map(|m| m.input())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_has_a_role_decision() {
        let methods = all_methods();
        assert!(
            methods.len() > 40,
            "descriptors list {} RPCs",
            methods.len()
        );
        let missing: Vec<_> = methods.iter().filter(|m| access_for(m).is_none()).collect();
        assert!(
            missing.is_empty(),
            "RPCs without a role decision in common/src/methods.rs ROLE_TABLE (and docs/auth.md): {missing:?}"
        );
        let stale: Vec<_> = ROLE_TABLE
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !methods.iter().any(|m| m == p))
            .collect();
        assert!(stale.is_empty(), "role table entries for no RPC: {stale:?}");
    }

    #[test]
    fn readers_never_mutate_and_runners_only_run() {
        for (path, access) in ROLE_TABLE {
            let method = path.rsplit('/').next().unwrap_or_default();
            let reads = ["Get", "List", "Verify", "Export", "Preview"]
                .iter()
                .any(|p| method.starts_with(p))
                && method != "VerifyNotificationConfiguration";
            if access.roles.contains(&Role::Reader) {
                assert!(reads, "{path} lets readers in but is not a read");
            }
            if access.roles.contains(&Role::Runner) {
                assert!(
                    path.starts_with("/ebb.lifecycle.v1.RunnerService/"),
                    "{path}"
                );
            }
            if access.roles.contains(&Role::Service) {
                assert!(
                    access.system_only,
                    "{path}: service tokens act across organizations"
                );
            }
            assert!(
                access.roles.contains(&Role::Admin),
                "{path}: admin is allowed everything"
            );
        }
    }
}
