//! Launcher of `kernels/fault.cu`, the test-only fault hook's device fault (it computes
//! nothing, so it has no CPU twin).

use cudarc::driver::LaunchConfig;

use super::CudaBackend;
use crate::ops::OpResult;

impl CudaBackend {
    /// Launches a kernel that traps (the test-only fault hook's `device_fault`): the context
    /// is left in a sticky error, which the next call that waits for the stream reports.
    pub fn launch_trap(&self) -> OpResult<()> {
        let config = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: trap() takes no arguments and touches no memory.
        unsafe {
            self.stream
                .launch_builder(&self.kernels.trap)
                .launch(config)
        }?;
        Ok(())
    }
}
