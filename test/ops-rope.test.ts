import { describe, expect, test } from "bun:test";
import { getGpu } from "../src/gpu/device.ts";
import { empty, read, submit, upload } from "../src/gpu/tensor.ts";
import { planRopeBackward, planRopeForward, ropeTable } from "../src/ops/rope.ts";
import { ropeBackward, ropeForward, ropeTables } from "../src/reference/rope.ts";
import { expectClose, randomArray } from "./harness.ts";
import { expectBitIdentical, gpuFdCheck, probe, runAndRead } from "./ops-fd.ts";

const THETA = 10000;
// Two products and a sum per element with f32 cos/sin (the reference takes them in f64): about an ulp
// of the O(1) outputs.
const TOL = { atol: 5e-7, rtol: 0 }; // measured max abs 1.2e-7 (worst over the 12 shape cases, T=255/250/37, fused q/k)

describe("rope kernels vs reference", () => {
  test("table holds cos then sin of p * theta^(-2i/dHead), rounded once to f32", async () => {
    const gpu = await getGpu();
    const maxT = 19, dHead = 10, half = 5;
    const table = ropeTable(gpu, maxT, dHead, THETA);
    expect([...table.shape]).toEqual([2, maxT, half]);
    const got = await read(table);
    const ref = ropeTables(maxT, dHead, THETA);
    for (let t = 0; t < maxT; t++)
      for (let i = 0; i < half; i++) {
        expect(got[t * half + i]).toBe(Math.fround(ref.cos[t * dHead + i]!));
        expect(got[(maxT + t) * half + i]).toBe(Math.fround(ref.sin[t * dHead + i]!));
      }
    table.release();
  });

  // B=2 checks that positions restart per sequence; a table longer than T checks tableRows addressing.
  for (const [B, T, H, dHead] of [[2, 7, 3, 10], [3, 37, 2, 48], [1, 1, 1, 2]] as const) {
    for (const dir of ["forward", "backward"] as const) {
      for (const inPlace of [false, true]) {
        test(`${dir} B=${B} T=${T} H=${H} dHead=${dHead}${inPlace ? " in place" : ""}`, async () => {
          const gpu = await getGpu();
          const n = B * T * H * dHead;
          const x = randomArray(n, B * 100 + T + dHead);
          const table = ropeTable(gpu, T + 5, dHead, THETA);
          const X = upload(gpu, x);
          const Y = inPlace ? X : empty(gpu, [n]);
          const args = { x: X, y: inPlace ? undefined : Y, table, B, T, H, dHead };
          submit(gpu, await (dir === "forward" ? planRopeForward(gpu, args) : planRopeBackward(gpu, args)));
          const tabs = ropeTables(T, dHead, THETA);
          const want = dir === "forward" ? ropeForward(x, B, T, H, dHead, tabs) : ropeBackward(x, B, T, H, dHead, tabs);
          expectClose(await read(Y), want, TOL, `rope ${dir}`);
          for (const t of new Set([X, Y, table])) t.release();
        });
      }
    }
  }

  // The table as the model makes it, for max_position_embeddings = 256, and T up to its end: with 255 and
  // 250 the last of the kernel's 256-wide workgroups (over B*T*H*dHead/2 pairs) is partial; 37 is small
  // and odd. Positions near 255 take the largest angles (254 rad at i = 0).
  for (const T of [255, 250, 37]) {
    test(`forward and backward at T=${T} with a 256-position table`, async () => {
      const gpu = await getGpu();
      const B = 1, H = 3, dHead = 8, n = B * T * H * dHead;
      const table = ropeTable(gpu, 256, dHead, THETA);
      const x = randomArray(n, 90 + T), dy = randomArray(n, 91 + T);
      const X = upload(gpu, x), Y = empty(gpu, [n]), DY = upload(gpu, dy), DX = empty(gpu, [n]);
      submit(gpu, [
        ...(await planRopeForward(gpu, { x: X, y: Y, table, B, T, H, dHead })),
        ...(await planRopeBackward(gpu, { x: DY, y: DX, table, B, T, H, dHead })),
      ]);
      const tabs = ropeTables(T, dHead, THETA);
      expectClose(await read(Y), ropeForward(x, B, T, H, dHead, tabs), TOL, `rope forward T=${T}`);
      expectClose(await read(DX), ropeBackward(dy, B, T, H, dHead, tabs), TOL, `rope backward T=${T}`);
      for (const t of [X, Y, DY, DX, table]) t.release();
    });
  }

  test("q and k rotated in place inside a fused [N, 3*H*dHead] qkv buffer; v untouched", async () => {
    const gpu = await getGpu();
    const B = 2, T = 5, H = 3, dHead = 8, w = H * dHead, N = B * T;
    const qkv = randomArray(N * 3 * w, 77);
    const QKV = upload(gpu, qkv);
    const table = ropeTable(gpu, T, dHead, THETA);
    for (const off of [0, w]) submit(gpu, await planRopeForward(gpu, { x: QKV, table, B, T, H, dHead, ldX: 3 * w, offX: off }));
    const got = await read(QKV);
    const tabs = ropeTables(T, dHead, THETA);
    for (const [part, off] of [["q", 0], ["k", w]] as const) {
      const slice = new Float32Array(N * w);
      for (let n = 0; n < N; n++) slice.set(qkv.subarray(n * 3 * w + off, n * 3 * w + off + w), n * w);
      const want = ropeForward(slice, B, T, H, dHead, tabs);
      const gotSlice = new Float32Array(N * w);
      for (let n = 0; n < N; n++) gotSlice.set(got.subarray(n * 3 * w + off, n * 3 * w + off + w), n * w);
      expectClose(gotSlice, want, TOL, `fused ${part}`);
    }
    for (let n = 0; n < N; n++)
      for (let i = 2 * w; i < 3 * w; i++) expect(got[n * 3 * w + i]).toBe(qkv[n * 3 * w + i]!);
    for (const t of [QKV, table]) t.release();
  });

  test("backward matches finite differences of the GPU forward, and is bit-identical run to run", async () => {
    const gpu = await getGpu();
    const B = 2, T = 3, H = 2, dHead = 4, n = B * T * H * dHead;
    const x = randomArray(n, 81), w = randomArray(n, 82);
    const table = ropeTable(gpu, T, dHead, THETA);
    const X = upload(gpu, x), Y = empty(gpu, [n]);
    const fwd = await planRopeForward(gpu, { x: X, y: Y, table, B, T, H, dHead });
    const W = upload(gpu, w), DX = empty(gpu, [n]);
    const bwd = await planRopeBackward(gpu, { x: W, y: DX, table, B, T, H, dHead });
    const dx = await runAndRead(gpu, bwd, DX);
    // measured max abs 1.2e-6
    await gpuFdCheck("rope dx", x, X, dx, async () => probe(await runAndRead(gpu, fwd, Y), w), { atol: 6e-6, rtol: 0 });
    expectBitIdentical(dx, await runAndRead(gpu, bwd, DX), "rope backward");
    for (const t of [X, Y, W, DX, table]) t.release();
  });

  test("a table too short for T is refused", async () => {
    const gpu = await getGpu();
    const table = ropeTable(gpu, 4, 8, THETA);
    const X = empty(gpu, [2 * 5 * 8]);
    await expect(planRopeForward(gpu, { x: X, table, B: 2, T: 5, H: 1, dHead: 8 })).rejects.toThrow(/does not cover/);
    for (const t of [X, table]) t.release();
  });
});

// Mixed precision stores q, k in f16: x and y may each be f16 (in place, one f16 buffer). The rotation
// runs in f32 on the f16 values, which f32 holds exactly, so an f32 y has TOL's error against the f64
// reference on the rounded x; an f16 y is that f32 value rounded once to nearest, half an f16 ulp more:
// rtol 2^-11 (plus 2^-25, half the spacing of f16 subnormals, in atol).
describe("rope kernels with f16 storage", () => {
  const F16_TOL = { atol: TOL.atol + 2 ** -25, rtol: 2 ** -11 };
  const f16round = (x: Float32Array) => Float32Array.from(x, Math.f16round);
  const B = 2, T = 7, H = 3, dHead = 10, n = B * T * H * dHead;
  for (const dir of ["forward", "backward"] as const) {
    for (const [xT, yT] of [["f16", "f16"], ["f16", "f32"], ["f32", "f16"], ["f16", "in place"]] as const) {
      test(`${dir} x ${xT}, y ${yT}`, async () => {
        const gpu = await getGpu();
        const x = f16round(randomArray(n, 300 + xT.length + yT.length));
        const table = ropeTable(gpu, T + 2, dHead, THETA);
        const X = xT === "f16" ? upload(gpu, Float16Array.from(x)) : upload(gpu, x);
        const Y = yT === "in place" ? X : empty(gpu, [n], yT);
        const args = { x: X, y: yT === "in place" ? undefined : Y, table, B, T, H, dHead };
        submit(gpu, await (dir === "forward" ? planRopeForward(gpu, args) : planRopeBackward(gpu, args)));
        const tabs = ropeTables(T, dHead, THETA);
        const want = dir === "forward" ? ropeForward(x, B, T, H, dHead, tabs) : ropeBackward(x, B, T, H, dHead, tabs);
        expectClose(await read(Y), want, Y.dtype === "f16" ? F16_TOL : TOL, `rope ${dir} x ${xT} y ${yT}`);
        for (const t of new Set([X, Y, table])) t.release();
      });
    }
  }

  test("f16 storage changes only the stores: y16 is the f32 kernel's y rounded once, and f16 x reads exactly", async () => {
    const gpu = await getGpu();
    const x = f16round(randomArray(n, 401));
    const table = ropeTable(gpu, T, dHead, THETA);
    const X32 = upload(gpu, x), X16 = upload(gpu, Float16Array.from(x));
    const Y32 = empty(gpu, [n]), Y16 = empty(gpu, [n], "f16"), Y16to32 = empty(gpu, [n]);
    const dims = { table, B, T, H, dHead };
    submit(gpu, [
      ...(await planRopeForward(gpu, { x: X32, y: Y32, ...dims })),
      ...(await planRopeForward(gpu, { x: X32, y: Y16, ...dims })),
      ...(await planRopeForward(gpu, { x: X16, y: Y16to32, ...dims })),
    ]);
    const y32 = await read(Y32);
    expect(await read(Y16)).toEqual(f16round(y32));
    expect(await read(Y16to32)).toEqual(y32);
    expect(f16round(y32)).not.toEqual(y32);
    for (const t of [X32, X16, Y32, Y16, Y16to32, table]) t.release();
  });

  test("a table or x of another type is refused", async () => {
    const gpu = await getGpu();
    const table = ropeTable(gpu, 4, 8, THETA);
    const X = empty(gpu, [32]), I = empty(gpu, [32], "i32"), table16 = empty(gpu, [2, 4, 4], "f16");
    await expect(planRopeForward(gpu, { x: I, table, B: 1, T: 4, H: 1, dHead: 8 })).rejects.toThrow(/i32, expected f32 or f16/);
    await expect(planRopeForward(gpu, { x: X, table: table16, B: 1, T: 4, H: 1, dHead: 8 })).rejects.toThrow(/table is f16/);
    for (const t of [X, I, table, table16]) t.release();
  });
});
