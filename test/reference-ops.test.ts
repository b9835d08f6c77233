/**
 * Backbone reference ops: values on hand-checkable cases, backward by central finite differences on
 * Float64Array (measured |fd - analytic| 2e-11..2e-10, each check's atol 5x its own; see reference-fd.ts),
 * and f32 == f64 up to rounding. Closed-form values are checked to 14 digits (5e-15, a few ulp of
 * O(1) numbers): measured exact, or 1 ulp (<= 2.2e-16) where noted.
 */
import { describe, expect, test } from "bun:test";
import { geluTanhBackward, geluTanhForward, swigluBackward, swigluForward } from "../src/reference/activations.ts";
import { attentionBackward, attentionForward } from "../src/reference/attention.ts";
import { embeddingBackward, embeddingForward } from "../src/reference/embedding.ts";
import { linearBackward, linearForward, matmulNN, matmulNT, matmulTN } from "../src/reference/linear.ts";
import { crossEntropyBackward, crossEntropyForward } from "../src/reference/loss.ts";
import { rmsnormBackward, rmsnormForward } from "../src/reference/rmsnorm.ts";
import { ropeBackward, ropeForward, ropeTables } from "../src/reference/rope.ts";
import { addInPlace, residualAdd } from "../src/reference/tensor.ts";
import { Rng } from "../src/util/rng.ts";
import { checkGrad, dot, randn } from "./reference-fd.ts";

function transpose(a: Float64Array, rows: number, cols: number): Float64Array {
  const t = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = a[i * cols + j];
  return t;
}

describe("matmul layouts", () => {
  test("nn on a 2x2 example", () => {
    const c = matmulNN(new Float64Array([1, 2, 3, 4]), new Float64Array([5, 6, 7, 8]), 2, 2, 2);
    expect([...c]).toEqual([19, 22, 43, 50]);
  });
  test("nt and tn agree with nn on transposed operands (non-square)", () => {
    const rng = new Rng(1);
    const M = 3, K = 5, N = 4;
    const a = randn(rng, M * K), b = randn(rng, K * N);
    const ref = matmulNN(a, b, M, K, N);
    const nt = matmulNT(a, transpose(b, K, N), M, K, N);
    const tn = matmulTN(transpose(a, M, K), b, K, M, N);
    for (let i = 0; i < ref.length; i++) {
      expect(nt[i]).toBeCloseTo(ref[i], 14);
      expect(tn[i]).toBeCloseTo(ref[i], 14);
    }
  });
  test("f32 inputs give an f32 result equal to f64 up to rounding", () => {
    const rng = new Rng(2);
    const a = randn(rng, 12), b = randn(rng, 20);
    const c32 = matmulNT(Float32Array.from(a), Float32Array.from(b), 3, 4, 5);
    const c64 = matmulNT(a, b, 3, 4, 5);
    expect(c32).toBeInstanceOf(Float32Array);
    // measured max abs 3.1e-7 (sums of 4 products of N(0,1) values, rounded to f32)
    for (let i = 0; i < c64.length; i++) expect(Math.abs(c32[i] - c64[i])).toBeLessThan(1.5e-6);
  });
});

test("linear forward adds the bias and backward matches finite differences", () => {
  const rng = new Rng(3);
  const N = 3, inF = 4, outF = 5;
  const x = randn(rng, N * inF), w = randn(rng, outF * inF), b = randn(rng, outF), probe = randn(rng, N * outF);
  const y = linearForward(x, w, b, N, inF, outF);
  const noBias = linearForward(x, w, null, N, inF, outF);
  expect(y[outF + 2] - noBias[outF + 2]).toBeCloseTo(b[2], 14); // measured 2.2e-16
  const loss = () => dot(linearForward(x, w, b, N, inF, outF), probe);
  const g = linearBackward(probe, x, w, N, inF, outF, true);
  checkGrad("dx", x, g.dx, loss, { atol: 5e-10, rtol: 0 }); // measured max abs 1.1e-10
  checkGrad("dW", w, g.dWeight, loss, { atol: 4e-10, rtol: 0 }); // measured max abs 8.3e-11
  checkGrad("db", b, g.dBias!, loss, { atol: 2.5e-10, rtol: 0 }); // measured max abs 4.9e-11
});

test("embedding gathers rows and its backward scatter-adds repeated ids", () => {
  const rng = new Rng(4);
  const V = 6, d = 3;
  const table = randn(rng, V * d);
  const ids = new Int32Array([2, 5, 2, 0]);
  const out = embeddingForward(ids, table, V, d);
  expect([...out.subarray(3, 6)]).toEqual([...table.subarray(15, 18)]);
  const probe = randn(rng, ids.length * d);
  const dTable = embeddingBackward(ids, probe, V, d);
  expect(dTable[2 * d]).toBeCloseTo(probe[0] + probe[2 * d], 14);
  // measured max abs 2.9e-11
  checkGrad("dTable", table, dTable, () => dot(embeddingForward(ids, table, V, d), probe), { atol: 1.5e-10, rtol: 0 });
  expect(() => embeddingForward(new Int32Array([V]), table, V, d)).toThrow(/outside/);
});

test("rmsnorm normalises rows and backward matches finite differences", () => {
  const rng = new Rng(5);
  const N = 3, d = 8, eps = 1e-5;
  const x = randn(rng, N * d, 2), w = randn(rng, d), probe = randn(rng, N * d);
  const ones = new Float64Array(d).fill(1);
  const { y } = rmsnormForward(x, ones, N, d, eps);
  // mean(y^2) of a row is exactly mean(x^2) / (mean(x^2) + eps): 1 - 3.4e-6 here, so this pins eps too
  let ms = 0, msx = 0;
  for (let i = 0; i < d; i++) (ms += y[i] * y[i]), (msx += x[i] * x[i]);
  expect(ms / d).toBeCloseTo(msx / d / (msx / d + eps), 14); // measured 2.2e-16
  const loss = () => dot(rmsnormForward(x, w, N, d, eps).y, probe);
  const fwd = rmsnormForward(x, w, N, d, eps);
  const g = rmsnormBackward(probe, x, w, fwd.rstd, N, d);
  checkGrad("dx", x, g.dx, loss, { atol: 2e-10, rtol: 0 }); // measured max abs 4.4e-11
  checkGrad("dw", w, g.dw, loss, { atol: 2e-10, rtol: 0 }); // measured max abs 3.5e-11
});

describe("rope", () => {
  const B = 2, T = 5, H = 2, dh = 6;
  const tables = ropeTables(T, dh, 10000);
  test("position 0 is the identity and each rotated pair keeps its norm", () => {
    const rng = new Rng(6);
    const x = randn(rng, B * T * H * dh);
    const y = ropeForward(x, B, T, H, dh, tables);
    for (let i = 0; i < H * dh; i++) expect(y[i]).toBeCloseTo(x[i], 14);
    const base = (1 * T + 3) * H * dh + dh; // b=1, t=3, h=1
    for (let i = 0; i < dh / 2; i++) {
      const n0 = x[base + i] ** 2 + x[base + dh / 2 + i] ** 2;
      const n1 = y[base + i] ** 2 + y[base + dh / 2 + i] ** 2;
      expect(n1).toBeCloseTo(n0, 14); // measured max 2.2e-16
    }
  });
  test("q.k depends only on the position offset", () => {
    const rng = new Rng(7);
    const q = randn(rng, dh), k = randn(rng, dh);
    const at = (pq: number, pk: number): number => {
      const xq = new Float64Array(T * dh), xk = new Float64Array(T * dh);
      xq.set(q, pq * dh);
      xk.set(k, pk * dh);
      const rq = ropeForward(xq, 1, T, 1, dh, tables), rk = ropeForward(xk, 1, T, 1, dh, tables);
      return dot(rq.subarray(pq * dh, pq * dh + dh), rk.subarray(pk * dh, pk * dh + dh));
    };
    expect(at(3, 1)).toBeCloseTo(at(4, 2), 14); // measured 5.6e-17
    expect(Math.abs(at(3, 1) - at(3, 2))).toBeGreaterThan(1e-6);
  });
  test("second half uses the same angles (rotate-half convention)", () => {
    expect(tables.cos[2 * dh + 1]).toBe(tables.cos[2 * dh + dh / 2 + 1]);
    expect(tables.cos[2 * dh + 1]).toBeCloseTo(Math.cos(2 * Math.pow(10000, -2 / dh)), 14);
  });
  test("backward matches finite differences", () => {
    const rng = new Rng(8);
    const x = randn(rng, B * T * H * dh), probe = randn(rng, x.length);
    // measured max abs 1.7e-10
    checkGrad("dx", x, ropeBackward(probe, B, T, H, dh, tables), () => dot(ropeForward(x, B, T, H, dh, tables), probe), { atol: 8e-10, rtol: 0 });
  });
});

describe("causal attention", () => {
  const B = 2, T = 4, H = 2, dh = 3, n = B * T * H * dh;
  test("a query ignores later keys and values", () => {
    const rng = new Rng(9);
    const q = randn(rng, n), k = randn(rng, n), v = randn(rng, n);
    const before = attentionForward(q, k, v, B, T, H, dh).o;
    const last = (T - 1) * H * dh;
    for (let i = 0; i < H * dh; i++) { k[last + i] += 1; v[last + i] -= 2; }
    const after = attentionForward(q, k, v, B, T, H, dh);
    for (let i = 0; i < last; i++) expect(after.o[i]).toBeCloseTo(before[i], 14);
    expect(after.probs[1]).toBe(0); // query 0 of (b=0,h=0) gives key 1 nothing
    expect(after.lse[0]).toBeCloseTo(dot(q.subarray(0, dh), k.subarray(0, dh)) / Math.sqrt(dh), 14);
  });
  test("backward matches finite differences", () => {
    const rng = new Rng(10);
    const q = randn(rng, n), k = randn(rng, n), v = randn(rng, n), probe = randn(rng, n);
    const fwd = attentionForward(q, k, v, B, T, H, dh);
    const g = attentionBackward(probe, q, k, v, fwd.probs, B, T, H, dh);
    const loss = () => dot(attentionForward(q, k, v, B, T, H, dh).o, probe);
    checkGrad("dq", q, g.dq, loss, { atol: 5e-10, rtol: 0 }); // measured max abs 9.5e-11
    checkGrad("dk", k, g.dk, loss, { atol: 6e-10, rtol: 0 }); // measured max abs 1.2e-10
    checkGrad("dv", v, g.dv, loss, { atol: 4e-10, rtol: 0 }); // measured max abs 7.3e-11
  });
});

describe("activations", () => {
  test("gelu_tanh values (PyTorch gelu(approximate=\"tanh\") in f64)", () => {
    const y = geluTanhForward(new Float64Array([0, 1, -1, 3]));
    expect(y[0]).toBe(0);
    expect(y[1]).toBeCloseTo(0.8411919906082768, 14);
    expect(y[2]).toBeCloseTo(-0.15880800939172324, 14);
    expect(y[3]).toBeCloseTo(2.996362607918227, 14);
  });
  test("swiglu value and backward", () => {
    const rng = new Rng(11);
    const g = randn(rng, 10, 2), u = randn(rng, 10), probe = randn(rng, 10);
    expect(swigluForward(g, u)[0]).toBeCloseTo((g[0] / (1 + Math.exp(-g[0]))) * u[0], 14);
    const back = swigluBackward(probe, g, u);
    const loss = () => dot(swigluForward(g, u), probe);
    checkGrad("dgate", g, back.dgate, loss, { atol: 4e-10, rtol: 0 }); // measured max abs 7.9e-11
    checkGrad("dup", u, back.dup, loss, { atol: 1e-10, rtol: 0 }); // measured max abs 1.8e-11
  });
  test("gelu backward", () => {
    const rng = new Rng(12);
    const x = randn(rng, 10, 2), probe = randn(rng, 10);
    // measured max abs 5.9e-11
    checkGrad("dx", x, geluTanhBackward(probe, x), () => dot(geluTanhForward(x), probe), { atol: 3e-10, rtol: 0 });
  });
});

test("residual add and in-place accumulation", () => {
  const a = new Float64Array([1, 2]), b = new Float64Array([10, 20]);
  expect([...residualAdd(a, b)]).toEqual([11, 22]);
  addInPlace(a, b);
  expect([...a]).toEqual([11, 22]);
  expect(() => residualAdd(a, new Float64Array(3))).toThrow();
});

describe("cross-entropy", () => {
  test("uniform logits give log V", () => {
    const { loss } = crossEntropyForward(new Float64Array(2 * 7), new Int32Array([3, 6]), 2, 7);
    expect(loss).toBeCloseTo(Math.log(7), 14);
  });
  test("backward matches finite differences and rows sum to zero", () => {
    const rng = new Rng(13);
    const N = 3, V = 5;
    const logits = randn(rng, N * V, 3), targets = new Int32Array([4, 0, 2]);
    const fwd = crossEntropyForward(logits, targets, N, V);
    const g = crossEntropyBackward(logits, fwd.lse, targets, N, V);
    let rowSum = 0;
    for (let v = 0; v < V; v++) rowSum += g[V + v];
    expect(Math.abs(rowSum)).toBeLessThan(2e-16); // measured 2.8e-17 (5 terms of at most 1/N)
    // measured max abs 5.1e-11
    checkGrad("dlogits", logits, g, () => crossEntropyForward(logits, targets, N, V).loss, { atol: 2.5e-10, rtol: 0 });
  });
});
