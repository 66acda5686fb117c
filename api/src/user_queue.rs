//! One write per user at a time on this instance.
//!
//! Every write of a user's sessions takes that user's row lock first (see
//! `service::sessions`), so the database runs them one after another anyway. Queueing them here
//! as well means they wait in memory, not on a pooled connection: however many requests one
//! user sends, or however long someone holds their row, they occupy one connection of this
//! instance and the rest of the pool keeps serving everyone else. The wait is bounded like a
//! lock wait in the database, and answered the same way (503 `busy`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Mutex as Turnstile, OwnedMutexGuard};

use crate::error::ApiError;

#[derive(Clone, Default)]
pub struct UserQueue {
    waiting: Arc<Mutex<HashMap<i64, Arc<Turnstile<()>>>>>,
}

/// The caller's turn; the next write of the same user starts when it is dropped.
pub struct Turn {
    queue: UserQueue,
    user_id: i64,
    guard: Option<OwnedMutexGuard<()>>,
}

impl UserQueue {
    /// Waits at most `wait` for `user_id`'s earlier writes on this instance to finish.
    pub async fn turn(&self, user_id: i64, wait: Duration) -> Result<Turn, ApiError> {
        let turnstile = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(waiting.entry(user_id).or_default())
        };
        let mut turn = Turn {
            queue: self.clone(),
            user_id,
            guard: None,
        };
        match tokio::time::timeout(wait, turnstile.lock_owned()).await {
            Ok(guard) => {
                turn.guard = Some(guard);
                Ok(turn)
            }
            // Dropping `turn` forgets the user if nobody else waits.
            Err(_) => Err(ApiError::Busy(None)),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut waiting = self
            .queue
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only the map holds it: no one is waiting or writing. Every party lets go of its
        // clone (its guard here; its lock future when its wait ends, times out or is
        // cancelled) before it gets here, so whoever checks last removes the entry: the map
        // empties once every request has finished (tests below: timeouts, cancellations).
        if waiting
            .get(&self.user_id)
            .is_some_and(|turnstile| Arc::strong_count(turnstile) == 1)
        {
            waiting.remove(&self.user_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_turn_per_user_and_nothing_left_behind() {
        let queue = UserQueue::default();
        let wait = Duration::from_millis(50);
        let first = queue.turn(1, wait).await.expect("first turn");
        let other_user = queue
            .turn(2, wait)
            .await
            .expect("another user is not queued");
        assert!(matches!(
            queue.turn(1, wait).await,
            Err(ApiError::Busy(None))
        ));
        drop(first);
        let again = queue
            .turn(1, wait)
            .await
            .expect("turn after the first ended");
        drop((again, other_user));
        assert!(queue.waiting.lock().unwrap().is_empty());
    }

    fn entries(queue: &UserQueue) -> usize {
        queue.waiting.lock().unwrap().len()
    }

    /// A write that gives up waiting (its own timeout) leaves no entry once the holder ends.
    #[tokio::test]
    async fn timed_out_waits_leave_nothing_behind() {
        let queue = UserQueue::default();
        let holder = queue.turn(1, Duration::from_millis(50)).await.unwrap();
        for _ in 0..3 {
            assert!(matches!(
                queue.turn(1, Duration::from_millis(10)).await,
                Err(ApiError::Busy(None))
            ));
        }
        assert_eq!(entries(&queue), 1);
        drop(holder);
        assert_eq!(entries(&queue), 0);
    }

    /// A request dropped while it waits (the request timeout, a client that hangs up) leaves
    /// no entry, whoever ends last.
    #[tokio::test]
    async fn cancelled_waits_leave_nothing_behind() {
        let queue = UserQueue::default();
        // The waiter is cancelled while the holder still holds.
        let holder = queue.turn(1, Duration::from_secs(1)).await.unwrap();
        let cancelled = tokio::time::timeout(
            Duration::from_millis(10),
            queue.turn(1, Duration::from_secs(60)),
        )
        .await;
        assert!(cancelled.is_err());
        drop(holder);
        assert_eq!(entries(&queue), 0);

        // The waiter is cancelled after the holder ended, before it ran again: it is the last.
        let holder = queue.turn(2, Duration::from_secs(1)).await.unwrap();
        let mut waiter = Box::pin(queue.turn(2, Duration::from_secs(60)));
        assert!(futures_poll_once(waiter.as_mut()).await.is_none());
        drop(holder);
        drop(waiter);
        assert_eq!(entries(&queue), 0);

        // Many users, each with waiters that time out or are cancelled: nothing stays.
        let mut tasks = Vec::new();
        for user in 10..20 {
            for _ in 0..4 {
                let queue = queue.clone();
                tasks.push(tokio::spawn(async move {
                    let turn = queue.turn(user, Duration::from_millis(5)).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    drop(turn);
                }));
            }
        }
        for task in &tasks[..10] {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        assert_eq!(entries(&queue), 0);
    }

    /// Polls `future` once: `Some` if it finished.
    async fn futures_poll_once<F: Future + Unpin>(future: F) -> Option<F::Output> {
        let mut future = future;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
                std::task::Poll::Ready(output) => Some(output),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
