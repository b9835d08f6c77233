import { describe, test, expect } from "bun:test";
import { getGpu } from "../src/gpu/device.ts";
import { ShaderError } from "../src/gpu/kernel.ts";
import { SHADERS, shaderSource } from "../src/gpu/shaders.ts";
import { grid1d, read, upload, uniform, zeros } from "../src/gpu/tensor.ts";
import { listAdapters, pickAdapter } from "../src/gpu/adapter.ts";
import { BufferPool } from "../src/gpu/pool.ts";

describe("GPU runtime", () => {
  test("a WGSL compile error names the shader, the entry point and the offending line", async () => {
    const gpu = await getGpu();
    SHADERS["broken_for_test"] = "@compute @workgroup_size(1)\nfn main() {\n  let x: i32 = 1.5;\n}\n";
    try {
      const err = await gpu.kernel({ shader: "broken_for_test", entry: "main" }).catch((e) => e);
      expect(err).toBeInstanceOf(ShaderError);
      expect(err.message).toContain("broken_for_test.wgsl:main");
      expect(err.message).toMatch(/:3:\d+/); // Dawn's line:column of `let x: i32 = 1.5;`
    } finally {
      delete SHADERS["broken_for_test"];
    }
  });

  test("a missing entry point or template parameter is an error, not a silent fallback", async () => {
    const gpu = await getGpu();
    await expect(gpu.kernel({ shader: "fill", entry: "no_such_entry" })).rejects.toBeInstanceOf(ShaderError);
    await expect(gpu.kernel({ shader: "matmul", entry: "main", template: { BM: 64 } })).rejects.toThrow(/template parameter \{\{BN\}\}/);
    await expect(gpu.kernel({ shader: "nope", entry: "main" })).rejects.toThrow(/unknown shader "nope"/);
  });

  test('`// #include "lib/reduce"` splices the shared helper in once; an unknown include is an error', () => {
    const norm = shaderSource("norm");
    expect(norm).not.toMatch(/^\/\/ #include/m);
    expect(norm.match(/fn workgroupSum\(/g)).toHaveLength(1);
    SHADERS["include_test"] = '// #include "lib/reduce"\n// #include "lib/reduce"\n// #include "lib/nope"\n';
    try {
      expect(() => shaderSource("include_test")).toThrow(/unknown shader "lib\/nope"/);
      SHADERS["include_test"] = '// #include "lib/reduce"\n// #include "lib/reduce"\n';
      expect(shaderSource("include_test").match(/fn workgroupSum\(/g)).toHaveLength(1);
    } finally {
      delete SHADERS["include_test"];
    }
  });

  test("pipelines are cached per shader, entry and specialisation", async () => {
    const gpu = await getGpu();
    const a = await gpu.kernel({ shader: "fill", entry: "fill", constants: { WG: 64 } });
    const b = await gpu.kernel({ shader: "fill", entry: "fill", constants: { WG: 64 } });
    const c = await gpu.kernel({ shader: "fill", entry: "fill", constants: { WG: 128 } });
    expect(b).toBe(a);
    expect(c).not.toBe(a);
  });

  test("upload and readback round-trip every dtype exactly", async () => {
    const gpu = await getGpu();
    const f = Float32Array.from([1.5, -2, 3e-30, 3.4e38, -0]);
    const i = Int32Array.from([-7, 0, 2 ** 31 - 1, -(2 ** 31), 42]);
    const tf = upload(gpu, f);
    const ti = upload(gpu, i);
    expect(Array.from(await read(tf))).toEqual(Array.from(f));
    expect(Array.from((await read(ti)) as unknown as Int32Array)).toEqual(Array.from(i));
    tf.release();
    ti.release();
  });

  test("the pool never rounds a buffer past maxBufferSize, and refuses one larger than it naming the tensor", async () => {
    const gpu = await getGpu();
    const pool = new BufferPool(gpu.device, 1_000_000);
    // 990,000 bytes would round up to the 1,048,576-byte size class, past the limit: exact size instead
    const b = pool.acquire(990_000, undefined, "almost");
    expect(b.size).toBe(990_000);
    expect(pool.acquire(200_000).size).toBe(212_992); // below the limit the size classes stay (13 x 16 KiB)
    expect(() => pool.acquire(1_000_004, undefined, "too.big")).toThrow(/^tensor too\.big needs 1\.0 MiB, more than this adapter's largest buffer \(maxBufferSize 1\.0 MiB\)$/);
    pool.destroy();
  });

  test("the pool hands a released buffer of the same size class back, and zeros() really zeroes it", async () => {
    const gpu = await getGpu();
    const a = upload(gpu, new Float32Array(100).fill(7));
    const buf = a.buffer;
    a.release();
    const b = zeros(gpu, [100]);
    expect(b.buffer).toBe(buf);
    expect((await read(b)).every((v) => v === 0)).toBe(true);
    b.release();
  });

  test("uniform() refuses a value that is not a u32", async () => {
    const gpu = await getGpu();
    expect(() => uniform(gpu, [1, -1])).toThrow(/not a u32/);
    expect(() => uniform(gpu, [1.5])).toThrow(/not a u32/);
  });

  test("grid1d splits launches past 65535 workgroups over y", () => {
    expect(grid1d(10, 64)).toEqual([1, 1, 1]);
    const [x, y] = grid1d(65536 * 64 * 3, 64);
    expect(x).toBeLessThanOrEqual(65535);
    expect(x * y * 64).toBeGreaterThanOrEqual(65536 * 64 * 3);
  });

  test("adapters can be picked by index and by name; the device got the adapter's limits", async () => {
    const all = await listAdapters();
    expect(all.length).toBeGreaterThan(0);
    const byIndex = await pickAdapter("0");
    expect(byIndex.desc.name).toBe(all[0]!.name);
    const byName = await pickAdapter(all[0]!.name.slice(0, 6).toUpperCase());
    expect(byName.desc.name).toBe(all[0]!.name);
    await expect(pickAdapter(String(all.length))).rejects.toThrow(/does not exist/);
    const gpu = await getGpu();
    expect(gpu.limits.maxStorageBufferBindingSize).toBeGreaterThanOrEqual(128 * 1024 * 1024);
  });
});

describe("GPU memory limits", () => {
  test("a tensor larger than the adapter can bind is one clear UserError naming it, not a validation error", async () => {
    const gpu = await getGpu();
    const { empty } = await import("../src/gpu/tensor.ts");
    const { UserError } = await import("../src/util/errors.ts");
    const tooMany = Math.floor(gpu.limits.maxStorageBufferBindingSize! / 4) + 1;
    let err: unknown;
    try {
      empty(gpu, [tooMany], "f32", "huge.logits");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UserError);
    expect((err as Error).message).toMatch(/^tensor huge\.logits .* more than this adapter binds \(maxStorageBufferBindingSize \d+ MiB\)/);
  });
});
