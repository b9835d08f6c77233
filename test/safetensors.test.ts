import { afterAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { atomicTestHooks, findAtomicLeftovers, isAtomicLeftoverName, writeFileAtomic } from "../src/io/atomic.ts";
import {
  bf16BitsToF32,
  encodeFloat32,
  encodeSafetensors,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  readSafetensors,
  tensorToFloat32,
  writeSafetensors,
  type Dtype,
  type TensorInput,
} from "../src/io/safetensors.ts";
import { UserError } from "../src/util/errors.ts";

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), "mhmoe-safetensors-"));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
let counter = 0;
const tmpFile = (name: string) => path.join(tmpRoot, `${counter++}-${name}`);
const FIXTURES = path.join(import.meta.dir, "fixtures", "safetensors");
const PYTHON = "/usr/bin/python3";

/** Deterministic values spanning many magnitudes (mulberry32). */
function randomFloats(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return Float32Array.from({ length: n }, () => (next() - 0.5) * 2 ** Math.floor(next() * 20 - 10));
}

function expectUserError(fn: () => unknown, ...parts: string[]): string {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(UserError);
  const msg = (caught as Error).message;
  expect(msg).not.toContain("\n");
  for (const p of parts) expect(msg).toContain(p);
  return msg;
}

describe("float conversions", () => {
  test("every finite F16 and BF16 value survives a trip through float32", () => {
    for (let h = 0; h < 65536; h++) {
      const exp = (h >>> 10) & 0x1f;
      if (exp !== 0x1f || (h & 0x3ff) === 0) expect(f32ToF16Bits(f16BitsToF32(h))).toBe(h);
      const b = bf16BitsToF32(h);
      if (!Number.isNaN(b)) expect(f32ToBf16Bits(b)).toBe(h);
    }
  });

  test("F16 rounds to nearest even, like Math.f16round", () => {
    const cases: [number, number][] = [
      [1 + 2 ** -11, 0x3c00], // tie between 1 and 1+2^-10 -> even (1)
      [1 + 3 * 2 ** -11, 0x3c02], // tie -> even (up)
      [65504, 0x7bff],
      [65519.99, 0x7bff],
      [65520, 0x7c00], // tie with the (virtual) next value -> infinity
      [2 ** -25, 0x0000], // half the smallest subnormal ties to 0
      [3 * 2 ** -26, 0x0001],
      [2 ** -24, 0x0001],
      [-0, 0x8000],
      [-Infinity, 0xfc00],
      [2 ** -14 - 2 ** -25, 0x0400], // rounds up from the largest subnormal into the smallest normal
    ];
    for (const [x, bits] of cases) expect(f32ToF16Bits(x)).toBe(bits);
    expect(f16BitsToF32(f32ToF16Bits(NaN))).toBeNaN();
    const f16round = (Math as unknown as { f16round?: (x: number) => number }).f16round;
    if (f16round) {
      for (const x of randomFloats(20000, 7)) expect(f16BitsToF32(f32ToF16Bits(x))).toBe(f16round(Math.fround(x)));
    }
  });

  test("BF16 rounds to nearest even and keeps NaN", () => {
    expect(f32ToBf16Bits(1 + 2 ** -8)).toBe(0x3f80); // tie -> even
    expect(f32ToBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie -> even (up)
    expect(f32ToBf16Bits(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
    expect(bf16BitsToF32(f32ToBf16Bits(NaN))).toBeNaN();
    expect(f32ToBf16Bits(3.4028234663852886e38)).toBe(0x7f80); // max float rounds to infinity
  });
});

describe("round trip", () => {
  const typed: Record<Dtype, (n: number) => ArrayBufferView> = {
    F64: (n) => Float64Array.from({ length: n }, (_, i) => i * 1.5 - 3),
    I64: (n) => BigInt64Array.from({ length: n }, (_, i) => BigInt(i * 1000003 - 5)),
    U64: (n) => BigUint64Array.from({ length: n }, (_, i) => BigInt(i * 7)),
    F32: (n) => randomFloats(n, 1),
    I32: (n) => Int32Array.from({ length: n }, (_, i) => i * 77 - 100),
    U32: (n) => Uint32Array.from({ length: n }, (_, i) => i * 77),
    BF16: (n) => new Uint16Array(encodeFloat32(randomFloats(n, 2), "BF16").buffer),
    F16: (n) => new Uint16Array(encodeFloat32(randomFloats(n, 3), "F16").buffer),
    I16: (n) => Int16Array.from({ length: n }, (_, i) => i - 4),
    U16: (n) => Uint16Array.from({ length: n }, (_, i) => i * 3),
    I8: (n) => Int8Array.from({ length: n }, (_, i) => i - 5),
    U8: (n) => Uint8Array.from({ length: n }, (_, i) => i * 9),
    BOOL: (n) => Uint8Array.from({ length: n }, (_, i) => i % 2),
    F8_E4M3: (n) => new Uint8Array(n),
    F8_E5M2: (n) => new Uint8Array(n),
  };

  test("every dtype keeps its bytes, shape and order-independent name", () => {
    const tensors = new Map<string, TensorInput>();
    for (const [dtype, make] of Object.entries(typed)) tensors.set(`t.${dtype}`, { dtype: dtype as Dtype, shape: [3, 5], data: make(15) });
    tensors.set("scalar", { dtype: "F32", shape: [], data: new Float32Array([2.5]) });
    tensors.set("empty", { dtype: "F16", shape: [0, 4], data: new Uint16Array(0) });
    const file = tmpFile("all.safetensors");
    writeSafetensors(file, tensors);
    const read = readSafetensors(file);
    expect(read.metadata).toEqual({ format: "pt" });
    expect([...read.tensors.keys()].sort()).toEqual([...tensors.keys()].sort());
    for (const [name, t] of tensors) {
      const got = read.tensors.get(name)!;
      expect(got.dtype).toBe(t.dtype);
      expect(got.shape).toEqual([...t.shape]);
      expect(Buffer.from(got.data).equals(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))).toBe(true);
    }
    expect(Array.from(tensorToFloat32(read.tensors.get("t.I64")!))).toEqual(Array.from({ length: 15 }, (_, i) => i * 1000003 - 5));
    expect(Array.from(tensorToFloat32(read.tensors.get("t.I8")!))).toEqual(Array.from({ length: 15 }, (_, i) => i - 5));
    expect(tensorToFloat32(read.tensors.get("scalar")!)[0]).toBe(2.5);
    expectUserError(() => tensorToFloat32(read.tensors.get("t.F8_E4M3")!, "x.F8"), "x.F8", "F8_E4M3");
  });

  // F32 is exact; F16 keeps 11 significant bits (relative error <= 2^-11 in the normal range),
  // BF16 keeps 8 (relative error <= 2^-8). Measured worst: 0, 4.7e-4 (96% of 2^-11), 3.7e-3 (95% of 2^-8).
  for (const [dtype, tol] of [["F32", 0], ["F16", 2 ** -11], ["BF16", 2 ** -8]] as const) {
    test(`float32 values exported as ${dtype} read back within ${tol} relative`, () => {
      const values = randomFloats(1001, 11).map((x) => (Math.abs(x) < 2 ** -13 ? x + 1 : x)); // stay in F16's normal range
      const file = tmpFile(`${dtype}.safetensors`);
      writeSafetensors(file, { w: { dtype, shape: [7, 11, 13], data: encodeFloat32(values, dtype) } });
      const back = tensorToFloat32(readSafetensors(file).tensors.get("w")!);
      expect(back.length).toBe(values.length);
      let worst = 0;
      for (let i = 0; i < values.length; i++) worst = Math.max(worst, Math.abs(back[i] - values[i]) / Math.abs(values[i]));
      expect(worst).toBeLessThanOrEqual(tol);
      if (dtype !== "F32") expect(worst).toBeGreaterThan(0); // the conversion really happened
    });
  }
});

describe("layout", () => {
  test("matches the reference crate's own serialization tests byte for byte", () => {
    const data = new Float32Array([0, 1, 2, 3, 4, 5]);
    const bytes = (chunks: Uint8Array[]) => Array.from(Buffer.concat(chunks));
    const header = (json: string, pad: number) => [...Buffer.from(json), ...Array(pad).fill(32)];
    const f32 = Array.from(new Uint8Array(data.buffer));
    const len = (n: number) => [n, 0, 0, 0, 0, 0, 0, 0];
    const json1 = '{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}';
    expect(bytes(encodeSafetensors({ "attn.0": { dtype: "F32", shape: [1, 2, 3], data } }, null))).toEqual([...len(64), ...header(json1, 0), ...f32]);
    const json2 = '{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}';
    expect(bytes(encodeSafetensors({ attn0: { dtype: "F32", shape: [1, 1, 2, 3], data } }, null))).toEqual([...len(72), ...header(json2, 7), ...f32]);
    expect(bytes(encodeSafetensors({}, null))).toEqual([...len(8), ...header("{}", 6)]);
    expect(bytes(encodeSafetensors({}, { framework: "pt" }))).toEqual([...len(40), ...header('{"__metadata__":{"framework":"pt"}}', 5)]);
  });

  test("header is space-padded to 8 bytes and every tensor starts aligned to its dtype", () => {
    const file = tmpFile("align.safetensors");
    writeSafetensors(file, {
      "z.u8": { dtype: "U8", shape: [3], data: new Uint8Array(3) },
      "b.f16": { dtype: "F16", shape: [5], data: new Uint16Array(5) },
      "a.f16": { dtype: "F16", shape: [1], data: new Uint16Array(1) },
      "c.bf16": { dtype: "BF16", shape: [3], data: new Uint16Array(3) },
      "x.f32": { dtype: "F32", shape: [3], data: new Float32Array(3) },
      "y.i64": { dtype: "I64", shape: [1], data: new BigInt64Array(1) },
    });
    const raw = fs.readFileSync(file);
    const n = Number(raw.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const text = raw.subarray(8, 8 + n).toString("utf8");
    expect(text.trimEnd().endsWith("}")).toBe(true);
    expect(/^ *$/.test(text.slice(text.trimEnd().length))).toBe(true);
    const header = JSON.parse(text);
    const names = Object.keys(header).filter((k) => k !== "__metadata__");
    expect(Object.keys(header)[0]).toBe("__metadata__");
    expect(names).toEqual(["y.i64", "x.f32", "c.bf16", "a.f16", "b.f16", "z.u8"]); // alignment desc, then name
    const size: Record<string, number> = { I64: 8, F32: 4, BF16: 2, F16: 2, U8: 1 };
    for (const name of names) expect((8 + n + header[name].data_offsets[0]) % size[header[name].dtype]).toBe(0);
  });
});

describe("python interop (Debian torch, hand-written format code)", () => {
  test("files written by python read back exactly, and our writer reproduces the reference layout", () => {
    const dir = fs.mkdtempSync(path.join(tmpRoot, "py-"));
    const run = Bun.spawnSync([PYTHON, path.join(FIXTURES, "py_writer.py"), dir]);
    expect(run.stdout.toString() + run.stderr.toString()).toContain("OK");
    const expected: Record<string, { dtype: Dtype; shape: number[]; hex: string; values: string[] }> = JSON.parse(
      fs.readFileSync(path.join(dir, "expected.json"), "utf8"),
    );
    for (const file of ["ref.safetensors", "loose.safetensors"]) {
      const read = readSafetensors(path.join(dir, file));
      expect(read.metadata).toEqual(file === "ref.safetensors" ? { format: "pt" } : null);
      expect([...read.tensors.keys()].sort()).toEqual(Object.keys(expected).sort());
      for (const [name, exp] of Object.entries(expected)) {
        const t = read.tensors.get(name)!;
        expect([t.dtype, t.shape]).toEqual([exp.dtype, exp.shape]);
        expect(Buffer.from(t.data).toString("hex")).toBe(exp.hex);
        expect(Array.from(tensorToFloat32(t))).toEqual(exp.values.map((v) => Math.fround(Number(v))));
      }
    }
    const inputs = Object.fromEntries(
      Object.entries(expected).map(([name, e]) => [name, { dtype: e.dtype, shape: e.shape, data: new Uint8Array(Buffer.from(e.hex, "hex")) }]),
    );
    const ours = Buffer.concat(encodeSafetensors(inputs));
    expect(ours.equals(fs.readFileSync(path.join(dir, "ref.safetensors")))).toBe(true);
  });

  test("python reads our file and matches torch's own F16/BF16 rounding bit for bit", () => {
    const values = Array.from(randomFloats(300, 5));
    values.push(1 + 2 ** -11, 1 + 3 * 2 ** -11, 65520, 65519, 2 ** -25, 3 * 2 ** -26, 1e-8, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.3e38, -0, 1e-40);
    const f32 = Float32Array.from(values);
    const file = tmpFile("for-python.safetensors");
    const expected: Record<string, { dtype: string; shape: number[]; values: string[] }> = {};
    const text = (v: number | bigint) => (Object.is(v, -0) ? "-0.0" : String(v)); // keeps -0 and infinities
    const tensors: Record<string, TensorInput> = {};
    for (const dtype of ["F32", "F16", "BF16"] as const) {
      tensors[`w.${dtype}`] = { dtype, shape: [f32.length], data: encodeFloat32(f32, dtype) };
      expected[`w.${dtype}`] = { dtype, shape: [f32.length], values: Array.from(f32, text) };
    }
    const ints = { I32: new Int32Array([-7, 0, 2 ** 31 - 1]), I64: new BigInt64Array([-(2n ** 40n), 3n, 0n]), U8: new Uint8Array([0, 255, 17]) };
    for (const [dtype, data] of Object.entries(ints)) {
      tensors[`ids.${dtype}`] = { dtype: dtype as Dtype, shape: [3], data };
      expected[`ids.${dtype}`] = { dtype, shape: [3], values: Array.from(data as ArrayLike<number | bigint>, text) };
    }
    writeSafetensors(file, tensors);
    const expectedFile = tmpFile("expected.json");
    fs.writeFileSync(expectedFile, JSON.stringify(expected));
    const run = Bun.spawnSync([PYTHON, path.join(FIXTURES, "py_reader.py"), file, expectedFile]);
    expect(run.stdout.toString() + run.stderr.toString()).toBe("OK\n");
    expect(run.exitCode).toBe(0);
  });
});

describe("corrupt files give one line naming the file and tensor", () => {
  /** A file from a header (object or raw text), data bytes, and optionally a forged length field. */
  function craft(name: string, header: object | string | Uint8Array, dataBytes = 0, lengthField?: bigint): string {
    const text = typeof header === "string" ? Buffer.from(header) : header instanceof Uint8Array ? header : Buffer.from(JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(lengthField ?? BigInt(text.length));
    const file = tmpFile(name);
    fs.writeFileSync(file, Buffer.concat([len, text, Buffer.alloc(dataBytes)]));
    return file;
  }
  const t = (dtype: string, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });

  test("file shorter than 8 bytes", () => {
    const file = tmpFile("short.safetensors");
    fs.writeFileSync(file, Buffer.from([1, 2, 3]));
    expectUserError(() => readSafetensors(file), file, "3 bytes");
  });
  test("missing file", () => {
    expectUserError(() => readSafetensors(path.join(tmpRoot, "nope.safetensors")), "nope.safetensors", "no such file");
  });
  test("header length over the limit", () => {
    const file = craft("huge.safetensors", "{}", 0, 100_000_001n);
    expectUserError(() => readSafetensors(file), file, "100000000");
  });
  test("header length past the end of the file", () => {
    const file = craft("past.safetensors", "{}", 0, 64n);
    expectUserError(() => readSafetensors(file), file, "past the end");
  });
  test("header not UTF-8", () => {
    const file = craft("utf8.safetensors", new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]));
    expectUserError(() => readSafetensors(file), file, "UTF-8");
  });
  test("header not starting with '{'", () => {
    const file = craft("start.safetensors", ' {"a":1}');
    expectUserError(() => readSafetensors(file), file, "start with '{'");
    const arr = craft("array.safetensors", "[]");
    expectUserError(() => readSafetensors(arr), arr, "start with '{'");
  });
  test("header not JSON", () => {
    const file = craft("json.safetensors", '{"w": {"dtype": "F32",');
    expectUserError(() => readSafetensors(file), file, "not valid JSON");
  });
  test("unknown dtype", () => {
    const file = craft("dtype.safetensors", { "layer.w": t("Q4_K", [2], [0, 8]) }, 8);
    expectUserError(() => readSafetensors(file), file, "'layer.w'", "Q4_K");
  });
  test("shape not a list of non-negative integers", () => {
    for (const shape of [[2, -1], [1.5], "2", [null]]) {
      const file = craft("shape.safetensors", { "layer.w": t("F32", shape, [0, 8]) }, 8);
      expectUserError(() => readSafetensors(file), file, "'layer.w'", "shape");
    }
  });
  test("data_offsets not [begin, end] with begin <= end", () => {
    for (const offsets of [[8, 0], [0], [0, 8, 9], [-8, 0], "0,8"]) {
      const file = craft("offs.safetensors", { "layer.w": t("F32", [2], offsets) }, 8);
      expectUserError(() => readSafetensors(file), file, "'layer.w'", "data_offsets");
    }
  });
  test("byte size does not match shape x dtype", () => {
    const file = craft("size.safetensors", { "layer.w": t("F32", [3], [0, 8]) }, 8);
    expectUserError(() => readSafetensors(file), file, "'layer.w'", "needs 12 bytes", "hold 8");
  });
  test("overlapping offsets", () => {
    const file = craft("overlap.safetensors", { a: t("F32", [2], [0, 8]), b: t("F32", [2], [4, 12]) }, 12);
    expectUserError(() => readSafetensors(file), file, "'b'", "overlap tensor 'a'");
  });
  test("hole between tensors", () => {
    const file = craft("hole.safetensors", { a: t("F32", [2], [0, 8]), b: t("F32", [1], [12, 16]) }, 16);
    expectUserError(() => readSafetensors(file), file, "'b'", "hole of 4 bytes");
    const start = craft("hole0.safetensors", { a: t("F32", [1], [4, 8]) }, 8);
    expectUserError(() => readSafetensors(start), start, "'a'", "hole");
  });
  test("data not ending at the end of the file", () => {
    const trailing = craft("trailing.safetensors", { a: t("F32", [2], [0, 8]) }, 12);
    expectUserError(() => readSafetensors(trailing), trailing, "trailing");
    const truncated = craft("truncated.safetensors", { a: t("F32", [2], [0, 8]) }, 5);
    expectUserError(() => readSafetensors(truncated), truncated, "'a'", "past the end");
  });
  test("__metadata__ not a string map", () => {
    const file = craft("meta.safetensors", { __metadata__: { epoch: 3 } });
    expectUserError(() => readSafetensors(file), file, "__metadata__");
  });
});

describe("atomic file writes", () => {
  const big = () => ({ w: { dtype: "F32" as const, shape: [64, 64], data: randomFloats(4096, 9) } });

  test("a write that fails midway leaves the previous file intact and no temp file", () => {
    const file = tmpFile("keep.safetensors");
    writeSafetensors(file, { old: { dtype: "F32", shape: [1], data: new Float32Array([42]) } });
    const before = fs.readFileSync(file);
    atomicTestHooks.afterChunk = (_tmp, index) => {
      if (index === 1) throw new Error("simulated crash");
    };
    try {
      expect(() => writeSafetensors(file, big())).toThrow("simulated crash");
    } finally {
      atomicTestHooks.afterChunk = undefined;
    }
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    expect(findAtomicLeftovers(file)).toEqual([]);
  });

  test("a process killed mid-write leaves the previous file intact; the leftover is recognisable", () => {
    const file = tmpFile("killed.safetensors");
    writeSafetensors(file, { old: { dtype: "F32", shape: [1], data: new Float32Array([42]) } });
    const script = tmpFile("child.ts");
    fs.writeFileSync(
      script,
      `import { atomicTestHooks } from ${JSON.stringify(path.join(import.meta.dir, "..", "src", "io", "atomic.ts"))};
       import { writeSafetensors } from ${JSON.stringify(path.join(import.meta.dir, "..", "src", "io", "safetensors.ts"))};
       atomicTestHooks.afterChunk = (_t, i) => { if (i === 1) process.kill(process.pid, "SIGKILL"); };
       writeSafetensors(${JSON.stringify(file)}, { w: { dtype: "F32", shape: [4096], data: new Float32Array(4096).fill(1) } });
       console.log("not killed");`,
    );
    const run = Bun.spawnSync([process.execPath, script]);
    expect(run.signalCode).toBe("SIGKILL");
    expect(run.stdout.toString()).not.toContain("not killed");
    expect(tensorToFloat32(readSafetensors(file).tensors.get("old")!)[0]).toBe(42);
    const leftovers = findAtomicLeftovers(file);
    expect(leftovers.length).toBe(1);
    expect(isAtomicLeftoverName(leftovers[0])).toBe(true);
    expect(leftovers[0].endsWith(".safetensors")).toBe(false);
  });

  test("writeFileAtomic reports an unwritable target as one line", () => {
    expectUserError(() => writeFileAtomic(path.join(tmpRoot, "no-such-dir", "f.txt"), "x"), "no-such-dir", "no such file");
  });
});
