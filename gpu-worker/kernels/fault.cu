// The test-only fault hook's `device_fault` (src/device.rs): a kernel that traps, as a broken
// kernel or a hardware fault would, leaving the context in a sticky error. It computes
// nothing, so it has no CPU twin; tests/cuda_model.rs drives the path that follows.
#include "common.cuh"

extern "C" __global__ void trap() { __trap(); }
