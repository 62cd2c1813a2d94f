//! [`Verifier`]: argon2 work on a bounded pool of threads, awaitable from
//! async code without blocking the executor and without depending on a
//! particular runtime.
//!
//! Why our own pool rather than `spawn_blocking`: the bound matters more
//! than the mechanism. Each argon2 verification holds 19 MiB and a core for
//! tens of milliseconds; a login flood must queue (and past the queue, be
//! refused with [`AuthError::Busy`]) instead of spawning a thread per
//! attempt. A fixed pool with a bounded queue gives exactly that, and keeps
//! this crate free of tokio until the broker needs it.

use std::future::Future;
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::store::{Prepared, SlowCheck, UserStore};
use super::{AuthError, Role};
use crate::{Error, Result};

type Answer = std::result::Result<Role, AuthError>;

/// Verifies logins against a [`UserStore`], running argon2 on at most
/// `threads` threads with at most `queue` waiting. Cheap to clone.
///
/// Dropping the last clone (or [`shutdown`](Self::shutdown)) waits for the
/// queued verifications to finish, so do that at server shutdown rather
/// than on an executor thread in the middle of serving.
#[derive(Debug, Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<UserStore>,
    /// `None` after [`Verifier::shutdown`]; dropping the sender is what
    /// tells the workers to exit.
    jobs: Mutex<Option<SyncSender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

struct Job {
    check: SlowCheck,
    password: String,
    reply: ReplyTx,
}

impl Verifier {
    /// One worker per available core, and a queue of 64 per worker (a few
    /// seconds of work at most, so a queued client does not time out).
    pub fn new(store: Arc<UserStore>) -> Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::with_limits(store, threads, 64 * threads)
    }

    /// `threads` argon2 workers (at least 1) and at most `queue` waiting
    /// verifications (at least 1).
    pub fn with_limits(store: Arc<UserStore>, threads: usize, queue: usize) -> Result<Self> {
        let (tx, rx) = sync_channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let store = Arc::clone(&store);
            let rx = Arc::clone(&rx);
            let handle = std::thread::Builder::new()
                .name(format!("wattson-auth-{i}"))
                .spawn(move || worker(&store, &rx))
                .map_err(|source| Error::Io {
                    path: "(spawning an auth worker thread)".into(),
                    source,
                })?;
            workers.push(handle);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                jobs: Mutex::new(Some(tx)),
                workers: Mutex::new(workers),
            }),
        })
    }

    /// The store this verifier checks against.
    pub fn store(&self) -> &Arc<UserStore> {
        &self.inner.store
    }

    /// Starts a verification and returns a future of its answer, as
    /// [`UserStore::verify`] would give it. Throttling, lockout and device
    /// secrets are decided right here (microseconds); a person's password
    /// goes to the pool. Awaiting never blocks a thread; the future works on
    /// any executor.
    pub fn verify_async(&self, name: &str, password: &str, source: Option<IpAddr>) -> VerifyFuture {
        let check = match self.inner.store.prepare(name, password, source) {
            Prepared::Done(answer) => return VerifyFuture::ready(answer),
            Prepared::Slow(check) => check,
        };
        let (reply, rx) = reply_channel();
        let job = Job {
            check,
            password: password.to_owned(),
            reply,
        };
        let sent = match self.inner.jobs.lock().as_ref() {
            Some(tx) => tx.try_send(job),
            None => return VerifyFuture::ready(Err(AuthError::Unavailable)),
        };
        match sent {
            Ok(()) => VerifyFuture {
                state: State::Waiting(rx),
            },
            Err(TrySendError::Full(_)) => {
                tracing::warn!("auth queue full; refusing a login");
                VerifyFuture::ready(Err(AuthError::Busy))
            }
            Err(TrySendError::Disconnected(_)) => VerifyFuture::ready(Err(AuthError::Unavailable)),
        }
    }

    /// The same, waiting on the calling thread. For the CLI and tests; never
    /// call it on an async executor thread.
    pub fn verify_blocking(&self, name: &str, password: &str, source: Option<IpAddr>) -> Answer {
        self.verify_async(name, password, source).wait()
    }

    /// Stops accepting work, lets queued verifications finish, and joins the
    /// workers. Later calls answer [`AuthError::Unavailable`].
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

impl Inner {
    fn shutdown(&self) {
        drop(self.jobs.lock().take());
        for handle in self.workers.lock().drain(..) {
            if handle.join().is_err() {
                tracing::error!("an auth worker thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker(store: &UserStore, jobs: &Mutex<Receiver<Job>>) {
    loop {
        // Only one idle worker waits in `recv` at a time; the others wait
        // for the lock. Either way they sleep.
        let next = jobs.lock().recv();
        let Ok(job) = next else { return };
        let Job {
            check,
            password,
            reply,
        } = job;
        // A panic here would be a bug in argon2 or in us; the client gets
        // `Unavailable` (the reply is dropped) and the worker lives on.
        match catch_unwind(AssertUnwindSafe(|| store.finish(check, &password))) {
            Ok(answer) => reply.send(answer),
            Err(_) => tracing::error!("auth verification panicked"),
        }
    }
}

/// The answer of [`Verifier::verify_async`].
#[derive(Debug)]
#[must_use = "a verification does nothing useful unless its answer is read"]
pub struct VerifyFuture {
    state: State,
}

#[derive(Debug)]
enum State {
    Ready(Option<Answer>),
    Waiting(ReplyRx),
}

impl VerifyFuture {
    fn ready(answer: Answer) -> Self {
        Self {
            state: State::Ready(Some(answer)),
        }
    }

    /// Blocks the calling thread until the answer is there.
    pub fn wait(self) -> Answer {
        match self.state {
            State::Ready(answer) => answer.unwrap_or(Err(AuthError::Unavailable)),
            State::Waiting(rx) => rx.wait(),
        }
    }
}

impl Future for VerifyFuture {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match &mut self.get_mut().state {
            // Polled again after completion: answer Unavailable, never panic.
            State::Ready(answer) => {
                Poll::Ready(answer.take().unwrap_or(Err(AuthError::Unavailable)))
            }
            State::Waiting(rx) => rx.poll(cx.waker()),
        }
    }
}

/// A one-shot reply slot shared by a worker and a waiting future or thread.
#[derive(Debug, Default)]
struct Slot {
    answer: Option<Answer>,
    /// Set when the sender is gone, with or without an answer.
    closed: bool,
    waker: Option<Waker>,
}

#[derive(Debug, Default)]
struct Shared {
    slot: Mutex<Slot>,
    filled: Condvar,
}

struct ReplyTx(Arc<Shared>);

#[derive(Debug)]
struct ReplyRx(Arc<Shared>);

fn reply_channel() -> (ReplyTx, ReplyRx) {
    let shared = Arc::new(Shared::default());
    (ReplyTx(Arc::clone(&shared)), ReplyRx(shared))
}

impl ReplyTx {
    fn send(self, answer: Answer) {
        self.0.slot.lock().answer = Some(answer);
        // Drop closes the slot and wakes the receiver.
    }
}

impl Drop for ReplyTx {
    fn drop(&mut self) {
        let waker = {
            let mut slot = self.0.slot.lock();
            slot.closed = true;
            slot.waker.take()
        };
        self.0.filled.notify_all();
        // Wake outside the lock: a waker may run the task inline.
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl ReplyRx {
    fn poll(&self, waker: &Waker) -> Poll<Answer> {
        let mut slot = self.0.slot.lock();
        if slot.closed {
            return Poll::Ready(slot.answer.take().unwrap_or(Err(AuthError::Unavailable)));
        }
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            slot.waker = Some(waker.clone());
        }
        Poll::Pending
    }

    fn wait(self) -> Answer {
        let mut slot = self.0.slot.lock();
        while !slot.closed {
            self.0.filled.wait(&mut slot);
        }
        slot.answer.take().unwrap_or(Err(AuthError::Unavailable))
    }
}
