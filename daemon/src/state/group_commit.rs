//! Group commit: callers on many threads hand in items, and one of them at a time runs a
//! batch of everything waiting, so work that costs the same for one item or many (an fsync)
//! is paid once per batch. There is no thread of its own and no timer: the caller that finds
//! nobody committing commits the waiting items (its own among them) and everyone who arrived
//! meanwhile waits for the next batch, which the first of them runs. With one caller at a
//! time every batch holds one item and nothing waits.
//!
//! Bounded: a batch holds at most `batch_max` items; the rest wait for the next one. A batch
//! that panics gives its other items `Abandoned` (their callers are not left waiting) and
//! lets the next batch run.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// The batch an item was in ended without an output for it (it panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batch this item was committed in failed unexpectedly")]
pub struct Abandoned;

struct Queue<I, O> {
    waiting: VecDeque<(u64, I)>,
    done: HashMap<u64, Result<O, Abandoned>>,
    next_ticket: u64,
    committing: bool,
}

pub struct GroupCommit<I, O> {
    queue: Mutex<Queue<I, O>>,
    finished: Condvar,
    batch_max: usize,
}

impl<I, O> GroupCommit<I, O> {
    pub fn new(batch_max: usize) -> Self {
        assert!(batch_max > 0, "a batch holds at least one item");
        GroupCommit {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                done: HashMap::new(),
                next_ticket: 0,
                committing: false,
            }),
            finished: Condvar::new(),
            batch_max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue<I, O>> {
        // Every update of the queue completes before the lock is released.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Items waiting for a batch (not those of the batch running).
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Hands `item` in and returns its output, once a batch with it has run. `run` gets the
    /// items of a batch in the order they came and returns one output per item, in order.
    pub fn submit(&self, item: I, run: impl Fn(Vec<I>) -> Vec<O>) -> Result<O, Abandoned> {
        let mut queue = self.lock();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push_back((ticket, item));
        loop {
            if let Some(output) = queue.done.remove(&ticket) {
                return output;
            }
            if queue.committing {
                queue = self
                    .finished
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            queue.committing = true;
            let count = queue.waiting.len().min(self.batch_max);
            let (tickets, items): (Vec<u64>, Vec<I>) = queue.waiting.drain(..count).unzip();
            drop(queue);
            let mut batch = Batch {
                group: self,
                tickets,
                outputs: None,
            };
            let outputs = run(items);
            assert_eq!(
                outputs.len(),
                batch.tickets.len(),
                "a batch returns one output per item"
            );
            batch.outputs = Some(outputs);
            drop(batch);
            queue = self.lock();
        }
    }
}

/// A running batch: on drop, hands out its outputs (or `Abandoned`, when it panicked) and
/// lets the next batch run.
struct Batch<'a, I, O> {
    group: &'a GroupCommit<I, O>,
    tickets: Vec<u64>,
    outputs: Option<Vec<O>>,
}

impl<I, O> Drop for Batch<'_, I, O> {
    fn drop(&mut self) {
        let mut queue = self.group.lock();
        let tickets = std::mem::take(&mut self.tickets);
        match self.outputs.take() {
            Some(outputs) => {
                for (ticket, output) in tickets.into_iter().zip(outputs) {
                    queue.done.insert(ticket, Ok(output));
                }
            }
            None => {
                for ticket in tickets {
                    queue.done.insert(ticket, Err(Abandoned));
                }
            }
        }
        queue.committing = false;
        drop(queue);
        self.group.finished.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_caller_at_a_time_gets_batches_of_one() {
        let group = GroupCommit::new(8);
        let batches = AtomicUsize::new(0);
        for item in 0..5u32 {
            let output = group.submit(item, |items| {
                batches.fetch_add(1, Ordering::SeqCst);
                assert_eq!(items.len(), 1);
                items.into_iter().map(|item| item * 10).collect()
            });
            assert_eq!(output, Ok(item * 10));
        }
        assert_eq!(batches.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn concurrent_callers_share_batches_each_gets_its_own_output_and_batches_are_bounded() {
        let group = Arc::new(GroupCommit::new(4));
        let batches = Arc::new(AtomicUsize::new(0));
        let largest = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..32u32)
            .map(|item| {
                let (group, batches, largest) = (group.clone(), batches.clone(), largest.clone());
                std::thread::spawn(move || {
                    group.submit(item, |items| {
                        batches.fetch_add(1, Ordering::SeqCst);
                        largest.fetch_max(items.len(), Ordering::SeqCst);
                        // An fsync's worth of time, so that others arrive meanwhile.
                        std::thread::sleep(Duration::from_millis(5));
                        items.into_iter().map(|item| item + 1000).collect()
                    })
                })
            })
            .collect();
        for (item, caller) in callers.into_iter().enumerate() {
            assert_eq!(caller.join().unwrap(), Ok(item as u32 + 1000));
        }
        let batches = batches.load(Ordering::SeqCst);
        assert!(batches < 32, "no batch held two items ({batches} batches)");
        assert!(batches >= 8, "a batch held more than batch_max items");
        assert!(largest.load(Ordering::SeqCst) <= 4);
    }

    #[test]
    fn a_panicking_batch_abandons_its_items_and_the_next_batch_runs() {
        let group = Arc::new(GroupCommit::new(16));
        let started = Arc::new(std::sync::Barrier::new(2));
        // The first caller's batch waits until the second caller has queued, then panics.
        let first = {
            let (group, started) = (group.clone(), started.clone());
            std::thread::spawn(move || {
                group.submit(1u32, |_| {
                    started.wait();
                    std::thread::sleep(Duration::from_millis(50));
                    panic!("a bug in a batch");
                })
            })
        };
        started.wait();
        let second = group.submit(2u32, |items| items);
        assert_eq!(second, Ok(2), "the next batch ran after the panic");
        assert!(first.join().is_err(), "the panic reached its own caller");
        // Nothing is left committing.
        assert_eq!(group.submit(3u32, |items| items), Ok(3));
    }
}
