/**
 * Opening a device (src/gpu/device.ts): which failures of requestDevice are bun-webgpu's garbled
 * descriptors (retried with a fresh adapter) and which are real (one error line at once).
 */
import { describe, expect, test } from "bun:test";
import { GARBLED_DESCRIPTOR } from "../src/gpu/device.ts";

describe("requestDevice failures", () => {
  test("bun-webgpu's garbled descriptors are retried; genuine refusals are not", () => {
    const garbled = [
      "Invalid feature required: Value 558 is invalid for WGPUFeatureName.",
      "WGPU Error (Error): Unexpected chained struct of type SType::15 found on DeviceDescriptor chain.",
    ];
    for (const m of garbled) expect(GARBLED_DESCRIPTOR.test(m), m).toBe(true);
    const genuine = [
      "Required limit (4294967296) is greater than the supported limit (2147483648).",
      "Feature shader-f16 is not supported by this adapter.",
      "Unexpected chained struct of type SType::15 found on ShaderModuleDescriptor chain.",
    ];
    for (const m of genuine) expect(GARBLED_DESCRIPTOR.test(m), m).toBe(false);
  });
});
