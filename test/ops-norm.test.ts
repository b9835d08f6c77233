import { describe, expect, test } from "bun:test";
import { getGpu } from "../src/gpu/device.ts";
import { empty, read, submit, upload, zeros } from "../src/gpu/tensor.ts";
import { planRmsNormBackward, planRmsNormForward } from "../src/ops/norm.ts";
import { rmsnormBackward, rmsnormForward } from "../src/reference/rmsnorm.ts";
import { expectClose, randomArray } from "./harness.ts";
import { expectBitIdentical, gpuFdCheck, probe, runAndRead } from "./ops-fd.ts";

const EPS = 1e-5;
// Row sums of d f32 products: rounding ~ sqrt(d) * 6e-8 relative; the dw column sums add N rows.
const TOL = { atol: 2e-5, rtol: 1e-4 };

async function forwardCase(N: number, d: number) {
  const gpu = await getGpu();
  const x = randomArray(N * d, 10 + N + d, 2);
  const w = randomArray(d, 11 + d);
  const X = upload(gpu, x), W = upload(gpu, w), Y = empty(gpu, [N, d]), R = empty(gpu, [N]);
  submit(gpu, await planRmsNormForward(gpu, { x: X, w: W, y: Y, rstd: R, N, d, eps: EPS }));
  const want = rmsnormForward(x, w, N, d, EPS);
  expectClose(await read(Y), want.y, TOL, `rmsnorm y N=${N} d=${d}`);
  expectClose(await read(R), want.rstd, TOL, `rmsnorm rstd N=${N} d=${d}`);
  for (const t of [X, W, Y, R]) t.release();
}

async function backwardCase(N: number, d: number, accumulate: boolean) {
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
  submit(gpu, await planRmsNormBackward(gpu, { dy: DY, x: X, w: W, rstd: R, dx: DX, dw: DW, N, d, accumulateDx: accumulate }));
  const want = rmsnormBackward(dy, x, w, rstd, N, d);
  const wantDx = accumulate ? want.dx.map((v, i) => v + dx0[i]!) : want.dx;
  const wantDw = want.dw.map((v, i) => v + dw0[i]!);
  expectClose(await read(DX), wantDx, TOL, `rmsnorm dx N=${N} d=${d}`);
  expectClose(await read(DW), wantDw, { atol: 1e-5 * Math.sqrt(N), rtol: 1e-4 }, `rmsnorm dw N=${N} d=${d}`);
  for (const t of [X, W, DY, R, DX, DW]) t.release();
}

describe("rmsnorm kernels vs reference", () => {
  for (const [N, d] of [[37, 48], [5, 300], [1, 1], [130, 7], [3, 1000]] as const) {
    test(`forward N=${N} d=${d}`, () => forwardCase(N, d));
    test(`backward N=${N} d=${d}`, () => backwardCase(N, d, false));
  }
  test("backward adds dx into an existing residual gradient", () => backwardCase(37, 48, true));

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
    await gpuFdCheck("rmsnorm dx", x, X, dx, loss);
    await gpuFdCheck("rmsnorm dw", w, W, dw, loss);
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
