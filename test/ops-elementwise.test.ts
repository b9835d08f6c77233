import { describe, expect, test } from "bun:test";
import { getGpu } from "../src/gpu/device.ts";
import { empty, read, submit, upload, write, zeros } from "../src/gpu/tensor.ts";
import {
  planAccumulate, planAdd, planAxpby, planCopy, planFill, planScale, planSum, planSumSquares,
} from "../src/ops/elementwise.ts";
import { addInPlace, residualAdd } from "../src/reference/tensor.ts";
import { expectClose, randomArray } from "./harness.ts";
import { expectBitIdentical } from "./ops-fd.ts";

// Single f32 operations are exact to rounding: compare against the same operations done in f32 on the host.
const EXACT = { atol: 0, rtol: 0 };

describe("elementwise kernels", () => {
  test("add (residual) matches the reference exactly, n not a multiple of the workgroup", async () => {
    const gpu = await getGpu();
    const n = 37 * 48 + 5;
    const a = randomArray(n, 1), b = randomArray(n, 2);
    const A = upload(gpu, a), B = upload(gpu, b), Y = empty(gpu, [n]);
    submit(gpu, await planAdd(gpu, { a: A, b: B, y: Y }));
    expectClose(await read(Y), residualAdd(a, b), EXACT, "add");
    for (const t of [A, B, Y]) t.release();
  });

  test("accumulate y += x matches addInPlace; scaled accumulate y += 0.5 x", async () => {
    const gpu = await getGpu();
    const n = 1001;
    const x = randomArray(n, 3), y = randomArray(n, 4);
    const X = upload(gpu, x), Y = upload(gpu, y);
    submit(gpu, await planAccumulate(gpu, { x: X, y: Y }));
    const want = Float32Array.from(y);
    addInPlace(want, x);
    expectClose(await read(Y), want, EXACT, "accumulate");
    submit(gpu, await planAccumulate(gpu, { x: X, y: Y, alpha: 0.5 }));
    expectClose(await read(Y), want.map((v, i) => Math.fround(v + Math.fround(0.5 * x[i]!))), EXACT, "accumulate alpha 0.5");
    for (const t of [X, Y]) t.release();
  });

  test("strided axpby over windows of wider buffers; copy never reads dst (NaN there stays out)", async () => {
    const gpu = await getGpu();
    const rows = 37, cols = 13, ldS = 50, offS = 3, ldD = 48, offD = 5;
    const src = randomArray(offS + rows * ldS, 5);
    const dst0 = randomArray(offD + rows * ldD, 6);
    const S = upload(gpu, src), D = upload(gpu, dst0);
    submit(gpu, await planAxpby(gpu, { src: { tensor: S, offset: offS, ld: ldS }, dst: { tensor: D, offset: offD, ld: ldD }, rows, cols, alpha: 0.5, beta: 2 }));
    const want = Float32Array.from(dst0);
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols; c++) {
        const i = offD + r * ldD + c;
        want[i] = Math.fround(Math.fround(0.5 * src[offS + r * ldS + c]!) + Math.fround(2 * dst0[i]!));
      }
    expectClose(await read(D), want, EXACT, "axpby strided (elements outside the window untouched)");

    write(D, new Float32Array(D.size).fill(NaN));
    submit(gpu, await planCopy(gpu, { src: { tensor: S, offset: offS, ld: ldS }, dst: { tensor: D, offset: offD, ld: ldD }, rows, cols }));
    const got = await read(D);
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols; c++) expect(got[offD + r * ldD + c]).toBe(src[offS + r * ldS + c]!);
    expect(Number.isNaN(got[offD + cols])).toBe(true);
    for (const t of [S, D]) t.release();
  });

  test("a window past the end of its tensor is refused at plan time", async () => {
    const gpu = await getGpu();
    const S = zeros(gpu, [100]), D = zeros(gpu, [100]);
    await expect(planCopy(gpu, { src: { tensor: S, ld: 20 }, dst: D, rows: 6, cols: 10 })).rejects.toThrow(/past the tensor/);
    for (const t of [S, D]) t.release();
  });

  test("scale in place and fill", async () => {
    const gpu = await getGpu();
    const n = 333;
    const x = randomArray(n, 7);
    const X = upload(gpu, x);
    submit(gpu, await planScale(gpu, { x: X, alpha: -3 }));
    expectClose(await read(X), x.map((v) => Math.fround(-3 * v)), EXACT, "scale");
    submit(gpu, await planFill(gpu, { out: X, value: 2.5, n: 300 }));
    const got = await read(X);
    expect(got.slice(0, 300).every((v) => v === 2.5)).toBe(true);
    expect(got[300]).toBe(Math.fround(-3 * x[300]!));
    X.release();
  });

  test("global sum of squares over several tensors and a sub-range, deterministic", async () => {
    const gpu = await getGpu();
    const sizes = [1, 37 * 48, 5000, 129];
    const data = sizes.map((n, i) => randomArray(n, 20 + i));
    const T = data.map((d) => upload(gpu, d));
    const Out = zeros(gpu, [1]);
    const plan = await planSumSquares(gpu, { inputs: [...T, { tensor: T[2]!, offset: 100, n: 50 }], out: Out });
    let want = 0;
    for (const d of data) for (const v of d) want += v * v;
    for (let i = 100; i < 150; i++) want += data[2]![i]! ** 2;
    submit(gpu, plan);
    const first = await read(Out);
    expectClose(first, [want], { atol: 0, rtol: 4e-7 }, "sum of squares"); // measured rel 8.0e-8
    submit(gpu, plan);
    expectBitIdentical(first, await read(Out), "sum of squares");
    for (const t of [...T, Out]) t.release();
  });

  test("sum with scale gives a mean", async () => {
    const gpu = await getGpu();
    const x = randomArray(301, 30);
    const X = upload(gpu, x), Out = zeros(gpu, [1]);
    submit(gpu, [await planSum(gpu, { x: X, out: Out, scale: 1 / 301 })]);
    const want = x.reduce((s, v) => s + v, 0) / 301;
    // A tree sum in f32: each of its ceil(log2 n) + 1 levels rounds by at most 2^-24 of what it adds, so
    // |error| <= (log2 n + 1) 2^-24 sum|x| / n. Measured 3.4e-10 with CPU tuning, 4.5e-9 with GPU tuning.
    const bound = (Math.ceil(Math.log2(301)) + 1) * 2 ** -24 * x.reduce((s, v) => s + Math.abs(v), 0) / 301;
    expectClose(await read(Out), [want], { atol: bound, rtol: 0 }, "mean");
    for (const t of [X, Out]) t.release();
  });
});
