//! The device thread: the one thread that touches the model's device. It loads the model
//! and then serves jobs from a bounded channel of one, so the service can stage the next
//! batch while the current one runs.
//!
//! A pass that panics, or that leaves the device in a sticky error, ends the thread: the
//! device is not trusted after either, so the job (and every later one) fails with
//! [`EngineError::DeviceLost`], which the service treats as fatal for the worker. The thread
//! stamps when each pass starts ([`DeviceHandle::pass_in_progress`]) so the service can
//! tell a hung device from a busy one: a stuck thread cannot be killed, only left behind.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::subjects::Task;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{self, DeviceModel, EngineError, EngineInfo, EngineOptions, Output, Work};

/// What the test-only fault hook does to the device thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultAction {
    /// Abort the whole process (as a segfault in a kernel would).
    Abort,
    /// Panic on the device thread (as a bug in the forward pass would).
    Panic,
    /// Never finish the pass (as a hung device would).
    Hang,
    /// Make the device fault, as a broken kernel or the hardware would: CUDA launches a
    /// kernel that traps, leaving the context in a sticky error the pass then meets. The
    /// CPU backend has no device to fault: there the pass panics saying so.
    #[serde(rename = "device_fault")]
    DeviceFault,
}

/// A test-only fault: the device thread does `action` when a batch holds `token_id`, so
/// tests can make a real worker process crash, panic or hang on chosen inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultHook {
    /// The token id that sets it off.
    pub token_id: u32,
    /// What it does.
    pub action: FaultAction,
}

impl FaultHook {
    /// Does the fault when `token_ids` hold the hook's token (`model`'s device faults for
    /// [`FaultAction::DeviceFault`]).
    fn strike(&self, token_ids: &[u32], model: &dyn DeviceModel) {
        if !token_ids.contains(&self.token_id) {
            return;
        }
        tracing::warn!(
            token_id = self.token_id,
            action = ?self.action,
            "fault hook struck (a test-only setting)"
        );
        match self.action {
            FaultAction::Abort => std::process::abort(),
            FaultAction::Panic => panic!("fault hook: a batch holds token {}", self.token_id),
            FaultAction::Hang => loop {
                std::thread::park();
            },
            FaultAction::DeviceFault => {
                if let Err(why) = model.provoke_fault() {
                    panic!("fault hook: {why}");
                }
            }
        }
    }
}

/// When the device thread started its current pass, over how many tokens, and which pass
/// it was.
#[derive(Debug)]
struct PassClock {
    /// What `started` counts from.
    epoch: Instant,
    /// Microseconds from `epoch` to the start of the pass in progress, plus one; 0 when no
    /// pass runs.
    started: AtomicU64,
    /// Tokens of the pass in progress.
    tokens: AtomicUsize,
    /// Id of the last pass started (0: none yet).
    last: AtomicU64,
}

impl PassClock {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            started: AtomicU64::new(0),
            tokens: AtomicUsize::new(0),
            last: AtomicU64::new(0),
        }
    }

    /// Stamps the start of pass `pass` over `tokens`.
    fn start(&self, pass: u64, tokens: usize) {
        self.last.store(pass, Ordering::Release);
        self.tokens.store(tokens, Ordering::Relaxed);
        let since = self.epoch.elapsed().as_micros() as u64;
        self.started.store(since + 1, Ordering::Release);
    }

    /// Marks the device idle.
    fn stop(&self) {
        self.started.store(0, Ordering::Release);
    }

    /// How long the pass in progress has run, and its tokens.
    fn current(&self) -> Option<(Duration, usize)> {
        let started = self.started.load(Ordering::Acquire);
        if started == 0 {
            return None;
        }
        let since = Duration::from_micros(started - 1);
        let elapsed = self.epoch.elapsed().saturating_sub(since);
        Some((elapsed, self.tokens.load(Ordering::Relaxed)))
    }
}

/// One batch for the device thread.
struct Job {
    /// The pass's id, from [`DeviceHandle::new_pass`].
    pass: u64,
    /// Packed token ids.
    token_ids: Vec<u32>,
    /// Length of each sequence.
    lengths: Vec<usize>,
    /// What to compute.
    work: Work,
    /// Where the result goes.
    reply: oneshot::Sender<Result<Output, EngineError>>,
}

/// Handle to the device thread; cheap to clone.
#[derive(Clone)]
pub struct DeviceHandle {
    /// The thread's job channel (a bound of one: one pass staged behind the running one).
    jobs: mpsc::Sender<Job>,
    /// What runs the model.
    info: EngineInfo,
    /// The pass in progress, stamped by the thread.
    clock: Arc<PassClock>,
    /// Why the thread stopped serving, once it did.
    lost: Arc<OnceLock<String>>,
    /// The last pass id handed out.
    passes: Arc<AtomicU64>,
}

impl DeviceHandle {
    /// Starts the device thread with the model of `task` (a reranker for `rerank`) and
    /// returns once it is loaded (or failed to load). `fault` arms the test-only hook.
    pub async fn start(
        dir: PathBuf,
        options: EngineOptions,
        task: Task,
        fault: Option<FaultHook>,
    ) -> Result<Self, EngineError> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(1);
        let (ready_tx, ready_rx) = oneshot::channel();
        let clock = Arc::new(PassClock::new());
        let lost = Arc::new(OnceLock::new());
        let (thread_clock, thread_lost) = (Arc::clone(&clock), Arc::clone(&lost));
        std::thread::Builder::new()
            .name("device".into())
            .spawn(move || {
                let model = match engine::load(&dir, &options, task) {
                    Ok(model) => model,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if ready_tx.send(Ok(model.info())).is_ok() {
                    serve(model.as_ref(), jobs_rx, &thread_clock, &thread_lost, fault);
                }
            })
            .map_err(|e| EngineError::Start(format!("cannot start the device thread: {e}")))?;
        let info = ready_rx.await.map_err(|_| {
            EngineError::Start("the device thread ended while loading the model".into())
        })??;
        Ok(Self {
            jobs: jobs_tx,
            info,
            clock,
            lost,
            passes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// What runs the model.
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// How long the pass on the device has run and over how many tokens; `None` when the
    /// device is idle.
    pub fn pass_in_progress(&self) -> Option<(Duration, usize)> {
        self.clock.current()
    }

    /// A fresh pass id (never 0), for [`Self::run`].
    pub fn new_pass(&self) -> u64 {
        self.passes.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The id of the last pass the device started (0: none yet). After a fatal pass, it is
    /// that pass: the batches in it were on the device, the others only waited.
    pub fn last_pass(&self) -> u64 {
        self.clock.last.load(Ordering::Acquire)
    }

    /// Runs one batch as pass `pass` on the device thread (waits while another batch is
    /// staged).
    pub async fn run(
        &self,
        pass: u64,
        token_ids: Vec<u32>,
        lengths: Vec<usize>,
        work: Work,
    ) -> Result<Output, EngineError> {
        let (reply, result) = oneshot::channel();
        let job = Job {
            pass,
            token_ids,
            lengths,
            work,
            reply,
        };
        if self.jobs.send(job).await.is_err() {
            return Err(self.stopped());
        }
        result.await.map_err(|_| self.stopped())?
    }

    /// The error of a job the thread no longer takes.
    fn stopped(&self) -> EngineError {
        let why = self
            .lost
            .get()
            .map_or("it ended", std::string::String::as_str);
        EngineError::DeviceLost(format!("the device thread has stopped: {why}"))
    }
}

/// The device thread's loop: runs jobs until the channel closes or a pass is fatal (then
/// it records why and returns, dropping the jobs still queued).
fn serve(
    model: &dyn DeviceModel,
    mut jobs: mpsc::Receiver<Job>,
    clock: &PassClock,
    lost: &OnceLock<String>,
    fault: Option<FaultHook>,
) {
    while let Some(job) = jobs.blocking_recv() {
        clock.start(job.pass, job.token_ids.len());
        let result = catch_unwind(AssertUnwindSafe(|| {
            if let Some(fault) = fault {
                fault.strike(&job.token_ids, model);
            }
            model.compute(&job.token_ids, &job.lengths, &job.work)
        }));
        clock.stop();
        let result = result.unwrap_or_else(|panic| {
            Err(EngineError::DeviceLost(format!(
                "the forward pass panicked: {}",
                panic_message(panic.as_ref())
            )))
        });
        let fatal = match &result {
            Err(error) if error.is_fatal() => Some(error.to_string()),
            _ => None,
        };
        if let Some(reason) = &fatal {
            let _ = lost.set(reason.clone());
        }
        let _ = job.reply.send(result);
        if fatal.is_some() {
            return;
        }
    }
}

/// The message a panic carried.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "(no message)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineOptions;

    /// The qwen3-tiny fixture (`$QWEN3_TINY_DIR` when set, as the integration tests).
    fn tiny_model() -> PathBuf {
        std::env::var_os("QWEN3_TINY_DIR").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/qwen3-tiny"),
            PathBuf::from,
        )
    }

    async fn start(fault: Option<FaultHook>) -> DeviceHandle {
        DeviceHandle::start(tiny_model(), EngineOptions::cpu(), Task::Embed, fault)
            .await
            .expect("the tiny model loads")
    }

    fn embed(dims: usize) -> Work {
        Work::Embed {
            dims: vec![dims],
            normalize: vec![true],
        }
    }

    #[tokio::test]
    async fn a_panicking_pass_loses_the_device_for_good() {
        let device = start(Some(FaultHook {
            token_id: 7,
            action: FaultAction::Panic,
        }))
        .await;
        assert!(
            device
                .run(1, vec![1, 2, 3], vec![3], embed(8))
                .await
                .is_ok()
        );
        let error = device.run(2, vec![1, 7, 3], vec![3], embed(8)).await;
        match error {
            Err(EngineError::DeviceLost(reason)) => {
                assert!(reason.contains("panicked"), "{reason}");
                assert!(reason.contains("token 7"), "{reason}");
            }
            other => panic!("expected a lost device, got {other:?}"),
        }
        // Every later batch fails the same way, naming the first cause: no black hole.
        assert_eq!(device.last_pass(), 2, "the fatal pass is the last started");
        match device.run(3, vec![1, 2, 3], vec![3], embed(8)).await {
            Err(EngineError::DeviceLost(reason)) => {
                assert!(reason.contains("has stopped") && reason.contains("panicked"));
            }
            other => panic!("expected a lost device, got {other:?}"),
        }
        assert!(device.pass_in_progress().is_none());
    }

    #[tokio::test]
    async fn a_device_fault_on_the_cpu_loses_the_device_saying_it_needs_cuda() {
        let device = start(Some(FaultHook {
            token_id: 7,
            action: FaultAction::DeviceFault,
        }))
        .await;
        match device.run(1, vec![1, 7, 3], vec![3], embed(8)).await {
            Err(EngineError::DeviceLost(reason)) => {
                assert!(reason.contains("needs the CUDA backend"), "{reason}");
            }
            other => panic!("expected a lost device, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_bad_batch_fails_alone_and_a_hung_pass_shows_in_the_clock() {
        let device = start(Some(FaultHook {
            token_id: 9,
            action: FaultAction::Hang,
        }))
        .await;
        let vocab_breaker = vec![1, u32::MAX];
        assert!(matches!(
            device.run(1, vocab_breaker, vec![2], embed(8)).await,
            Err(EngineError::Input(_))
        ));
        assert!(device.run(2, vec![1, 2], vec![2], embed(8)).await.is_ok());
        let hung = device.clone();
        let _stuck = tokio::spawn(async move { hung.run(3, vec![9, 9], vec![2], embed(8)).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((elapsed, tokens)) = device.pass_in_progress()
                && elapsed > Duration::from_millis(100)
            {
                assert_eq!(tokens, 2);
                assert_eq!(device.last_pass(), 3);
                break;
            }
            assert!(Instant::now() < deadline, "the hung pass never showed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
