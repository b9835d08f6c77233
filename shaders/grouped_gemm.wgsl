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
//
// Storage element types (template A_T B_T C_T C2_T X0_T X1_T H_T: f32, or f16 for the expert activations
// under mixed precision). Loads widen to f32 in the fetch/load functions (the workgroup tiles stay f32),
// stores round once, so the arithmetic is f32 either way. The activation epilogues round the pre-activations
// first and take the activation of the rounded values: the hidden is then a function of what is saved, as
// the backward and the recompute (activation.wgsl) see it, and recompute stays bit-identical to forward.

struct Params {
  M: u32, N: u32, K: u32, E: u32,
  R: u32, lda: u32, ldb: u32, ldc: u32,
  offA: u32, offB: u32, offC: u32, strideW: u32,
  offO: u32, transB: u32, alpha: f32, beta: f32,
  offX0: u32, offX1: u32, offC2: u32, offH: u32,
}

alias AT = {{A_T:f32}};
alias BT = {{B_T:f32}};
alias CT = {{C_T:f32}};
alias C2T = {{C2_T:f32}};
alias X0T = {{X0_T:f32}};
alias X1T = {{X1_T:f32}};
alias HT = {{H_T:f32}};

@group(0) @binding(0) var<storage, read> A: array<AT>;
@group(0) @binding(1) var<storage, read> B: array<BT>;
@group(0) @binding(2) var<storage, read_write> C: array<CT>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> offsets: array<u32>;
@group(0) @binding(5) var<storage, read_write> C2: array<C2T>;
@group(0) @binding(6) var<storage, read> X0: array<X0T>;
@group(0) @binding(7) var<storage, read> X1: array<X1T>;
@group(0) @binding(8) var<storage, read_write> H: array<HT>;

// Whether C / C2 are stored as f16 (module constants): only f16 loses the 2^-12 of 1 + 2^-12.
const C_HALF = f32(CT(1.000244140625)) != 1.000244140625;
const C2_HALF = f32(C2T(1.000244140625)) != 1.000244140625;

// v as an f16 store rounds it, kept in f32: to nearest, ties to even (IEEE's default and what lavapipe's
// stores do; WGSL would allow either neighbour). f32(f16(v)) would say so, but compilers may fold the pair of
// conversions to v (lavapipe does), so this is f32 arithmetic, exact but for round(): v scaled by the power
// of two that makes its last f16 place (2^-24 below f16's normal range) 1. Past f16's largest finite value,
// infinity with v's sign, as a store gives.
fn roundHalf(v: f32) -> f32 {
  let e = max((bitcast<u32>(v) >> 23u) & 0xffu, 113u) - 10u; // biased exponent of v's last f16 place
  let r = round(v * bitcast<f32>((254u - e) << 23u)) * bitcast<f32>(e << 23u);
  if (abs(r) > 65504.0) { return bitcast<f32>((bitcast<u32>(v) & 0x80000000u) | 0x7f800000u); }
  return r;
}

// A pre-activation as C or C2 stores it, for the activation epilogues.
fn storedC(v: f32) -> f32 { return select(v, roundHalf(v), C_HALF); }
fn storedC2(v: f32) -> f32 { return select(v, roundHalf(v), C2_HALF); }

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

// #include "lib/tile"

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

// swiglu: the gate weights' tiles, double-buffered and laid out like Bs, their groups in flight, and the
// gate product's accumulators.
var<workgroup> Gs: array<vec4<f32>, 2u * BK * BN4>;
var<private> rg: array<vec4<f32>, RB>;
var<private> gacc: array<vec4<f32>, TM * TN4>;

// `second` selects the second operand pair (X0, X1): sum's second product, swiglu's gate weights.
fn loadA(i: u32, second: bool) -> f32 {
  if (second) { return f32(X0[i]); }
  return f32(A[i]);
}

fn loadW(base: u32, k: u32, n: u32, second: bool) -> f32 {
  if (k >= p.K || n >= p.N) { return 0.0; }
  let i = select(base + k * p.ldb + n, base + n * p.ldb + k, p.transB != 0u);
  if (second) { return f32(X1[i]); }
  return f32(B[i]);
}

// W's 4 elements from (k, n) along its contiguous dimension: k when transB (W_e stored [N, K]), else n.
fn fetchW(base: u32, k: u32, n: u32, second: bool) -> vec4<f32> {
  if (p.transB != 0u) {
    return vec4<f32>(loadW(base, k, n, second), loadW(base, k + 1u, n, second),
                     loadW(base, k + 2u, n, second), loadW(base, k + 3u, n, second));
  }
  return vec4<f32>(loadW(base, k, n, second), loadW(base, k, n + 1u, second),
                   loadW(base, k, n + 2u, second), loadW(base, k, n + 3u, second));
}

fn storeC(idx: u32, v: f32, second: bool) {
  var out = p.alpha * v;
  if (second) {
    if (p.beta != 0.0) { out += p.beta * f32(C2[idx]); }
    C2[idx] = C2T(out);
    return;
  }
  if (p.beta != 0.0) { out += p.beta * f32(C[idx]); }
  C[idx] = CT(out);
}

// Epilogue of the row kernels for element (r, n): v is the product, g swiglu's gate product (pre-activations
// rounded to their storage type before the activation, see the top).
fn rowsOut(r: u32, n: u32, v: f32, g: f32) {
  let i = r * p.ldc + n;
  if (MODE == M_SWIGLU) {
    let up = storedC(v);
    let gate = storedC2(g);
    C[p.offC + i] = CT(up);
    C2[p.offC2 + i] = C2T(gate);
    H[p.offH + i] = HT(swiglu(gate, up));
  } else if (MODE == M_GELU) {
    let x = storedC(v);
    C[p.offC + i] = CT(x);
    H[p.offH + i] = HT(gelu(x));
  } else if (MODE == M_SWIGLU_BWD) {
    let gate = f32(X0[p.offX0 + i]);
    C[p.offC + i] = CT(swigluDUp(v, gate));
    C2[p.offC2 + i] = C2T(swigluDGate(v, gate, f32(X1[p.offX1 + i])));
  } else if (MODE == M_GELU_BWD) {
    C[p.offC + i] = CT(v * geluGrad(f32(X0[p.offX0 + i])));
  } else {
    storeC(p.offC + i, v, false);
  }
}

// The row kernels' K step t: term t / nK (sum's second product from t = nK on), k0 = (t % nK) * BK. Loads
// A's rows r0.. (below rEnd) and W_e's tile (and swiglu's gate weights) into ra / rb (/ rg).
fn fetchRows(t: u32, nK: u32, e: u32, r0: u32, rEnd: u32, n0: u32, lid: u32) {
  let second = MODE == M_SUM && t >= nK;
  let k0 = (t % nK) * BK;
  let offA = select(p.offA, p.offX0, second);
  let baseW = select(p.offB, p.offX1, second) + e * p.strideW;
  for (var q = 0u; q < RA; q++) {
    let g = lid + q * NT;
    if (g >= GA) { break; }
    let mk = groupA(g, false);
    let r = r0 + mk.x;
    var v = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) {
      if (r < rEnd && k0 + mk.y + c < p.K) { v[c] = loadA(offA + r * p.lda + k0 + mk.y + c, second); }
    }
    ra[q] = v;
  }
  for (var q = 0u; q < RB; q++) {
    let g = lid + q * NT;
    if (g >= GB) { break; }
    let kn = groupB(g, p.transB != 0u);
    rb[q] = fetchW(baseW, k0 + kn.x, n0 + kn.y, second);
    if (MODE == M_SWIGLU) { rg[q] = fetchW(p.offX1 + e * p.strideW, k0 + kn.x, n0 + kn.y, true); }
  }
}

// storeTile's B half for the gate weights: rg into Gs buffer `buf`.
fn storeGateTile(buf: u32, lid: u32) {
  let ob = buf * BK * BN4;
  for (var q = 0u; q < RB; q++) {
    let g = lid + q * NT;
    if (g >= GB) { break; }
    let kn = groupB(g, p.transB != 0u);
    if (p.transB != 0u) {
      for (var c = 0u; c < 4u; c++) { Gs[ob + (kn.x + c) * BN4 + kn.y / 4u][kn.y % 4u] = rg[q][c]; }
    } else {
      Gs[ob + kn.x * BN4 + kn.y / 4u] = rg[q];
    }
  }
}

// tileMac's second product for swiglu: gacc += the A tile x the gate weights' tile.
fn tileMacGate(buf: u32, lx: u32, ly: u32) {
  let oa = buf * BK * BM;
  let ob = buf * BK * BN4;
  for (var k = 0u; k < BK; k++) {
    var b: array<vec4<f32>, TN4>;
    for (var j = 0u; j < TN4; j++) { b[j] = Gs[ob + k * BN4 + lx * TN4 + j]; }
    for (var i = 0u; i < TM; i++) {
      let a = vec4<f32>(As[oa + k * BM + ly * TM + i]);
      for (var j = 0u; j < TN4; j++) { gacc[i * TN4 + j] = fma(a, b[j], gacc[i * TN4 + j]); }
    }
  }
}

// Row-grouped tiled kernel: workgroup (x, y) computes columns x*BN.. of row block y (BM rows of one expert),
// on lib/tile.wgsl's double-buffered core.
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
  let nK = (p.K + BK - 1u) / BK;
  let steps = select(1u, 2u, MODE == M_SUM) * nK;

  if (steps > 0u) {
    fetchRows(0u, nK, blk.x, r0, rEnd, n0, lid);
    storeTile(0u, lid, false, p.transB != 0u);
    if (MODE == M_SWIGLU) { storeGateTile(0u, lid); }
  }
  workgroupBarrier();
  for (var t = 0u; t < steps; t++) {
    let cur = t % 2u;
    let more = t + 1u < steps;
    if (more) { fetchRows(t + 1u, nK, blk.x, r0, rEnd, n0, lid); }
    tileMac(cur, lid3.x, lid3.y);
    if (MODE == M_SWIGLU) { tileMacGate(cur, lid3.x, lid3.y); }
    if (more) {
      storeTile(1u - cur, lid, false, p.transB != 0u);
      if (MODE == M_SWIGLU) { storeGateTile(1u - cur, lid); }
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < TM; i++) {
    let r = r0 + lid3.y * TM + i;
    if (r >= rEnd) { break; }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + lid3.x * TN + j;
      if (n >= p.N) { break; }
      rowsOut(r, n, tacc[i * TN4 + j / 4u][j % 4u], gacc[i * TN4 + j / 4u][j % 4u]);
    }
  }
}

// The weight-gradient kernel's K step: expert rows r0.. (below rEnd) of A (read as A^T) and of B.
fn fetchWgrad(r0: u32, rEnd: u32, m0: u32, n0: u32, offA: u32, second: bool, lid: u32) {
  for (var q = 0u; q < RA; q++) {
    let g = lid + q * NT;
    if (g >= GA) { break; }
    let mk = groupA(g, true);
    var v = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) {
      if (r0 + mk.y < rEnd && m0 + mk.x + c < p.M) { v[c] = loadA(offA + (r0 + mk.y) * p.lda + m0 + mk.x + c, second); }
    }
    ra[q] = v;
  }
  for (var q = 0u; q < RB; q++) {
    let g = lid + q * NT;
    if (g >= GB) { break; }
    let kn = groupB(g, false);
    var v = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) {
      if (r0 + kn.x < rEnd && n0 + kn.y + c < p.N) { v[c] = f32(B[p.offB + (r0 + kn.x) * p.ldb + n0 + kn.y + c]); }
    }
    rb[q] = v;
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
  let steps = (g.y - g.x + BK - 1u) / BK;

  if (steps > 0u) {
    fetchWgrad(g.x, g.y, m0, n0, offA, second, lid);
    storeTile(0u, lid, true, false);
  }
  workgroupBarrier();
  for (var t = 0u; t < steps; t++) {
    let cur = t % 2u;
    let more = t + 1u < steps;
    if (more) { fetchWgrad(g.x + (t + 1u) * BK, g.y, m0, n0, offA, second, lid); }
    tileMac(cur, lid3.x, lid3.y);
    if (more) { storeTile(1u - cur, lid, true, false); }
    workgroupBarrier();
  }

  for (var i = 0u; i < TM; i++) {
    let m = m0 + lid3.y * TM + i;
    if (m >= p.M) { break; }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + lid3.x * TN + j;
      if (n >= p.N) { break; }
      let at = e * p.strideW + m * p.ldc + n;
      storeC(select(p.offC, p.offC2, second) + at, tacc[i * TN4 + j / 4u][j % 4u], second);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Direct vec4 kernels (no workgroup memory: faster on CPU adapters), for 4-aligned strides and offsets, which
// Params then holds in vec4 units (offO stays in u32 units). A thread owns VM rows of one expert (row-grouped)
// or VM rows of one expert's C_e (wgrad) and VN4 vec4 columns. Rows past a block's end are clamped to its last
// row for loading (never garbage rows) and skipped when storing.

@group(0) @binding(0) var<storage, read> A4: array<vec4<AT>>;
@group(0) @binding(1) var<storage, read> B4: array<vec4<BT>>;
@group(0) @binding(2) var<storage, read_write> C4: array<vec4<CT>>;
@group(0) @binding(5) var<storage, read_write> C2_4: array<vec4<C2T>>;
@group(0) @binding(6) var<storage, read> X0_4: array<vec4<X0T>>;
@group(0) @binding(7) var<storage, read> X1_4: array<vec4<X1T>>;
@group(0) @binding(8) var<storage, read_write> H4: array<vec4<HT>>;

const VM: u32 = {{VM}}u;
const VN4: u32 = {{VN4}}u;

fn loadA4(i: u32, second: bool) -> vec4<f32> {
  if (second) { return vec4<f32>(X0_4[i]); }
  return vec4<f32>(A4[i]);
}

fn loadB4(i: u32, second: bool) -> vec4<f32> {
  if (second) { return vec4<f32>(X1_4[i]); }
  return vec4<f32>(B4[i]);
}

fn store4(idx: u32, v: vec4<f32>, second: bool) {
  var out = p.alpha * v;
  if (second) {
    if (p.beta != 0.0) { out += p.beta * vec4<f32>(C2_4[idx]); }
    C2_4[idx] = vec4<C2T>(out);
    return;
  }
  if (p.beta != 0.0) { out += p.beta * vec4<f32>(C4[idx]); }
  C4[idx] = vec4<CT>(out);
}

// rowsOut for vec4 column c of row r (the activation math is scalar, shared with activation.wgsl).
fn rowsOut4(r: u32, c: u32, v: vec4<f32>, g: vec4<f32>) {
  let i = r * p.ldc + c;
  var o: vec4<f32>;
  var o2: vec4<f32>;
  if (MODE == M_SWIGLU) {
    var up: vec4<f32>;
    var gate: vec4<f32>;
    for (var q = 0u; q < 4u; q++) { up[q] = storedC(v[q]); gate[q] = storedC2(g[q]); o[q] = swiglu(gate[q], up[q]); }
    C4[p.offC + i] = vec4<CT>(up);
    C2_4[p.offC2 + i] = vec4<C2T>(gate);
    H4[p.offH + i] = vec4<HT>(o);
  } else if (MODE == M_GELU) {
    var x: vec4<f32>;
    for (var q = 0u; q < 4u; q++) { x[q] = storedC(v[q]); o[q] = gelu(x[q]); }
    C4[p.offC + i] = vec4<CT>(x);
    H4[p.offH + i] = vec4<HT>(o);
  } else if (MODE == M_SWIGLU_BWD) {
    let gate = vec4<f32>(X0_4[p.offX0 + i]);
    let up = vec4<f32>(X1_4[p.offX1 + i]);
    for (var q = 0u; q < 4u; q++) { o[q] = swigluDUp(v[q], gate[q]); o2[q] = swigluDGate(v[q], gate[q], up[q]); }
    C4[p.offC + i] = vec4<CT>(o);
    C2_4[p.offC2 + i] = vec4<C2T>(o2);
  } else if (MODE == M_GELU_BWD) {
    let x = vec4<f32>(X0_4[p.offX0 + i]);
    for (var q = 0u; q < 4u; q++) { o[q] = v[q] * geluGrad(x[q]); }
    C4[p.offC + i] = vec4<CT>(o);
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
    for (var i = 0u; i < VM; i++) { a[i] = vec4<f32>(A4[p.offA + min(r0 + i, last) * p.lda + k4]); }
    for (var j = 0u; j < VN4; j++) {
      let n = min(c0 + j, N4 - 1u) * 4u;
      let b0 = vec4<f32>(B4[bW + n * p.ldb + k4]);
      let b1 = vec4<f32>(B4[bW + (n + 1u) * p.ldb + k4]);
      let b2 = vec4<f32>(B4[bW + (n + 2u) * p.ldb + k4]);
      let b3 = vec4<f32>(B4[bW + (n + 3u) * p.ldb + k4]);
      for (var i = 0u; i < VM; i++) {
        acc[i * VN4 + j] += vec4<f32>(dot(a[i], b0), dot(a[i], b1), dot(a[i], b2), dot(a[i], b3));
      }
      if (MODE == M_SWIGLU) {
        let g0 = vec4<f32>(X1_4[bG + n * p.ldb + k4]);
        let g1 = vec4<f32>(X1_4[bG + (n + 1u) * p.ldb + k4]);
        let g2 = vec4<f32>(X1_4[bG + (n + 2u) * p.ldb + k4]);
        let g3 = vec4<f32>(X1_4[bG + (n + 3u) * p.ldb + k4]);
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
    for (var j = 0u; j < VN4; j++) { b[j] = vec4<f32>(B4[p.offB + r * p.ldb + min(c0 + j, N4 - 1u)]); }
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
