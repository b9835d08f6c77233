export { Gpu, getGpu, acquireGpu, type AcquireOptions } from "./device.ts";
export { listAdapters, pickAdapter, NO_DRIVER_HINT, type AdapterDescription } from "./adapter.ts";
export { ShaderError, type Kernel, type KernelSpec } from "./kernel.ts";
export * from "./tensor.ts";
