//! Who or what caused a change (DESIGN "Rules for every RPC": structured actors).
//!
//! Every change runs in the scope of its actor ([`acting`]): the API caller's token, the
//! scheduler's task, replica and shard, the runner and its run, or the callback of a webhook
//! step. Every event the change writes — in the outbox, hence in the audit chain and in
//! notifications — names that actor by its id (`token:<id>`, `scheduler:<task>`,
//! `runner:<id>`, `callback:<step id>`, `reminder:<link id>`) and carries its details under the event data's
//! `actor` key; action runs record it too. Writes outside any scope (lifecycle's own
//! background work) keep the name their code gives.

use ebb_common::auth::Caller;
use serde_json::{Value as Json, json};

tokio::task_local! {
    static CURRENT: Actor;
}

/// A structured actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An API caller, by its token.
    Token {
        token_id: String,
        role: String,
        /// The token's description, as the token store gave it when the call was let in.
        description: String,
    },
    /// A scheduler task working one shard on one replica.
    Scheduler {
        task: String,
        shard: String,
        replica: String,
        token_id: String,
    },
    /// A runner, completing or claiming a run.
    Runner {
        runner_id: String,
        run_id: String,
        token_id: String,
    },
    /// The callback of a webhook step, authorized by its callback token.
    Callback { step_id: String },
    /// The snooze link of a reminder, opened in a browser (`via` `link`) or pressed as a Slack
    /// button (`via` `slack`, with the Slack user who pressed it).
    Reminder {
        link_id: String,
        workspace_id: String,
        via: String,
        slack_user: String,
    },
}

/// Metadata the scheduler sends with each call: the task, its shard and the replica.
pub const SCHEDULER_TASK_HEADER: &str = "x-ebb-scheduler-task";
/// See [`SCHEDULER_TASK_HEADER`].
pub const SCHEDULER_REPLICA_HEADER: &str = "x-ebb-scheduler-replica";

impl Actor {
    /// The actor of an API call: its token, or — for a service token that says so in its
    /// metadata — the scheduler task that made it.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let (token_id, role, description) = request
            .extensions()
            .get::<Caller>()
            .map(|c| {
                (
                    c.token_id.clone(),
                    c.role.as_str().to_owned(),
                    c.description.clone(),
                )
            })
            .unwrap_or_else(|| ("anonymous".to_owned(), String::new(), String::new()));
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(200).collect::<String>())
        };
        if role == "service"
            && let Some(task) = header(SCHEDULER_TASK_HEADER)
        {
            let (task, shard) = task
                .split_once('/')
                .map(|(t, s)| (t.to_owned(), s.to_owned()))
                .unwrap_or((task, String::new()));
            return Actor::Scheduler {
                task,
                shard,
                replica: header(SCHEDULER_REPLICA_HEADER).unwrap_or_default(),
                token_id,
            };
        }
        Actor::Token {
            token_id,
            role,
            description,
        }
    }

    /// The runner `runner_id` acting on `run_id` with the call's token.
    pub fn runner<T>(request: &tonic::Request<T>, runner_id: &str, run_id: &str) -> Self {
        let token_id = request
            .extensions()
            .get::<Caller>()
            .map(|c| c.token_id.clone())
            .unwrap_or_default();
        Actor::Runner {
            runner_id: runner_id.to_owned(),
            run_id: run_id.to_owned(),
            token_id,
        }
    }

    /// The organization the caller's token is bound to, if any: what keys its request ids.
    pub fn organization_of<T>(request: &tonic::Request<T>) -> String {
        request
            .extensions()
            .get::<Caller>()
            .and_then(|c| c.organization_id.clone())
            .unwrap_or_default()
    }

    /// The id events name it by.
    pub fn id(&self) -> String {
        match self {
            Actor::Token { token_id, .. } => format!("token:{token_id}"),
            Actor::Scheduler { task, .. } => format!("scheduler:{task}"),
            Actor::Runner { runner_id, .. } => format!("runner:{runner_id}"),
            Actor::Callback { step_id } => format!("callback:{step_id}"),
            Actor::Reminder { link_id, .. } => format!("reminder:{link_id}"),
        }
    }

    /// Its details, as events carry them.
    pub fn detail(&self) -> Json {
        match self {
            Actor::Token {
                token_id,
                role,
                description,
            } => json!({
                "kind": "token", "id": self.id(), "token_id": token_id, "role": role,
                "description": description,
            }),
            Actor::Scheduler {
                task,
                shard,
                replica,
                token_id,
            } => json!({
                "kind": "scheduler", "id": self.id(), "task": task, "shard": shard,
                "replica": replica, "token_id": token_id,
            }),
            Actor::Runner {
                runner_id,
                run_id,
                token_id,
            } => json!({
                "kind": "runner", "id": self.id(), "runner_id": runner_id, "run_id": run_id,
                "token_id": token_id,
            }),
            Actor::Callback { step_id } => json!({
                "kind": "callback", "id": self.id(), "step_id": step_id,
            }),
            Actor::Reminder {
                link_id,
                workspace_id,
                via,
                slack_user,
            } => json!({
                "kind": "reminder", "id": self.id(), "link_id": link_id,
                "workspace_id": workspace_id, "via": via, "slack_user": slack_user,
            }),
        }
    }
}

/// Runs `work` as `actor`: everything it writes names `actor`.
pub async fn acting<F: Future>(actor: Actor, work: F) -> F::Output {
    CURRENT.scope(actor, work).await
}

/// The actor in scope, if any.
pub fn current() -> Option<Actor> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The id to record for a change whose code names `fallback`: the actor in scope, else
/// `fallback`.
pub fn name_or(fallback: &str) -> String {
    current().map_or_else(|| fallback.to_owned(), |a| a.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_in_scope_name_the_scope_and_outside_keep_their_name() {
        assert_eq!(name_or("lifecycle"), "lifecycle");
        let actor = Actor::Callback {
            step_id: "s-1".into(),
        };
        let named = acting(actor.clone(), async { name_or("webhook") }).await;
        assert_eq!(named, "callback:s-1");
        assert_eq!(actor.detail()["kind"], "callback");
    }

    #[test]
    fn the_scheduler_is_named_by_its_task() {
        let a = Actor::Scheduler {
            task: "auto_destroy_check".into(),
            shard: "3".into(),
            replica: "r-1".into(),
            token_id: "service".into(),
        };
        assert_eq!(a.id(), "scheduler:auto_destroy_check");
        assert_eq!(a.detail()["replica"], "r-1");
    }
}
