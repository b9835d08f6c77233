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
// deterministic, no atomics. Template: BM BN BK TM TN VM VN4 VWX VWY EW (see shaders/matmul.wgsl). W's layout in the tiled
// row kernel is a uniform (transB), not a template flag, so nt and nn share one pipeline: on lavapipe each
// pipeline costs seconds to compile, and the branch is uniform, so it costs nothing per element.

struct Params {
  M: u32, N: u32, K: u32, E: u32,
  R: u32, lda: u32, ldb: u32, ldc: u32,
  offA: u32, offB: u32, offC: u32, strideW: u32,
  offO: u32, transB: u32, alpha: f32, beta: f32,
}

@group(0) @binding(0) var<storage, read> A: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> offsets: array<u32>;

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

// Row block `slot` of height H: expert 0's ceil(count/H) blocks first, then expert 1's, ...
// Returns (expert, first row, end of that expert's rows); expert == E when the slot is past the last block.
fn findBlock(slot: u32, H: u32) -> vec3<u32> {
  var first = 0u;
  for (var e = 0u; e < p.E; e++) {
    let g = groupRows(e);
    let nb = (g.y - g.x + H - 1u) / H;
    if (slot < first + nb) { return vec3<u32>(e, g.x + (slot - first) * H, g.y); }
    first += nb;
  }
  return vec3<u32>(p.E, 0u, 0u);
}

var<workgroup> As: array<f32, BK * BM>;           // As[k * BM + m]
var<workgroup> Bs: array<vec4<f32>, BK * BN / 4u>; // Bs[k * BN/4 + n/4]

fn loadW(base: u32, k: u32, n: u32) -> f32 {
  if (k >= p.K || n >= p.N) { return 0.0; }
  if (p.transB != 0u) { return B[base + n * p.ldb + k]; }
  return B[base + k * p.ldb + n];
}

fn storeC(idx: u32, v: f32) {
  var out = p.alpha * v;
  if (p.beta != 0.0) { out += p.beta * C[idx]; }
  C[idx] = out;
}

// Row-grouped tiled kernel: workgroup (x, y) computes columns x*BN.. of row block y (BM rows of one expert).
@compute @workgroup_size(WX, WY, 1)
fn rows_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  // Uniform across the workgroup (workgroup id and read-only storage only), so the barriers below are legal.
  let blk = findBlock(wg.y, BM);
  if (blk.x >= p.E) { return; }
  let lid = lid3.y * WX + lid3.x;
  let r0 = blk.y;
  let rEnd = min(r0 + BM, blk.z);
  let n0 = wg.x * BN;
  let baseW = p.offB + blk.x * p.strideW;

  var acc: array<vec4<f32>, TM * TN4>;
  for (var i = 0u; i < TM * TN4; i++) { acc[i] = vec4<f32>(0.0); }

  for (var k0 = 0u; k0 < p.K; k0 += BK) {
    for (var i = lid; i < BM * BK; i += NT) {
      let k = i % BK;
      let m = i / BK;
      let r = r0 + m;
      var v = 0.0;
      if (r < rEnd && k0 + k < p.K) { v = A[p.offA + r * p.lda + k0 + k]; }
      As[k * BM + m] = v;
    }
    for (var i = lid; i < BK * BN / 4u; i += NT) {
      var k: u32; var n: u32;
      if (p.transB != 0u) { k = i % BK; n = (i / BK) * 4u; } else { n = (i % (BN / 4u)) * 4u; k = i / (BN / 4u); }
      let kk = k0 + k;
      let nn = n0 + n;
      Bs[k * (BN / 4u) + n / 4u] = vec4<f32>(loadW(baseW, kk, nn), loadW(baseW, kk, nn + 1u),
                                             loadW(baseW, kk, nn + 2u), loadW(baseW, kk, nn + 3u));
    }
    workgroupBarrier();
    for (var k = 0u; k < BK; k++) {
      var b: array<vec4<f32>, TN4>;
      for (var j = 0u; j < TN4; j++) { b[j] = Bs[k * (BN / 4u) + lid3.x * TN4 + j]; }
      for (var i = 0u; i < TM; i++) {
        let a = As[k * BM + lid3.y * TM + i];
        for (var j = 0u; j < TN4; j++) { acc[i * TN4 + j] = fma(vec4<f32>(a), b[j], acc[i * TN4 + j]); }
      }
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < TM; i++) {
    let r = r0 + lid3.y * TM + i;
    if (r >= rEnd) { break; }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + lid3.x * TN + j;
      if (n >= p.N) { break; }
      storeC(p.offC + r * p.ldc + n, acc[i * TN4 + j / 4u][j % 4u]);
    }
  }
}

// Weight-gradient tiled kernel: workgroup (x, y, e) computes the BM x BN tile (y, x) of C_e, reducing over
// expert e's rows BK at a time. An expert without rows writes beta * C_e (zeros when overwriting).
@compute @workgroup_size(WX, WY, 1)
fn wgrad_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let g = groupRows(wg.z);
  let lid = lid3.y * WX + lid3.x;
  let m0 = wg.y * BM;
  let n0 = wg.x * BN;

  var acc: array<vec4<f32>, TM * TN4>;
  for (var i = 0u; i < TM * TN4; i++) { acc[i] = vec4<f32>(0.0); }

  for (var r0 = g.x; r0 < g.y; r0 += BK) {
    for (var i = lid; i < BM * BK; i += NT) {
      let m = i % BM;
      let k = i / BM;
      var v = 0.0;
      if (r0 + k < g.y && m0 + m < p.M) { v = A[p.offA + (r0 + k) * p.lda + m0 + m]; }
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
        let a = As[k * BM + lid3.y * TM + i];
        for (var j = 0u; j < TN4; j++) { acc[i * TN4 + j] = fma(vec4<f32>(a), b[j], acc[i * TN4 + j]); }
      }
    }
    workgroupBarrier();
  }

  let baseC = p.offC + wg.z * p.strideW;
  for (var i = 0u; i < TM; i++) {
    let m = m0 + lid3.y * TM + i;
    if (m >= p.M) { break; }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + lid3.x * TN + j;
      if (n >= p.N) { break; }
      storeC(baseC + m * p.ldc + n, acc[i * TN4 + j / 4u][j % 4u]);
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

const VM: u32 = {{VM}}u;
const VN4: u32 = {{VN4}}u;

fn store4(idx: u32, v: vec4<f32>) {
  var out = p.alpha * v;
  if (p.beta != 0.0) { out += p.beta * C4[idx]; }
  C4[idx] = out;
}

// nt: A [R, K], W_e [N, K]; thread (x, y) owns row block y (height VM) and vec4 columns x*VN4..
@compute @workgroup_size({{VWX}}, {{VWY}}, 1)
fn rows_nt4(@builtin(global_invocation_id) g: vec3<u32>) {
  let blk = findBlock(g.y, VM);
  let N4 = p.N / 4u;
  let c0 = g.x * VN4;
  if (blk.x >= p.E || c0 >= N4) { return; }
  let r0 = blk.y;
  let last = min(r0 + VM, blk.z) - 1u;
  let bW = p.offB + blk.x * p.strideW;
  var acc: array<vec4<f32>, VM * VN4>;
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
    }
  }
  for (var i = 0u; i < VM; i++) {
    if (r0 + i > last) { break; }
    for (var j = 0u; j < VN4; j++) { if (c0 + j < N4) { store4(p.offC + (r0 + i) * p.ldc + c0 + j, acc[i * VN4 + j]); } }
  }
}

// nn: A [R, K], W_e [K, N].
@compute @workgroup_size({{VWX}}, {{VWY}}, 1)
fn rows_nn4(@builtin(global_invocation_id) g: vec3<u32>) {
  let blk = findBlock(g.y, VM);
  let N4 = p.N / 4u;
  let c0 = g.x * VN4;
  if (blk.x >= p.E || c0 >= N4) { return; }
  let r0 = blk.y;
  let last = min(r0 + VM, blk.z) - 1u;
  let bW = p.offB + blk.x * p.strideW;
  var acc: array<vec4<f32>, VM * VN4>;
  for (var k4 = 0u; k4 < p.K / 4u; k4++) {
    var a: array<vec4<f32>, VM>;
    for (var i = 0u; i < VM; i++) { a[i] = A4[p.offA + min(r0 + i, last) * p.lda + k4]; }
    for (var kk = 0u; kk < 4u; kk++) {
      var b: array<vec4<f32>, VN4>;
      for (var j = 0u; j < VN4; j++) { b[j] = B4[bW + (k4 * 4u + kk) * p.ldb + min(c0 + j, N4 - 1u)]; }
      for (var i = 0u; i < VM; i++) {
        let av = vec4<f32>(a[i][kk]);
        for (var j = 0u; j < VN4; j++) { acc[i * VN4 + j] = fma(av, b[j], acc[i * VN4 + j]); }
      }
    }
  }
  for (var i = 0u; i < VM; i++) {
    if (r0 + i > last) { break; }
    for (var j = 0u; j < VN4; j++) { if (c0 + j < N4) { store4(p.offC + (r0 + i) * p.ldc + c0 + j, acc[i * VN4 + j]); } }
  }
}

// tn: A [R, M], B [R, N], C_e [M, N]; thread (x, y, e) owns rows y*VM.. (VM % 4 == 0) of C_e.
@compute @workgroup_size({{VWX}}, {{VWY}}, 1)
fn wgrad4(@builtin(global_invocation_id) g: vec3<u32>) {
  let m0 = g.y * VM;
  let c0 = g.x * VN4;
  let N4 = p.N / 4u;
  let M4 = p.M / 4u;
  if (m0 >= p.M || c0 >= N4) { return; }
  let rows = groupRows(g.z);
  var acc: array<vec4<f32>, VM * VN4>;
  for (var r = rows.x; r < rows.y; r++) {
    var b: array<vec4<f32>, VN4>;
    for (var j = 0u; j < VN4; j++) { b[j] = B4[p.offB + r * p.ldb + min(c0 + j, N4 - 1u)]; }
    for (var i4 = 0u; i4 < VM / 4u; i4++) {
      let a = A4[p.offA + r * p.lda + min(m0 / 4u + i4, M4 - 1u)];
      for (var q = 0u; q < 4u; q++) {
        let av = vec4<f32>(a[q]);
        for (var j = 0u; j < VN4; j++) { acc[(i4 * 4u + q) * VN4 + j] = fma(av, b[j], acc[(i4 * 4u + q) * VN4 + j]); }
      }
    }
  }
  let bC = p.offC + g.z * p.strideW;
  for (var i = 0u; i < VM; i++) {
    if (m0 + i >= p.M) { break; }
    for (var j = 0u; j < VN4; j++) { if (c0 + j < N4) { store4(bC + (m0 + i) * p.ldc + c0 + j, acc[i * VN4 + j]); } }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Expert activations, elementwise over the first offsets[E] rows of packed [R, N] buffers (N = inner width).
// Backward kernels overwrite dh in place with the up pre-activation's gradient.

@group(0) @binding(0) var<storage, read> act0: array<f32>;          // gatePre (SwiGLU) or upPre (GELU)
@group(0) @binding(1) var<storage, read> act1: array<f32>;          // upPre (SwiGLU)
@group(0) @binding(2) var<storage, read_write> actOut: array<f32>;  // hidden (forward); dh -> dUpPre (backward)
@group(0) @binding(5) var<storage, read_write> actOut2: array<f32>; // dGatePre (SwiGLU backward)

const EW: u32 = {{EW}}u;
const GELU_C: f32 = 0.7978845608028654; // sqrt(2/pi)

fn actIndex(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  let i = gid.x + gid.y * nwg.x * EW;
  let rows = min(offsets[p.offO + p.E], p.R);
  if (i >= rows * p.N) { return 0xffffffffu; }
  return i;
}

fn sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }

// 0.5 (1 + tanh(z)) of gelu_tanh written as sigmoid(2z): no cancellation in the negative tail, and no tanh
// (some implementations overflow to NaN for large arguments).
fn geluGate(x: f32) -> f32 { return sigmoid(2.0 * GELU_C * (x + 0.044715 * x * x * x)); }

@compute @workgroup_size(EW)
fn swiglu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = actIndex(gid, nwg);
  if (i == 0xffffffffu) { return; }
  let g = act0[i];
  actOut[i] = g * sigmoid(g) * act1[i];
}

@compute @workgroup_size(EW)
fn swiglu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = actIndex(gid, nwg);
  if (i == 0xffffffffu) { return; }
  let dh = actOut[i];
  let g = act0[i];
  let s = sigmoid(g);
  actOut2[i] = dh * act1[i] * s * (1.0 + g * (1.0 - s));
  actOut[i] = dh * g * s;
}

@compute @workgroup_size(EW)
fn gelu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = actIndex(gid, nwg);
  if (i == 0xffffffffu) { return; }
  let x = act0[i];
  actOut[i] = x * geluGate(x);
}

@compute @workgroup_size(EW)
fn gelu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = actIndex(gid, nwg);
  if (i == 0xffffffffu) { return; }
  let x = act0[i];
  let s = geluGate(x);
  let dInner = GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
  // with s = 0.5 (1 + tanh z): d/dx = s + x * 0.5 (1 - tanh^2 z) z' = s + 2 x s (1 - s) z'
  actOut[i] = actOut[i] * (s + 2.0 * x * s * (1.0 - s) * dInner);
}
