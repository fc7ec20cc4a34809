//! The due scan: what has fallen due in one shard, in due order, one fire key each. Its cost
//! grows with the number due, not with the size of the table (AD-5).

use ebb_common::Result;
use ebb_common::time::EpochMs;
use sea_orm::{ConnectionTrait, FromQueryResult};

use super::Timeline;
use crate::store::query_all;

/// The identity of one firing: a subject (workspace or scheduled action) and the due time it
/// fires for. The database keeps one run (or action run) per fire key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FireKey {
    pub subject_id: String,
    pub due_at: EpochMs,
}

/// Due subjects of one shard in due order, after `after`.
pub async fn find_due(
    conn: &impl ConnectionTrait,
    timeline: &Timeline,
    shard: i32,
    shard_count: i32,
    limit: u64,
    after: Option<FireKey>,
    now: EpochMs,
) -> Result<Vec<FireKey>> {
    scan(conn, timeline, (shard, shard_count), limit, after, now).await
}

async fn scan(
    conn: &impl ConnectionTrait,
    timeline: &Timeline,
    (shard, shard_count): (i32, i32),
    limit: u64,
    after: Option<FireKey>,
    now: EpochMs,
) -> Result<Vec<FireKey>> {
    #[derive(FromQueryResult)]
    struct Due {
        id: String,
        due_at: i64,
    }
    let (after_due, after_id) = after
        .map(|k| (k.due_at, k.subject_id))
        .unwrap_or((i64::MIN, String::new()));
    let (table, live) = (timeline.table, timeline.live);
    let mut keys = Vec::new();
    for due in timeline.due_columns {
        let rows: Vec<Due> = query_all(
            conn,
            &format!(
                "SELECT id, {due} AS due_at FROM {table} \
                 WHERE {}{live} ORDER BY {due}, id LIMIT {limit}",
                range_condition(due, "")
            ),
            range_values((shard, shard_count), (after_due, after_id.clone()), now),
        )
        .await?;
        keys.extend(rows.into_iter().map(|r| FireKey {
            subject_id: r.id,
            due_at: r.due_at,
        }));
    }
    keys.sort_by(|a, b| (a.due_at, &a.subject_id).cmp(&(b.due_at, &b.subject_id)));
    keys.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(keys)
}

/// The rows of one shard due by `now` in column `due` after a position, over parameters `$1` to
/// `$5` ([`range_values`]); `prefix` qualifies the columns (`"w."`, or nothing).
pub(crate) fn range_condition(due: &str, prefix: &str) -> String {
    format!(
        "{prefix}{due} <= $1 AND {prefix}shard_key % $2 = $3 \
         AND ({prefix}{due} > $4 OR ({prefix}{due} = $4 AND {prefix}id > $5))"
    )
}

/// The values of [`range_condition`]: `now`, the shard and the position `(due, id)` to start
/// after.
pub(crate) fn range_values(
    (shard, shard_count): (i32, i32),
    (after_due, after_id): (EpochMs, String),
    now: EpochMs,
) -> [sea_orm::Value; 5] {
    [
        now.into(),
        shard_count.into(),
        shard.into(),
        after_due.into(),
        after_id.into(),
    ]
}
