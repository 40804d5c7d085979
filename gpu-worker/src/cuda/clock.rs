//! CUDA events on the backend's stream as the op profiler's clock (`crate::profile`).

use cudarc::driver::CudaEvent;
use cudarc::driver::sys::CUevent_flags;

use super::CudaBackend;
use crate::ops::OpResult;
use crate::profile::OpClock;

impl OpClock for CudaBackend {
    type Mark = CudaEvent;

    /// An event with timing, recorded on the stream: reached once the ops queued before it
    /// have run.
    fn mark(&self) -> OpResult<CudaEvent> {
        let event = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        event.record(&self.stream)?;
        Ok(event)
    }

    /// Waits for both events, then reads the device's time between them.
    fn elapsed_ms(&self, start: &CudaEvent, end: &CudaEvent) -> OpResult<f64> {
        Ok(f64::from(start.elapsed_ms(end)?))
    }
}
