// Grouped GEMMs for the MoE experts: every expert in one dispatch, with the rows of each expert found on the
// GPU from the routing offsets (E+1 exclusive prefix sums; expert e owns permuted rows offsets[e]..offsets[e+1]).
// Rows at or past offsets[E] are garbage from the worst-case allocation: they are never read into a result
// and never written.
//   rows, W^T (nt): C[r, n] = alpha * sum_k A[r, k] W_e[n, k] + beta * C[r, n]   (forward, y = x W_e^T)
//   rows, W   (nn): C[r, n] = alpha * sum_k A[r, k] W_e[k, n] + beta * C[r, n]   (backward data, dx = dy W_e)
//   wgrad     (tn): C_e[m, n] = alpha * sum_{r of e} A[r, m] B[r, n] + beta * C_e[m, n]   (dW_e = dy_e^T x_e)
// Row-grouped launches cover the worst case: ceil(R/H) + E row blocks of height H (each expert adds at most
// one partial block); a block finds its expert by walking the offsets, so no host round trip and no extra
// kernel. The weight gradient gives each output element to one thread that sums its expert's rows in order:
// deterministic, no atomics. Template: BM BN BK TM TN VM VN4 VWX VWY (see shaders/matmul.wgsl). W's layout in the tiled
// row kernel is a uniform (transB), not a template flag, so nt and nn share one pipeline: on lavapipe each
// pipeline costs seconds to compile, and the branch is uniform, so it costs nothing per element.
//
// Fused modes (pipeline constant MODE; 0 is the plain GEMM) do the expert FFN's elementwise work in the
// GEMM's epilogue or a second operand pair in its loop, saving launches and round trips through memory.
// Extra operands: C2 (slot 5, written), X0 and X1 (slots 6 and 7, read), H (slot 8, written); the row
// buffers of the activation epilogues (C2, H, and X0/X1 of the backward ones) have C's row stride ldc.
//   1 swiglu     (nt): C = A Wu_e^T (up), C2 = A Wg_e^T (gate; Wg = X1 stacked like B), H = silu(C2) * C
//   2 gelu       (nt): C = A W_e^T, H = gelu_tanh(C)
//   3 swiglu_bwd (nn): dh = A W_e; C = dh * silu(g) (d up), C2 = dh * u * silu'(g) (d gate); g = X0, u = X1
//   4 gelu_bwd   (nn): C = (A W_e) * gelu_tanh'(X0)
//   5 sum        (nn): C = A W_e + X0 X1_e with one accumulator (X0 strided like A, X1 stacked like B)
//   6 pair       (tn): C_e = A_e^T B_e and C2_e = X0_e^T B_e: launch z = E + e computes C2_e (X0 like A, C2
//                      like C); a second accumulator instead doubles a thread's registers (slower on lavapipe)
// Activation modes write plain values (the host requires alpha 1, beta 0); sum and pair apply alpha, beta.
// MODE is a pipeline constant, so a plain pipeline has none of this code; slots a mode does not use are
// bound to placeholders.

struct Params {
  M: u32, N: u32, K: u32, E: u32,
  R: u32, lda: u32, ldb: u32, ldc: u32,
  offA: u32, offB: u32, offC: u32, strideW: u32,
  offO: u32, transB: u32, alpha: f32, beta: f32,
  offX0: u32, offX1: u32, offC2: u32, offH: u32,
}

@group(0) @binding(0) var<storage, read> A: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> offsets: array<u32>;
@group(0) @binding(5) var<storage, read_write> C2: array<f32>;
@group(0) @binding(6) var<storage, read> X0: array<f32>;
@group(0) @binding(7) var<storage, read> X1: array<f32>;
@group(0) @binding(8) var<storage, read_write> H: array<f32>;

override MODE: u32 = 0u;
const M_SWIGLU: u32 = 1u;
const M_GELU: u32 = 2u;
const M_SWIGLU_BWD: u32 = 3u;
const M_GELU_BWD: u32 = 4u;
const M_SUM: u32 = 5u;
const M_PAIR: u32 = 6u;

// #include "lib/activation"

const BM: u32 = {{BM}}u;
const BN: u32 = {{BN}}u;
const BK: u32 = {{BK}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const TN4: u32 = TN / 4u;
const WX: u32 = BN / TN;
const WY: u32 = BM / TM;
const NT: u32 = WX * WY;

// Rows of expert e, clamped to the R rows that exist so a corrupt offsets buffer cannot address outside.
fn groupRows(e: u32) -> vec2<u32> {
  let lo = min(offsets[p.offO + e], p.R);
  return vec2<u32>(lo, max(lo, min(offsets[p.offO + e + 1u], p.R)));
}

// Row block `slot` of height h: expert 0's ceil(count/h) blocks first, then expert 1's, ...
// Returns (expert, first row, end of that expert's rows); expert == E when the slot is past the last block.
fn findBlock(slot: u32, h: u32) -> vec3<u32> {
  var first = 0u;
  for (var e = 0u; e < p.E; e++) {
    let g = groupRows(e);
    let nb = (g.y - g.x + h - 1u) / h;
    if (slot < first + nb) { return vec3<u32>(e, g.x + (slot - first) * h, g.y); }
    first += nb;
  }
  return vec3<u32>(p.E, 0u, 0u);
}

var<workgroup> As: array<f32, BK * BM>;           // As[k * BM + m]
var<workgroup> Bs: array<vec4<f32>, BK * BN / 4u>; // Bs[k * BN/4 + n/4]
var<workgroup> Gs: array<vec4<f32>, BK * BN / 4u>; // swiglu: the gate weights' tile, like Bs

// `second` selects the second operand pair (X0, X1): sum's second product, swiglu's gate weights.
fn loadA(i: u32, second: bool) -> f32 {
  if (second) { return X0[i]; }
  return A[i];
}

fn loadW(base: u32, k: u32, n: u32, second: bool) -> f32 {
  if (k >= p.K || n >= p.N) { return 0.0; }
  let i = select(base + k * p.ldb + n, base + n * p.ldb + k, p.transB != 0u);
  if (second) { return X1[i]; }
  return B[i];
}

fn loadW4(base: u32, k: u32, n: u32, second: bool) -> vec4<f32> {
  return vec4<f32>(loadW(base, k, n, second), loadW(base, k, n + 1u, second),
                   loadW(base, k, n + 2u, second), loadW(base, k, n + 3u, second));
}

fn storeC(idx: u32, v: f32, second: bool) {
  var out = p.alpha * v;
  if (second) {
    if (p.beta != 0.0) { out += p.beta * C2[idx]; }
    C2[idx] = out;
    return;
  }
  if (p.beta != 0.0) { out += p.beta * C[idx]; }
  C[idx] = out;
}

// Epilogue of the row kernels for element (r, n): v is the product, g swiglu's gate product.
fn rowsOut(r: u32, n: u32, v: f32, g: f32) {
  let i = r * p.ldc + n;
  if (MODE == M_SWIGLU) {
    C[p.offC + i] = v;
    C2[p.offC2 + i] = g;
    H[p.offH + i] = swiglu(g, v);
  } else if (MODE == M_GELU) {
    C[p.offC + i] = v;
    H[p.offH + i] = gelu(v);
  } else if (MODE == M_SWIGLU_BWD) {
    let gate = X0[p.offX0 + i];
    C[p.offC + i] = swigluDUp(v, gate);
    C2[p.offC2 + i] = swigluDGate(v, gate, X1[p.offX1 + i]);
  } else if (MODE == M_GELU_BWD) {
    C[p.offC + i] = v * geluGrad(X0[p.offX0 + i]);
  } else {
    storeC(p.offC + i, v, false);
  }
}

// Row-grouped tiled kernel: workgroup (x, y) computes columns x*BN.. of row block y (BM rows of one expert).
@compute @workgroup_size(WX, WY, 1)
fn rows_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  // Uniform across the workgroup (workgroup id, read-only storage and pipeline constants only), so the
  // barriers below are legal.
  let blk = findBlock(wg.y, BM);
  if (blk.x >= p.E) { return; }
  let lid = lid3.y * WX + lid3.x;
  let r0 = blk.y;
  let rEnd = min(r0 + BM, blk.z);
  let n0 = wg.x * BN;
  let baseG = p.offX1 + blk.x * p.strideW;

  var acc: array<vec4<f32>, TM * TN4>;
  var accG: array<vec4<f32>, TM * TN4>;
  for (var i = 0u; i < TM * TN4; i++) { acc[i] = vec4<f32>(0.0); accG[i] = vec4<f32>(0.0); }

  for (var term = 0u; term < select(1u, 2u, MODE == M_SUM); term++) {
    let second = MODE == M_SUM && term == 1u;
    let offA = select(p.offA, p.offX0, second);
    let baseW = select(p.offB, p.offX1, second) + blk.x * p.strideW;
    for (var k0 = 0u; k0 < p.K; k0 += BK) {
      for (var i = lid; i < BM * BK; i += NT) {
        let k = i % BK;
        let m = i / BK;
        let r = r0 + m;
        var v = 0.0;
        if (r < rEnd && k0 + k < p.K) { v = loadA(offA + r * p.lda + k0 + k, second); }
        As[k * BM + m] = v;
      }
      for (var i = lid; i < BK * BN / 4u; i += NT) {
        var k: u32; var n: u32;
        if (p.transB != 0u) { k = i % BK; n = (i / BK) * 4u; } else { n = (i % (BN / 4u)) * 4u; k = i / (BN / 4u); }
        Bs[k * (BN / 4u) + n / 4u] = loadW4(baseW, k0 + k, n0 + n, second);
        if (MODE == M_SWIGLU) { Gs[k * (BN / 4u) + n / 4u] = loadW4(baseG, k0 + k, n0 + n, true); }
      }
      workgroupBarrier();
      for (var k = 0u; k < BK; k++) {
        var b: array<vec4<f32>, TN4>;
        var bg: array<vec4<f32>, TN4>;
        for (var j = 0u; j < TN4; j++) {
          b[j] = Bs[k * (BN / 4u) + lid3.x * TN4 + j];
          if (MODE == M_SWIGLU) { bg[j] = Gs[k * (BN / 4u) + lid3.x * TN4 + j]; }
        }
        for (var i = 0u; i < TM; i++) {
          let a = vec4<f32>(As[k * BM + lid3.y * TM + i]);
          for (var j = 0u; j < TN4; j++) {
            acc[i * TN4 + j] = fma(a, b[j], acc[i * TN4 + j]);
            if (MODE == M_SWIGLU) { accG[i * TN4 + j] = fma(a, bg[j], accG[i * TN4 + j]); }
          }
        }
      }
      workgroupBarrier();
    }
  }

  for (var i = 0u; i < TM; i++) {
    let r = r0 + lid3.y * TM + i;
    if (r >= rEnd) { break; }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + lid3.x * TN + j;
      if (n >= p.N) { break; }
      rowsOut(r, n, acc[i * TN4 + j / 4u][j % 4u], accG[i * TN4 + j / 4u][j % 4u]);
    }
  }
}

// Weight-gradient tiled kernel: workgroup (x, y, e) computes the BM x BN tile (y, x) of C_e, reducing over
// expert e's rows BK at a time. An expert without rows writes beta * C_e (zeros when overwriting).
@compute @workgroup_size(WX, WY, 1)
fn wgrad_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let second = MODE == M_PAIR && wg.z >= p.E;
  let e = select(wg.z, wg.z - p.E, second);
  let g = groupRows(e);
  let lid = lid3.y * WX + lid3.x;
  let m0 = wg.y * BM;
  let n0 = wg.x * BN;
  let offA = select(p.offA, p.offX0, second);

  var acc: array<vec4<f32>, TM * TN4>;
  for (var i = 0u; i < TM * TN4; i++) { acc[i] = vec4<f32>(0.0); }

  for (var r0 = g.x; r0 < g.y; r0 += BK) {
    for (var i = lid; i < BM * BK; i += NT) {
      let m = i % BM;
      let k = i / BM;
      var v = 0.0;
      if (r0 + k < g.y && m0 + m < p.M) { v = loadA(offA + (r0 + k) * p.lda + m0 + m, second); }
      As[k * BM + m] = v;
    }
    for (var i = lid; i < BK * BN / 4u; i += NT) {
      let n = (i % (BN / 4u)) * 4u;
      let k = i / (BN / 4u);
      var v = vec4<f32>(0.0);
      if (r0 + k < g.y) {
        let base = p.offB + (r0 + k) * p.ldb;
        for (var j = 0u; j < 4u; j++) { if (n0 + n + j < p.N) { v[j] = B[base + n0 + n + j]; } }
      }
      Bs[k * (BN / 4u) + n / 4u] = v;
    }
    workgroupBarrier();
    for (var k = 0u; k < BK; k++) {
      var b: array<vec4<f32>, TN4>;
      for (var j = 0u; j < TN4; j++) { b[j] = Bs[k * (BN / 4u) + lid3.x * TN4 + j]; }
      for (var i = 0u; i < TM; i++) {
        let a = vec4<f32>(As[k * BM + lid3.y * TM + i]);
        for (var j = 0u; j < TN4; j++) { acc[i * TN4 + j] = fma(a, b[j], acc[i * TN4 + j]); }
      }
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < TM; i++) {
    let m = m0 + lid3.y * TM + i;
    if (m >= p.M) { break; }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + lid3.x * TN + j;
      if (n >= p.N) { break; }
      let at = e * p.strideW + m * p.ldc + n;
      storeC(select(p.offC, p.offC2, second) + at, acc[i * TN4 + j / 4u][j % 4u], second);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Direct vec4 kernels (no workgroup memory: faster on CPU adapters), for 4-aligned strides and offsets, which
// Params then holds in vec4 units (offO stays in u32 units). A thread owns VM rows of one expert (row-grouped)
// or VM rows of one expert's C_e (wgrad) and VN4 vec4 columns. Rows past a block's end are clamped to its last
// row for loading (never garbage rows) and skipped when storing.

@group(0) @binding(0) var<storage, read> A4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> B4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> C4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> C2_4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> X0_4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> X1_4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> H4: array<vec4<f32>>;

const VM: u32 = {{VM}}u;
const VN4: u32 = {{VN4}}u;

fn loadA4(i: u32, second: bool) -> vec4<f32> {
  if (second) { return X0_4[i]; }
  return A4[i];
}

fn loadB4(i: u32, second: bool) -> vec4<f32> {
  if (second) { return X1_4[i]; }
  return B4[i];
}

fn store4(idx: u32, v: vec4<f32>, second: bool) {
  var out = p.alpha * v;
  if (second) {
    if (p.beta != 0.0) { out += p.beta * C2_4[idx]; }
    C2_4[idx] = out;
    return;
  }
  if (p.beta != 0.0) { out += p.beta * C4[idx]; }
  C4[idx] = out;
}

// rowsOut for vec4 column c of row r (the activation math is scalar, shared with activation.wgsl).
fn rowsOut4(r: u32, c: u32, v: vec4<f32>, g: vec4<f32>) {
  let i = r * p.ldc + c;
  var o: vec4<f32>;
  var o2: vec4<f32>;
  if (MODE == M_SWIGLU) {
    for (var q = 0u; q < 4u; q++) { o[q] = swiglu(g[q], v[q]); }
    C4[p.offC + i] = v;
    C2_4[p.offC2 + i] = g;
    H4[p.offH + i] = o;
  } else if (MODE == M_GELU) {
    for (var q = 0u; q < 4u; q++) { o[q] = gelu(v[q]); }
    C4[p.offC + i] = v;
    H4[p.offH + i] = o;
  } else if (MODE == M_SWIGLU_BWD) {
    let gate = X0_4[p.offX0 + i];
    let up = X1_4[p.offX1 + i];
    for (var q = 0u; q < 4u; q++) { o[q] = swigluDUp(v[q], gate[q]); o2[q] = swigluDGate(v[q], gate[q], up[q]); }
    C4[p.offC + i] = o;
    C2_4[p.offC2 + i] = o2;
  } else if (MODE == M_GELU_BWD) {
    let x = X0_4[p.offX0 + i];
    for (var q = 0u; q < 4u; q++) { o[q] = v[q] * geluGrad(x[q]); }
    C4[p.offC + i] = o;
  } else {
    store4(p.offC + i, v, false);
  }
}

// nt: A [R, K], W_e [N, K]; thread (x, y) owns row block y (height VM) and vec4 columns x*VN4..
// swiglu also multiplies by the gate weights X1 (a second accumulator over the same A loads).
@compute @workgroup_size({{VWX}}, {{VWY}}, 1)
fn rows_nt4(@builtin(global_invocation_id) g: vec3<u32>) {
  let blk = findBlock(g.y, VM);
  let N4 = p.N / 4u;
  let c0 = g.x * VN4;
  if (blk.x >= p.E || c0 >= N4) { return; }
  let r0 = blk.y;
  let last = min(r0 + VM, blk.z) - 1u;
  let bW = p.offB + blk.x * p.strideW;
  let bG = p.offX1 + blk.x * p.strideW;
  var acc: array<vec4<f32>, VM * VN4>;
  var accG: array<vec4<f32>, VM * VN4>;
  for (var k4 = 0u; k4 < p.K / 4u; k4++) {
    var a: array<vec4<f32>, VM>;
    for (var i = 0u; i < VM; i++) { a[i] = A4[p.offA + min(r0 + i, last) * p.lda + k4]; }
    for (var j = 0u; j < VN4; j++) {
      let n = min(c0 + j, N4 - 1u) * 4u;
      let b0 = B4[bW + n * p.ldb + k4];
      let b1 = B4[bW + (n + 1u) * p.ldb + k4];
      let b2 = B4[bW + (n + 2u) * p.ldb + k4];
      let b3 = B4[bW + (n + 3u) * p.ldb + k4];
      for (var i = 0u; i < VM; i++) {
        acc[i * VN4 + j] += vec4<f32>(dot(a[i], b0), dot(a[i], b1), dot(a[i], b2), dot(a[i], b3));
      }
      if (MODE == M_SWIGLU) {
        let g0 = X1_4[bG + n * p.ldb + k4];
        let g1 = X1_4[bG + (n + 1u) * p.ldb + k4];
        let g2 = X1_4[bG + (n + 2u) * p.ldb + k4];
        let g3 = X1_4[bG + (n + 3u) * p.ldb + k4];
        for (var i = 0u; i < VM; i++) {
          accG[i * VN4 + j] += vec4<f32>(dot(a[i], g0), dot(a[i], g1), dot(a[i], g2), dot(a[i], g3));
        }
      }
    }
  }
  for (var i = 0u; i < VM; i++) {
    if (r0 + i > last) { break; }
    for (var j = 0u; j < VN4; j++) { if (c0 + j < N4) { rowsOut4(r0 + i, c0 + j, acc[i * VN4 + j], accG[i * VN4 + j]); } }
  }
}

// nn: A [R, K], W_e [K, N]; sum runs the K loop a second time over (X0, X1) into the same accumulator.
@compute @workgroup_size({{VWX}}, {{VWY}}, 1)
fn rows_nn4(@builtin(global_invocation_id) g: vec3<u32>) {
  let blk = findBlock(g.y, VM);
  let N4 = p.N / 4u;
  let c0 = g.x * VN4;
  if (blk.x >= p.E || c0 >= N4) { return; }
  let r0 = blk.y;
  let last = min(r0 + VM, blk.z) - 1u;
  var acc: array<vec4<f32>, VM * VN4>;
  for (var term = 0u; term < select(1u, 2u, MODE == M_SUM); term++) {
    let second = MODE == M_SUM && term == 1u;
    let offA = select(p.offA, p.offX0, second);
    let bW = select(p.offB, p.offX1, second) + blk.x * p.strideW;
    for (var k4 = 0u; k4 < p.K / 4u; k4++) {
      var a: array<vec4<f32>, VM>;
      for (var i = 0u; i < VM; i++) { a[i] = loadA4(offA + min(r0 + i, last) * p.lda + k4, second); }
      for (var kk = 0u; kk < 4u; kk++) {
        var b: array<vec4<f32>, VN4>;
        for (var j = 0u; j < VN4; j++) { b[j] = loadB4(bW + (k4 * 4u + kk) * p.ldb + min(c0 + j, N4 - 1u), second); }
        for (var i = 0u; i < VM; i++) {
          let av = vec4<f32>(a[i][kk]);
          for (var j = 0u; j < VN4; j++) { acc[i * VN4 + j] = fma(av, b[j], acc[i * VN4 + j]); }
        }
      }
    }
  }
  for (var i = 0u; i < VM; i++) {
    if (r0 + i > last) { break; }
    for (var j = 0u; j < VN4; j++) { if (c0 + j < N4) { rowsOut4(r0 + i, c0 + j, acc[i * VN4 + j], vec4<f32>(0.0)); } }
  }
}

// tn: A [R, M], B [R, N], C_e [M, N]; thread (x, y, e) owns rows y*VM.. (VM % 4 == 0) of C_e (pair: thread
// (x, y, E + e) those of C2_e).
@compute @workgroup_size({{VWX}}, {{VWY}}, 1)
fn wgrad4(@builtin(global_invocation_id) g: vec3<u32>) {
  let m0 = g.y * VM;
  let c0 = g.x * VN4;
  let N4 = p.N / 4u;
  let M4 = p.M / 4u;
  if (m0 >= p.M || c0 >= N4) { return; }
  let second = MODE == M_PAIR && g.z >= p.E;
  let e = select(g.z, g.z - p.E, second);
  let offA = select(p.offA, p.offX0, second);
  let rows = groupRows(e);
  var acc: array<vec4<f32>, VM * VN4>;
  for (var r = rows.x; r < rows.y; r++) {
    var b: array<vec4<f32>, VN4>;
    for (var j = 0u; j < VN4; j++) { b[j] = B4[p.offB + r * p.ldb + min(c0 + j, N4 - 1u)]; }
    for (var i4 = 0u; i4 < VM / 4u; i4++) {
      let a = loadA4(offA + r * p.lda + min(m0 / 4u + i4, M4 - 1u), second);
      for (var q = 0u; q < 4u; q++) {
        let av = vec4<f32>(a[q]);
        for (var j = 0u; j < VN4; j++) { acc[(i4 * 4u + q) * VN4 + j] = fma(av, b[j], acc[(i4 * 4u + q) * VN4 + j]); }
      }
    }
  }
  for (var i = 0u; i < VM; i++) {
    if (m0 + i >= p.M) { break; }
    for (var j = 0u; j < VN4; j++) {
      if (c0 + j >= N4) { continue; }
      store4(select(p.offC, p.offC2, second) + e * p.strideW + (m0 + i) * p.ldc + c0 + j, acc[i * VN4 + j], second);
    }
  }
}
