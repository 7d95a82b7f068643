//! A gate a decision's `decide` can wait at until the test opens it: deterministic interleavings
//! without sleeps.
//!
//! `decide` is synchronous and runs on its command actor's tokio task, so the wait goes through
//! `tokio::task::block_in_place` (the worker hands its other tasks to another thread while it
//! blocks). Tests using a gate must run on a multi-thread runtime.
#![allow(dead_code)] // each test binary uses part of it

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::Poll;

use tokio::sync::watch;

pub struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    /// How many times `pass` was entered.
    arrivals: watch::Sender<usize>,
}

impl Gate {
    /// A closed gate.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(false),
            opened: Condvar::new(),
            arrivals: watch::Sender::new(0),
        })
    }

    /// Called from `decide`: counts the arrival, then blocks until the gate is open (at once
    /// when it already is).
    pub fn pass(&self) {
        self.arrivals.send_modify(|n| *n += 1);
        if *self.open.lock().expect("gate") {
            return;
        }
        tokio::task::block_in_place(|| {
            let mut open = self.open.lock().expect("gate");
            while !*open {
                open = self.opened.wait(open).expect("gate");
            }
        });
    }

    /// Opens the gate for good: waiting and later callers pass.
    pub fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.opened.notify_all();
    }

    /// Waits until `pass` has been entered at least `n` times.
    pub async fn arrived(&self, n: usize) {
        self.arrivals
            .subscribe()
            .wait_for(|a| *a >= n)
            .await
            .expect("the gate lives as long as the test");
    }

    /// How many times `pass` was entered.
    pub fn arrivals(&self) -> usize {
        *self.arrivals.borrow()
    }
}

/// A submitted future, with its output if it is already done.
pub type Polled<F> = (Pin<Box<F>>, Option<<F as Future>::Output>);

/// Polls each future exactly once, in order, within one poll of the calling task: a runtime's
/// `execute` submits its command on its first poll, so afterwards every command has been
/// submitted (and those refused at once are answered). Returns the futures with the outputs of
/// those already done; finish them with [`finish`].
pub async fn poll_each_once<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<Polled<F>> {
    let mut polled: Vec<Polled<F>> = futures.into_iter().map(|f| (Box::pin(f), None)).collect();
    std::future::poll_fn(|cx| {
        for (future, output) in &mut polled {
            if let Poll::Ready(o) = future.as_mut().poll(cx) {
                *output = Some(o);
            }
        }
        Poll::Ready(())
    })
    .await;
    polled
}

/// Drives the futures [`poll_each_once`] left pending to completion, concurrently; outputs in
/// the original order.
pub async fn finish<F: Future>(polled: Vec<Polled<F>>) -> Vec<F::Output> {
    futures::future::join_all(polled.into_iter().map(|(future, output)| async move {
        match output {
            Some(o) => o,
            None => future.await,
        }
    }))
    .await
}
