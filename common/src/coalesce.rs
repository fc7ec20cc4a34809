//! Point reads that arrive together answered by one statement.
//!
//! A busy service gets many reads of single rows at once (GetWorkspace from a fleet of
//! callers). Each statement costs a round trip and a wake-up on both ends, more than reading
//! the row itself. A [`Coalescer`] runs at most `slots` statements at a time; a read that
//! arrives while they are all busy waits, and the next statement to start answers every read
//! waiting by then (up to [`MAX_BATCH`] ids). A read that finds a free slot starts its
//! statement at once, so a quiet service answers as before, with no timer and no added wait.
//!
//! Every read's statement starts after the read arrived, so it sees every change committed
//! before the call was made. Statements run in tasks of their own: a caller that goes away
//! (a cancelled call) takes nothing from the others. The ids of one statement are padded to a
//! power of two by repeating the last one, so a connection prepares at most a handful of
//! statement shapes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::{Error, Result};

/// Most ids one statement reads.
pub const MAX_BATCH: usize = 64;

const READS: &str = "ebb_coalesced_reads_total";
const STATEMENTS: &str = "ebb_coalesced_statements_total";

/// Describes the counters of every coalescer.
pub(crate) fn describe() {
    metrics::describe_counter!(READS, "Point reads asked of a coalescer, by kind.");
    metrics::describe_counter!(
        STATEMENTS,
        "Statements that answered them, by kind: under load, fewer than the reads."
    );
}

/// Reads the rows of some ids: those found, in any order, each with its id.
pub type Fetch<V> =
    Arc<dyn Fn(Vec<String>) -> BoxFuture<'static, Result<Vec<(String, V)>>> + Send + Sync>;

type Answer<V> = oneshot::Sender<Result<Option<V>>>;

/// Point reads of one kind of row, coalesced; cheap to clone.
pub struct Coalescer<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for Coalescer<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<V> {
    /// What is read, the `kind` label of the counters.
    kind: &'static str,
    fetch: Fetch<V>,
    slots: usize,
    state: Mutex<State<V>>,
}

struct State<V> {
    waiting: Vec<(String, Answer<V>)>,
    running: usize,
}

impl<V> Inner<V> {
    fn state(&self) -> std::sync::MutexGuard<'_, State<V>> {
        // A panic while holding the lock cannot leave the state half-changed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next reads to answer, up to [`MAX_BATCH`], oldest first.
    fn take(state: &mut State<V>) -> Vec<(String, Answer<V>)> {
        let n = state.waiting.len().min(MAX_BATCH);
        state.waiting.drain(..n).collect()
    }
}

impl<V> std::fmt::Debug for Coalescer<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state();
        f.debug_struct("Coalescer")
            .field("slots", &self.inner.slots)
            .field("running", &state.running)
            .field("waiting", &state.waiting.len())
            .finish()
    }
}

impl<V: Clone + Send + 'static> Coalescer<V> {
    /// Reads of `kind` (the label of `ebb_coalesced_reads_total` and
    /// `ebb_coalesced_statements_total`) through `fetch`, at most `slots` (at least 1)
    /// statements at a time.
    pub fn new(kind: &'static str, slots: usize, fetch: Fetch<V>) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                fetch,
                slots: slots.max(1),
                state: Mutex::new(State {
                    waiting: Vec::new(),
                    running: 0,
                }),
            }),
        }
    }

    /// The row of `id`, or `None` when there is none; the error of the statement that read it
    /// otherwise.
    pub async fn get(&self, id: &str) -> Result<Option<V>> {
        metrics::counter!(READS, "kind" => self.inner.kind).increment(1);
        let (answer, answered) = oneshot::channel();
        let batch = {
            let mut state = self.inner.state();
            state.waiting.push((id.to_owned(), answer));
            if state.running < self.inner.slots {
                state.running += 1;
                Some(Inner::take(&mut state))
            } else {
                None
            }
        };
        if let Some(batch) = batch {
            tokio::spawn(run(self.inner.clone(), batch));
        }
        answered
            .await
            .map_err(|_| Error::Unavailable("the read stopped before it answered".into()))?
    }
}

/// A slot taken: given back however the statements' task ends. A task that ends by a panic
/// hands its slot to a new task for the reads still waiting, so they never wait for another
/// read to arrive.
struct Slot<V: Clone + Send + 'static> {
    inner: Arc<Inner<V>>,
    held: bool,
}

impl<V: Clone + Send + 'static> Drop for Slot<V> {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let batch = {
            let mut state = self.inner.state();
            if state.waiting.is_empty() {
                state.running -= 1;
                return;
            }
            Inner::take(&mut state)
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(run(self.inner.clone(), batch));
        }
    }
}

/// Answers `batch`, then every batch waiting by the time it is done, then gives back its slot.
async fn run<V: Clone + Send + 'static>(inner: Arc<Inner<V>>, mut batch: Vec<(String, Answer<V>)>) {
    let mut slot = Slot { inner, held: true };
    loop {
        metrics::counter!(STATEMENTS, "kind" => slot.inner.kind).increment(1);
        answer(&slot.inner.fetch, batch).await;
        let mut state = slot.inner.state();
        if state.waiting.is_empty() {
            // The slot is given back under the same lock that saw nothing waiting, so a read
            // arriving now finds it free.
            state.running -= 1;
            slot.held = false;
            return;
        }
        batch = Inner::take(&mut state);
    }
}

/// One statement for the ids of `batch`, each read answered from its rows.
async fn answer<V: Clone>(fetch: &Fetch<V>, batch: Vec<(String, Answer<V>)>) {
    let mut ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    let shape = ids.len().next_power_of_two();
    if let Some(last) = ids.last().cloned() {
        ids.resize(shape, last);
    }
    match fetch(ids).await {
        Ok(rows) => {
            let rows: HashMap<String, V> = rows.into_iter().collect();
            for (id, answer) in batch {
                // The caller may have gone away; nothing is lost then.
                let _ = answer.send(Ok(rows.get(&id).cloned()));
            }
        }
        Err(e) => {
            for (_, answer) in batch {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::Semaphore;

    /// A fetch that records the ids of each statement and waits for a permit of `gate` before
    /// answering: rows exist for ids starting with `w`, and the id `boom` fails the statement.
    fn gated(gate: Arc<Semaphore>, seen: Arc<Mutex<Vec<Vec<String>>>>) -> Fetch<String> {
        Arc::new(move |ids: Vec<String>| {
            let (gate, seen) = (gate.clone(), seen.clone());
            Box::pin(async move {
                seen.lock().expect("seen").push(ids.clone());
                gate.acquire().await.expect("gate").forget();
                if ids.iter().any(|id| id == "boom") {
                    return Err(Error::Unavailable("database unavailable".into()));
                }
                if ids.iter().any(|id| id == "panic") {
                    panic!("the statement panicked");
                }
                Ok(ids
                    .into_iter()
                    .filter(|id| id.starts_with('w'))
                    .map(|id| (id.clone(), format!("row of {id}")))
                    .collect())
            })
        })
    }

    /// Waits up to a second for `done`; panics naming `what` otherwise.
    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("never: {what}");
    }

    /// Waits until `n` reads are waiting for a slot.
    async fn until_waiting(c: &Coalescer<String>, n: usize) {
        until(&format!("{n} reads waiting"), || {
            c.inner.state().waiting.len() == n
        })
        .await;
    }

    /// Waits until `n` statements have started.
    async fn until_started(seen: &Mutex<Vec<Vec<String>>>, n: usize) {
        until(&format!("{n} statements started"), || {
            seen.lock().expect("seen").len() == n
        })
        .await;
    }

    fn spawn_get(
        c: &Coalescer<String>,
        id: &str,
    ) -> tokio::task::JoinHandle<Result<Option<String>>> {
        let (c, id) = (c.clone(), id.to_owned());
        tokio::spawn(async move { c.get(&id).await })
    }

    /// A coalescer of one slot, busy with a read of `w1` until `gate` lets it answer.
    struct Busy {
        c: Coalescer<String>,
        gate: Arc<Semaphore>,
        seen: Arc<Mutex<Vec<Vec<String>>>>,
        first: tokio::task::JoinHandle<Result<Option<String>>>,
    }

    async fn busy() -> Busy {
        busy_with("w1").await
    }

    /// A coalescer of one slot, busy with a read of `first` until `gate` lets it answer.
    async fn busy_with(first: &str) -> Busy {
        let (gate, seen) = (Arc::new(Semaphore::new(0)), Arc::default());
        let c = Coalescer::new("test", 1, gated(Arc::clone(&gate), Arc::clone(&seen)));
        let first = spawn_get(&c, first);
        until_started(&seen, 1).await;
        Busy {
            c,
            gate,
            seen,
            first,
        }
    }

    #[tokio::test]
    async fn reads_arriving_while_the_slots_are_busy_share_one_statement() {
        let Busy {
            c,
            gate,
            seen,
            first,
        } = busy().await;
        let later: Vec<_> = ["w2", "w3", "x9", "w2"]
            .iter()
            .map(|id| spawn_get(&c, id))
            .collect();
        until_waiting(&c, 4).await;
        gate.add_permits(2);
        assert_eq!(
            first.await.expect("task").expect("read"),
            Some("row of w1".into())
        );
        let answers: Vec<_> = futures::future::join_all(later)
            .await
            .into_iter()
            .map(|r| r.expect("task").expect("read"))
            .collect();
        assert_eq!(
            answers,
            [
                Some("row of w2".into()),
                Some("row of w3".into()),
                None,
                Some("row of w2".into())
            ]
        );
        let seen = seen.lock().expect("seen").clone();
        // Three distinct ids, padded to four with the last.
        assert_eq!(seen, [vec!["w1"], vec!["w2", "w3", "x9", "x9"]]);
        assert_eq!(c.inner.state().running, 0, "the slot is given back");
    }

    #[tokio::test]
    async fn a_quiet_coalescer_reads_at_once_on_a_free_slot() {
        let (gate, seen) = (Arc::new(Semaphore::new(10)), Arc::default());
        let c = Coalescer::new("test", 2, gated(gate, Arc::clone(&seen)));
        for id in ["w1", "w2", "w3"] {
            assert_eq!(c.get(id).await.expect("read"), Some(format!("row of {id}")));
        }
        assert_eq!(
            seen.lock().expect("seen").len(),
            3,
            "one statement per read"
        );
    }

    #[tokio::test]
    async fn a_failed_statement_fails_each_of_its_reads_and_frees_its_slot() {
        let Busy {
            c,
            gate,
            seen: _,
            first,
        } = busy().await;
        let failing = [spawn_get(&c, "boom"), spawn_get(&c, "w2")];
        until_waiting(&c, 2).await;
        gate.add_permits(3);
        assert!(first.await.expect("task").is_ok());
        for read in failing {
            let err = read.await.expect("task").expect_err("the statement failed");
            assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        }
        let next = tokio::time::timeout(Duration::from_secs(5), c.get("w3"))
            .await
            .expect("the slot is free again");
        assert_eq!(next.expect("read"), Some("row of w3".into()));
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_takes_nothing_from_the_others() {
        let Busy {
            c,
            gate,
            seen: _,
            first,
        } = busy().await;
        let leaving = spawn_get(&c, "w2");
        let staying = spawn_get(&c, "w3");
        until_waiting(&c, 2).await;
        first.abort();
        leaving.abort();
        gate.add_permits(2);
        assert_eq!(
            staying.await.expect("task").expect("read"),
            Some("row of w3".into())
        );
    }

    #[tokio::test]
    async fn a_panicking_statement_gives_its_slot_back() {
        let (gate, seen) = (Arc::new(Semaphore::new(1)), Arc::default());
        let c = Coalescer::new("test", 1, gated(gate.clone(), seen));
        let err = c.get("panic").await.expect_err("the statement panicked");
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        gate.add_permits(1);
        let next = tokio::time::timeout(Duration::from_secs(5), c.get("w1"))
            .await
            .expect("the slot is free again");
        assert_eq!(next.expect("read"), Some("row of w1".into()));
    }

    #[tokio::test]
    async fn reads_waiting_behind_a_panicking_statement_are_answered_without_another_read() {
        let Busy {
            c,
            gate,
            seen,
            first,
        } = busy_with("panic").await;
        let waiting = spawn_get(&c, "w2");
        until_waiting(&c, 1).await;
        gate.add_permits(2);
        let err = first
            .await
            .expect("task")
            .expect_err("the statement panicked");
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        let answered = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("answered with no other read arriving")
            .expect("task");
        assert_eq!(answered.expect("read"), Some("row of w2".into()));
        assert_eq!(seen.lock().expect("seen").len(), 2);
    }
}
