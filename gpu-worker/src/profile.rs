//! Time per op of the forward pass, for `gpu-worker bench --profile`: a kernel time table
//! where Nsight Systems is missing (the GPU machines have none).
//!
//! [`Profiled`] wraps a backend and brackets every op with two marks of the backend's
//! [`OpClock`]: on the CPU the time of day; with CUDA, events recorded on the stream, so the
//! span is the device's (including any wait for the host to launch the op: for small
//! batches, launch overhead shows as op time). The marks are read when a pass ends on the
//! host (`pool`, `to_host`), where the device has finished, and summed by op into
//! [`OpTimes`].
//!
//! A profiled pass runs op by op as the model calls the ops (no CUDA graph replay), and the
//! MLP as its two products and SwiGLU (a CPU backend's fused MLP is not used).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::cpu::CpuBackend;
use crate::engine::DeviceCheck;
use crate::ops::{
    AttentionShape, BatchLayout, DeviceInfo, OpResult, Ops, QkNorms, Queries, TensorView,
};

/// Marks points in a backend's order of work.
pub trait OpClock {
    /// One point.
    type Mark;
    /// A point after everything queued so far.
    fn mark(&self) -> OpResult<Self::Mark>;
    /// Milliseconds from `start` to `end`, both reached.
    fn elapsed_ms(&self, start: &Self::Mark, end: &Self::Mark) -> OpResult<f64>;
}

impl OpClock for CpuBackend {
    type Mark = Instant;

    /// Every CPU op has finished when it returns: now.
    fn mark(&self) -> OpResult<Instant> {
        Ok(Instant::now())
    }

    fn elapsed_ms(&self, start: &Instant, end: &Instant) -> OpResult<f64> {
        Ok(end.duration_since(*start).as_secs_f64() * 1e3)
    }
}

/// Time summed per op, in the order the ops first ran.
#[derive(Debug, Default)]
pub struct OpTimes {
    ops: Mutex<Vec<OpTime>>,
}

/// One op's share of the profiled passes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpTime {
    /// The op (`linear`, `attention`, ..).
    pub op: &'static str,
    /// Calls.
    pub calls: u64,
    /// Milliseconds, summed over the calls.
    pub ms: f64,
}

impl OpTimes {
    /// The times so far.
    pub fn snapshot(&self) -> Vec<OpTime> {
        self.lock().clone()
    }

    /// Forgets the times so far (after a warm-up pass).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn add(&self, op: &'static str, ms: f64) {
        let mut ops = self.lock();
        match ops.iter_mut().find(|entry| entry.op == op) {
            Some(entry) => {
                entry.calls += 1;
                entry.ms += ms;
            }
            None => ops.push(OpTime { op, calls: 1, ms }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OpTime>> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A table of `ops`, the largest first, with each op's share of their sum.
pub fn table(ops: &[OpTime]) -> String {
    let mut ops = ops.to_vec();
    ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let total: f64 = ops.iter().map(|op| op.ms).sum();
    let mut table = format!("{:<14} {:>8} {:>11} {:>6}\n", "op", "calls", "ms", "share");
    for op in &ops {
        let share = if total > 0.0 { op.ms / total } else { 0.0 };
        table += &format!(
            "{:<14} {:>8} {:>11.3} {:>5.1}%\n",
            op.op,
            op.calls,
            op.ms,
            100.0 * share
        );
    }
    table + &format!("{:<14} {:>8} {:>11.3}\n", "sum", "", total)
}

/// A backend whose ops are timed into an [`OpTimes`].
pub struct Profiled<B: OpClock> {
    inner: B,
    times: Arc<OpTimes>,
    /// The ops run since the marks were last read.
    pending: Mutex<Vec<Span<B::Mark>>>,
}

/// One op between two marks.
struct Span<M> {
    op: &'static str,
    start: M,
    end: M,
}

impl<B: Ops + OpClock> Profiled<B> {
    /// Times the ops of `inner` into `times`.
    pub fn new(inner: B, times: Arc<OpTimes>) -> Self {
        Self {
            inner,
            times,
            pending: Mutex::new(Vec::new()),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Runs one op of the inner backend between two marks.
    fn timed<T>(&self, op: &'static str, run: impl FnOnce(&B) -> OpResult<T>) -> OpResult<T> {
        let start = self.inner.mark()?;
        let out = run(&self.inner)?;
        let end = self.inner.mark()?;
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Span { op, start, end });
        Ok(out)
    }

    /// Reads the pending marks, all reached once a pass is back on the host.
    fn settle(&self) -> OpResult<()> {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        for span in &pending {
            let ms = self.inner.elapsed_ms(&span.start, &span.end)?;
            self.times.add(span.op, ms);
        }
        Ok(())
    }
}

impl<B: Ops + OpClock> Ops for Profiled<B> {
    type Tensor = B::Tensor;
    type Matrix = B::Matrix;
    type Vector = B::Vector;
    type Table = B::Table;
    type Layout = B::Layout;

    fn name(&self) -> String {
        self.inner.name()
    }

    fn device_info(&self) -> DeviceInfo {
        self.inner.device_info()
    }

    fn matrix(&self, parts: &[TensorView<'_>]) -> OpResult<B::Matrix> {
        self.inner.matrix(parts)
    }

    fn vector(&self, view: TensorView<'_>) -> OpResult<B::Vector> {
        self.inner.vector(view)
    }

    fn table(&self, view: TensorView<'_>) -> OpResult<B::Table> {
        self.inner.table(view)
    }

    fn layout(&self, layout: &BatchLayout) -> OpResult<B::Layout> {
        self.timed("layout", |b| b.layout(layout))
    }

    fn embed(&self, table: &B::Table, token_ids: &[u32]) -> OpResult<B::Tensor> {
        self.timed("embed", |b| b.embed(table, token_ids))
    }

    fn rms_norm(&self, x: &B::Tensor, weight: &B::Vector, eps: f32) -> OpResult<B::Tensor> {
        self.timed("rms_norm", |b| b.rms_norm(x, weight, eps))
    }

    fn add_rms_norm(
        &self,
        residual: &mut B::Tensor,
        delta: &B::Tensor,
        weight: &B::Vector,
        eps: f32,
    ) -> OpResult<B::Tensor> {
        self.timed("add_rms_norm", |b| {
            b.add_rms_norm(residual, delta, weight, eps)
        })
    }

    fn add(&self, residual: &mut B::Tensor, delta: &B::Tensor) -> OpResult<()> {
        self.timed("add", |b| b.add(residual, delta))
    }

    fn linear(&self, x: &B::Tensor, w: &B::Matrix) -> OpResult<B::Tensor> {
        self.timed("linear", |b| b.linear(x, w))
    }

    fn qk_norm_rope(
        &self,
        qkv: &mut B::Tensor,
        norms: &QkNorms<'_, B::Vector>,
        layout: &B::Layout,
        shape: AttentionShape,
    ) -> OpResult<()> {
        self.timed("qk_norm_rope", |b| {
            b.qk_norm_rope(qkv, norms, layout, shape)
        })
    }

    fn attention(
        &self,
        q: &B::Tensor,
        kv: &B::Tensor,
        layout: &B::Layout,
        queries: Queries,
        shape: AttentionShape,
    ) -> OpResult<B::Tensor> {
        self.timed("attention", |b| b.attention(q, kv, layout, queries, shape))
    }

    fn silu_mul(&self, gate_up: &B::Tensor) -> OpResult<B::Tensor> {
        self.timed("silu_mul", |b| b.silu_mul(gate_up))
    }

    fn last_rows(&self, x: &B::Tensor, layout: &B::Layout) -> OpResult<B::Tensor> {
        self.timed("last_rows", |b| b.last_rows(x, layout))
    }

    fn pool(
        &self,
        last: &B::Tensor,
        norm: &B::Vector,
        eps: f32,
        dims: &[usize],
        normalize: &[bool],
    ) -> OpResult<Vec<Vec<f32>>> {
        let vectors = self.timed("pool", |b| b.pool(last, norm, eps, dims, normalize))?;
        self.settle()?;
        Ok(vectors)
    }

    fn to_host(&self, x: &B::Tensor) -> OpResult<Vec<f32>> {
        let values = self.timed("to_host", |b| b.to_host(x))?;
        self.settle()?;
        Ok(values)
    }
}

impl<B: OpClock + DeviceCheck> DeviceCheck for Profiled<B> {
    fn lost(&self) -> Option<String> {
        self.inner.lost()
    }

    fn provoke_fault(&self) -> Result<(), String> {
        self.inner.provoke_fault()
    }
}
