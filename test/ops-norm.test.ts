import { describe, expect, test } from "bun:test";
import { getGpu } from "../src/gpu/device.ts";
import { empty, read, submit, upload, zeros } from "../src/gpu/tensor.ts";
import { normWorkgroup, planRmsNormBackward, planRmsNormForward, rmsNormBackwardBlocks } from "../src/ops/norm.ts";
import { rmsnormBackward, rmsnormForward } from "../src/reference/rmsnorm.ts";
import { expectClose, randomArray } from "./harness.ts";
import { expectBitIdentical, gpuFdCheck, probe, runAndRead } from "./ops-fd.ts";

const EPS = 1e-5;
// Row sums of d f32 products against an f64 reference: a few ulp of the O(1) outputs (|y| < 2).
const Y_TOL = { atol: 1e-6, rtol: 0 }; // measured max abs 2.4e-7 (worst of the 5 shapes)
const RSTD_TOL = { atol: 6e-7, rtol: 0 }; // measured max abs 1.2e-7
const DX_TOL = { atol: 6e-7, rtol: 0 }; // measured max abs 1.2e-7 (6 cases)
// the dw column sums add N rows of O(1) products: the error grows like sqrt(N)
const dwTol = (N: number) => ({ atol: 1.5e-6 * Math.sqrt(N), rtol: 0 }); // measured max abs 3.8e-6 at N=130 (3.3e-7 * sqrt(N))

async function forwardCase(N: number, d: number) {
  const gpu = await getGpu();
  const x = randomArray(N * d, 10 + N + d, 2);
  const w = randomArray(d, 11 + d);
  const X = upload(gpu, x), W = upload(gpu, w), Y = empty(gpu, [N, d]), R = empty(gpu, [N]);
  submit(gpu, await planRmsNormForward(gpu, { x: X, w: W, y: Y, rstd: R, N, d, eps: EPS }));
  const want = rmsnormForward(x, w, N, d, EPS);
  expectClose(await read(Y), want.y, Y_TOL, `rmsnorm y N=${N} d=${d}`);
  expectClose(await read(R), want.rstd, RSTD_TOL, `rmsnorm rstd N=${N} d=${d}`);
  for (const t of [X, W, Y, R]) t.release();
}

/** Runs one backward against the reference; returns how many dispatches the plan has. */
async function backwardCase(N: number, d: number, accumulate: boolean): Promise<number> {
  const gpu = await getGpu();
  const x = randomArray(N * d, 20 + N + d, 2);
  const w = randomArray(d, 21 + d);
  const dy = randomArray(N * d, 22 + N * d);
  const dx0 = randomArray(N * d, 23 + d);
  const dw0 = randomArray(d, 24 + d);
  const { rstd } = rmsnormForward(x, w, N, d, EPS);
  const X = upload(gpu, x), W = upload(gpu, w), DY = upload(gpu, dy), R = upload(gpu, rstd);
  const DX = accumulate ? upload(gpu, dx0) : empty(gpu, [N, d]);
  const DW = upload(gpu, dw0);
  const plan = await planRmsNormBackward(gpu, { dy: DY, x: X, w: W, rstd: R, dx: DX, dw: DW, N, d, accumulateDx: accumulate });
  submit(gpu, plan);
  const want = rmsnormBackward(dy, x, w, rstd, N, d);
  const wantDx = accumulate ? want.dx.map((v, i) => v + dx0[i]!) : want.dx;
  const wantDw = want.dw.map((v, i) => v + dw0[i]!);
  expectClose(await read(DX), wantDx, DX_TOL, `rmsnorm dx N=${N} d=${d}`);
  expectClose(await read(DW), wantDw, dwTol(N), `rmsnorm dw N=${N} d=${d}`);
  for (const t of [X, W, DY, R, DX, DW]) t.release();
  return plan.length;
}

describe("rmsnorm kernels vs reference", () => {
  for (const [N, d] of [[37, 48], [5, 300], [1, 1], [130, 7], [3, 1000]] as const) {
    test(`forward N=${N} d=${d}`, () => forwardCase(N, d));
    test(`backward N=${N} d=${d}`, () => backwardCase(N, d, false));
  }
  test("backward adds dx into an existing residual gradient", () => backwardCase(37, 48, true));

  // Mixed precision stores y in f16: the f32 value rounded once, so within 2^-11 relative of the reference
  // (plus the f32 sums' error); an odd N * d also exercises the last half-filled word.
  for (const [N, d] of [[37, 48], [3, 7]] as const) {
    test(`forward into an f16 y, N=${N} d=${d}`, async () => {
      const gpu = await getGpu();
      const x = randomArray(N * d, 30 + N + d, 2), w = randomArray(d, 31 + d);
      const X = upload(gpu, x), W = upload(gpu, w), Y = empty(gpu, [N, d], "f16"), R = empty(gpu, [N]);
      submit(gpu, await planRmsNormForward(gpu, { x: X, w: W, y: Y, rstd: R, N, d, eps: EPS }));
      const want = rmsnormForward(x, w, N, d, EPS);
      const got = await read(Y);
      expectClose(got, want.y, { atol: Y_TOL.atol, rtol: 2 ** -11 }, `rmsnorm f16 y N=${N} d=${d}`);
      expect(got.every((v) => v === Math.f16round(v))).toBe(true);
      expectClose(await read(R), want.rstd, RSTD_TOL, `rmsnorm rstd N=${N} d=${d}`);
      for (const t of [X, W, Y, R]) t.release();
    });
  }

  // Several row blocks, the last one short, and d past a whole number of workgroup widths, with either
  // tuning (MHMOE_TUNING=gpu: 256 threads, up to 256 blocks; lavapipe: 64 threads, up to 8 blocks).
  test("backward over several row blocks (N not a multiple of the block, d not of the workgroup): 2 dispatches", async () => {
    const gpu = await getGpu();
    const N = 601, d = 300;
    const { blocks, rowsPerBlock } = rmsNormBackwardBlocks(gpu, N);
    expect(blocks).toBeGreaterThan(1);
    expect(N % rowsPerBlock).not.toBe(0);
    expect(d % normWorkgroup(gpu)).not.toBe(0);
    expect(d).toBeGreaterThan(normWorkgroup(gpu));
    expect(await backwardCase(N, d, false)).toBe(2);
    expect(await backwardCase(N, d, true)).toBe(2);
  });

  // Rows of magnitude 1e-4 .. 1e-2, so mean(x^2) runs from ~3e-9 (eps dominates) through ~eps to ~3e-5:
  // an eps 5% off moves rstd by 2.4% on the smallest rows; scaled by 10 or 0.1, dropped, or added outside
  // the sqrt, by 3x to 55x (each checked against a mutated shaders/norm.wgsl).
  test("small-scale rows where eps is comparable to mean(x^2): GPU forward then backward vs reference", async () => {
    const gpu = await getGpu();
    const N = 9, d = 64;
    const x = randomArray(N * d, 51);
    for (let n = 0; n < N; n++) {
      const scale = 10 ** (-4 + (2 * n) / (N - 1));
      for (let i = 0; i < d; i++) x[n * d + i]! *= scale;
    }
    const w = randomArray(d, 52), dy = randomArray(N * d, 53);
    const X = upload(gpu, x), W = upload(gpu, w), Y = empty(gpu, [N, d]), R = empty(gpu, [N]);
    const DY = upload(gpu, dy), DX = empty(gpu, [N, d]), DW = zeros(gpu, [d]);
    submit(gpu, [
      ...(await planRmsNormForward(gpu, { x: X, w: W, y: Y, rstd: R, N, d, eps: EPS })),
      ...(await planRmsNormBackward(gpu, { dy: DY, x: X, w: W, rstd: R, dx: DX, dw: DW, N, d })),
    ]);
    const want = rmsnormForward(x, w, N, d, EPS);
    const wantBack = rmsnormBackward(dy, x, w, want.rstd, N, d);
    // rstd runs from ~150 to ~316 here and dx scales with it
    expectClose(await read(R), want.rstd, { atol: 0, rtol: 5e-7 }, "small-scale rstd"); // measured max rel 9.7e-8
    expectClose(await read(Y), want.y, { atol: 6e-7, rtol: 0 }, "small-scale y"); // measured max abs 1.2e-7
    expectClose(await read(DX), wantBack.dx, { atol: 2e-4, rtol: 0 }, "small-scale dx"); // measured max abs 3.1e-5 (max rel 4.4e-6)
    expectClose(await read(DW), wantBack.dw, { atol: 1e-6, rtol: 0 }, "small-scale dw"); // measured max abs 1.8e-7
    for (const t of [X, W, Y, R, DY, DX, DW]) t.release();
  });

  test("backward matches finite differences of the GPU forward (x and w)", async () => {
    const gpu = await getGpu();
    const N = 3, d = 5;
    const x = randomArray(N * d, 31, 1.5), w = randomArray(d, 32), probeW = randomArray(N * d, 33);
    const X = upload(gpu, x), W = upload(gpu, w), Y = empty(gpu, [N, d]), R = empty(gpu, [N]);
    const fwd = await planRmsNormForward(gpu, { x: X, w: W, y: Y, rstd: R, N, d, eps: EPS });
    const loss = async () => probe(await runAndRead(gpu, fwd, Y), probeW);
    submit(gpu, fwd);
    const DY = upload(gpu, probeW), DX = empty(gpu, [N, d]), DW = zeros(gpu, [d]);
    submit(gpu, await planRmsNormBackward(gpu, { dy: DY, x: X, w: W, rstd: R, dx: DX, dw: DW, N, d }));
    const dx = await read(DX), dw = await read(DW);
    await gpuFdCheck("rmsnorm dx", x, X, dx, loss, { atol: 2e-4, rtol: 0 }); // measured max abs 3.9e-5 (max rel 2.3e-4)
    await gpuFdCheck("rmsnorm dw", w, W, dw, loss, { atol: 1e-5, rtol: 0 }); // measured max abs 1.9e-6
    for (const t of [X, W, Y, R, DY, DX, DW]) t.release();
  });

  test("backward is bit-identical run to run", async () => {
    const gpu = await getGpu();
    const N = 301, d = 96;
    const x = randomArray(N * d, 41), w = randomArray(d, 42), dy = randomArray(N * d, 43);
    const { rstd } = rmsnormForward(x, w, N, d, EPS);
    const X = upload(gpu, x), W = upload(gpu, w), DY = upload(gpu, dy), R = upload(gpu, rstd);
    const DX = empty(gpu, [N, d]), DW = zeros(gpu, [d]);
    const plan = await planRmsNormBackward(gpu, { dy: DY, x: X, w: W, rstd: R, dx: DX, dw: DW, N, d });
    const runs: Float32Array[][] = [];
    for (let r = 0; r < 2; r++) {
      DW.gpu.device.queue.writeBuffer(DW.buffer, 0, new Float32Array(d));
      submit(gpu, plan);
      runs.push([await read(DX), await read(DW)]);
    }
    expectBitIdentical(runs[0]![0]!, runs[1]![0]!, "rmsnorm dx");
    expectBitIdentical(runs[0]![1]!, runs[1]![1]!, "rmsnorm dw");
    expect(runs[0]![1]!.some((v) => v !== 0)).toBe(true);
    for (const t of [X, W, DY, R, DX, DW]) t.release();
  });
});
