// Tiled f32 matrix multiply, batched: C[b] = alpha * op(A[b]) op(B[b]) + beta * C[b].
// Layouts (TRANS_A, TRANS_B): nn: A [M,K], B [K,N]; nt: A [M,K], B [N,K] (A B^T); tn: A [K,M], B [K,N] (A^T B).
// Each workgroup computes a BM x BN tile of C; each thread a TM x TN block held in registers. A and B tiles
// are staged through workgroup memory BK deep. Any M, N, K works: loads and stores outside are masked.
// Template parameters: BM BN BK TM TN (TN a multiple of 4), TRANS_A TRANS_B (true/false).
//
// Fused extras, each saving a launch (src/ops/matmul.ts writes the template text for them):
// - zsum > 1: C = alpha * sum_z op(A[z]) op(B[z]) + beta * C, the batches summed into one C (one launch for
//   dx = dq Wq + dk Wk + dv Wv); the grid's z is then 1.
// - the epilogue (template EPI1 / EPI4) adds R (a residual, laid out like C) and/or a bias over columns,
//   declared at bindings 4 and 5 by the template EPI_DECL only when used (every declared binding a kernel
//   touches is in its layout, so the text must not exist when the launch binds nothing there).
// - BIAS_GRAD (tn only): the workgroups of the first column block also sum A over K, the bias gradient of a
//   linear layer whose weight gradient this is: DB[m] = alpha * sum_k A[k, m] + beta * DB[m] (binding 6).

struct Params {
  M: u32, N: u32, K: u32, lda: u32,
  ldb: u32, ldc: u32, offA: u32, offB: u32,
  offC: u32, strideA: u32, strideB: u32, strideC: u32,
  alpha: f32, beta: f32, zsum: u32, _p1: u32,
}

@group(0) @binding(0) var<storage, read> A: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const BM: u32 = {{BM}}u;
const BN: u32 = {{BN}}u;
const BK: u32 = {{BK}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const TN4: u32 = TN / 4u;
const WX: u32 = BN / TN;
const WY: u32 = BM / TM;
const NT: u32 = WX * WY;
const TRANS_A: bool = {{TRANS_A}};
const TRANS_B: bool = {{TRANS_B}};
const BIAS_GRAD: bool = {{BIAS_GRAD}};

{{EPI_DECL}}

// What the epilogue adds to C's element idx (column n, or vec4 column n4).
fn epi1(idx: u32, n: u32) -> f32 { return 0.0{{EPI1}}; }
fn epi4(idx: u32, n4: u32) -> vec4<f32> { return vec4<f32>(0.0){{EPI4}}; }
fn storeBiasGrad1(m: u32, v: f32) { {{BG_STORE1}} }
fn storeBiasGrad4(m4: u32, v: vec4<f32>) { {{BG_STORE4}} }

var<workgroup> As: array<f32, BK * BM>;           // As[k * BM + m]
var<workgroup> Bs: array<vec4<f32>, BK * BN / 4u>; // Bs[k * BN/4 + n/4]

fn loadA(base: u32, m: u32, k: u32) -> f32 {
  if (m >= p.M || k >= p.K) { return 0.0; }
  if (TRANS_A) { return A[base + k * p.lda + m]; }
  return A[base + m * p.lda + k];
}

fn loadB(base: u32, k: u32, n: u32) -> f32 {
  if (k >= p.K || n >= p.N) { return 0.0; }
  if (TRANS_B) { return B[base + n * p.ldb + k]; }
  return B[base + k * p.ldb + n];
}

@compute @workgroup_size(WX, WY, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let lid = lid3.y * WX + lid3.x;
  let m0 = wg.y * BM;
  let n0 = wg.x * BN;
  let baseC = p.offC + wg.z * p.strideC;
  // Only the first column block's threads of column 0 sum A for the bias gradient.
  let sumA = BIAS_GRAD && wg.x == 0u && lid3.x == 0u;

  var acc: array<vec4<f32>, TM * TN4>;
  for (var i = 0u; i < TM * TN4; i++) { acc[i] = vec4<f32>(0.0); }
  var colA: array<f32, TM>;

  for (var z = 0u; z < max(p.zsum, 1u); z++) {
    let baseA = p.offA + (wg.z + z) * p.strideA;
    let baseB = p.offB + (wg.z + z) * p.strideB;
    for (var k0 = 0u; k0 < p.K; k0 += BK) {
      // Stage the A tile; consecutive threads walk the contiguous dimension of A in memory.
      for (var i = lid; i < BM * BK; i += NT) {
        var m: u32; var k: u32;
        if (TRANS_A) { m = i % BM; k = i / BM; } else { k = i % BK; m = i / BK; }
        As[k * BM + m] = loadA(baseA, m0 + m, k0 + k);
      }
      // Stage the B tile, four columns at a time.
      for (var i = lid; i < BK * BN / 4u; i += NT) {
        var k: u32; var n: u32;
        if (TRANS_B) { k = i % BK; n = (i / BK) * 4u; } else { n = (i % (BN / 4u)) * 4u; k = i / (BN / 4u); }
        let kk = k0 + k;
        let nn = n0 + n;
        Bs[k * (BN / 4u) + n / 4u] = vec4<f32>(loadB(baseB, kk, nn), loadB(baseB, kk, nn + 1u),
                                               loadB(baseB, kk, nn + 2u), loadB(baseB, kk, nn + 3u));
      }
      workgroupBarrier();

      for (var k = 0u; k < BK; k++) {
        var b: array<vec4<f32>, TN4>;
        for (var j = 0u; j < TN4; j++) { b[j] = Bs[k * (BN / 4u) + lid3.x * TN4 + j]; }
        for (var i = 0u; i < TM; i++) {
          let a = As[k * BM + lid3.y * TM + i];
          if (sumA) { colA[i] += a; }
          for (var j = 0u; j < TN4; j++) { acc[i * TN4 + j] = fma(vec4<f32>(a), b[j], acc[i * TN4 + j]); }
        }
      }
      workgroupBarrier();
    }
  }

  for (var i = 0u; i < TM; i++) {
    let m = m0 + lid3.y * TM + i;
    if (m >= p.M) { break; }
    if (sumA) { storeBiasGrad1(m, colA[i]); }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + lid3.x * TN + j;
      if (n >= p.N) { break; }
      let idx = baseC + m * p.ldc + n;
      var v = p.alpha * acc[i * TN4 + j / 4u][j % 4u];
      if (p.beta != 0.0) { v += p.beta * C[idx]; }
      C[idx] = v + epi1(idx, n);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Direct vec4 kernels, for when every row stride and offset is a multiple of 4 (checked by the launcher).
// No workgroup memory and no barriers: on CPU adapters (lavapipe) the caches do the staging better than
// workgroup memory does, and each thread keeps a VM x (4*VN4) block of C in registers, loading A and B four
// elements at a time. Offsets/strides in Params are then in vec4 units. Template: VM, VN4.

@group(0) @binding(0) var<storage, read> A4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> B4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> C4: array<vec4<f32>>;

const VM: u32 = {{VM}}u;
const VN4: u32 = {{VN4}}u;

fn store4(base: u32, m: u32, n4: u32, v: vec4<f32>) {
  let idx = base + m * p.ldc + n4;
  var out = p.alpha * v;
  if (p.beta != 0.0) { out += p.beta * C4[idx]; }
  C4[idx] = out + epi4(idx, n4);
}

// nn: A [M,K] (K%4==0), B [K,N] (N%4==0). Thread (x,y) owns rows y*VM.. and vec4 columns x*VN4..
@compute @workgroup_size({{VWX}}, {{VWY}}, 1)
fn nn4(@builtin(global_invocation_id) g: vec3<u32>) {
  let m0 = g.y * VM;
  let c0 = g.x * VN4;
  let N4 = p.N / 4u;
  if (m0 >= p.M || c0 >= N4) { return; }
  var acc: array<vec4<f32>, VM * VN4>;
  for (var z = 0u; z < max(p.zsum, 1u); z++) {
    let bA = p.offA + (g.z + z) * p.strideA;
    let bB = p.offB + (g.z + z) * p.strideB;
    for (var k4 = 0u; k4 < p.K / 4u; k4++) {
      var a: array<vec4<f32>, VM>;
      for (var i = 0u; i < VM; i++) { a[i] = A4[bA + min(m0 + i, p.M - 1u) * p.lda + k4]; }
      for (var kk = 0u; kk < 4u; kk++) {
        var b: array<vec4<f32>, VN4>;
        for (var j = 0u; j < VN4; j++) { b[j] = B4[bB + (k4 * 4u + kk) * p.ldb + min(c0 + j, N4 - 1u)]; }
        for (var i = 0u; i < VM; i++) {
          let av = vec4<f32>(a[i][kk]);
          for (var j = 0u; j < VN4; j++) { acc[i * VN4 + j] = fma(av, b[j], acc[i * VN4 + j]); }
        }
      }
    }
  }
  let bC = p.offC + g.z * p.strideC;
  for (var i = 0u; i < VM; i++) {
    if (m0 + i >= p.M) { break; }
    for (var j = 0u; j < VN4; j++) { if (c0 + j < N4) { store4(bC, m0 + i, c0 + j, acc[i * VN4 + j]); } }
  }
}

// nt: A [M,K], B [N,K] (K%4==0, N%4==0): C[m,n] = dot over k of rows of A and B.
@compute @workgroup_size({{VWX}}, {{VWY}}, 1)
fn nt4(@builtin(global_invocation_id) g: vec3<u32>) {
  let m0 = g.y * VM;
  let c0 = g.x * VN4;
  let N4 = p.N / 4u;
  if (m0 >= p.M || c0 >= N4) { return; }
  var acc: array<vec4<f32>, VM * VN4>;
  for (var z = 0u; z < max(p.zsum, 1u); z++) {
    let bA = p.offA + (g.z + z) * p.strideA;
    let bB = p.offB + (g.z + z) * p.strideB;
    for (var k4 = 0u; k4 < p.K / 4u; k4++) {
      var a: array<vec4<f32>, VM>;
      for (var i = 0u; i < VM; i++) { a[i] = A4[bA + min(m0 + i, p.M - 1u) * p.lda + k4]; }
      for (var j = 0u; j < VN4; j++) {
        let n = min(c0 + j, N4 - 1u) * 4u;
        let b0 = B4[bB + n * p.ldb + k4];
        let b1 = B4[bB + (n + 1u) * p.ldb + k4];
        let b2 = B4[bB + (n + 2u) * p.ldb + k4];
        let b3 = B4[bB + (n + 3u) * p.ldb + k4];
        for (var i = 0u; i < VM; i++) {
          acc[i * VN4 + j] += vec4<f32>(dot(a[i], b0), dot(a[i], b1), dot(a[i], b2), dot(a[i], b3));
        }
      }
    }
  }
  let bC = p.offC + g.z * p.strideC;
  for (var i = 0u; i < VM; i++) {
    if (m0 + i >= p.M) { break; }
    for (var j = 0u; j < VN4; j++) { if (c0 + j < N4) { store4(bC, m0 + i, c0 + j, acc[i * VN4 + j]); } }
  }
}

// tn: A [K,M] (M%4==0), B [K,N] (N%4==0): C = A^T B as a sum of outer products of rows of A and B.
// Thread rows come in groups of 4 (one vec4 of A); VM must be a multiple of 4 here.
@compute @workgroup_size({{VWX}}, {{VWY}}, 1)
fn tn4(@builtin(global_invocation_id) g: vec3<u32>) {
  let m0 = g.y * VM;
  let c0 = g.x * VN4;
  let N4 = p.N / 4u;
  let M4 = p.M / 4u;
  if (m0 >= p.M || c0 >= N4) { return; }
  let sumA = BIAS_GRAD && g.x == 0u; // the first column block also sums A for the bias gradient
  var colA: array<vec4<f32>, VM / 4u>;
  var acc: array<vec4<f32>, VM * VN4>;
  for (var z = 0u; z < max(p.zsum, 1u); z++) {
    let bA = p.offA + (g.z + z) * p.strideA;
    let bB = p.offB + (g.z + z) * p.strideB;
    for (var k = 0u; k < p.K; k++) {
      var b: array<vec4<f32>, VN4>;
      for (var j = 0u; j < VN4; j++) { b[j] = B4[bB + k * p.ldb + min(c0 + j, N4 - 1u)]; }
      for (var i4 = 0u; i4 < VM / 4u; i4++) {
        let a = A4[bA + k * p.lda + min(m0 / 4u + i4, M4 - 1u)];
        if (sumA) { colA[i4] += a; }
        for (var r = 0u; r < 4u; r++) {
          let av = vec4<f32>(a[r]);
          for (var j = 0u; j < VN4; j++) { acc[(i4 * 4u + r) * VN4 + j] = fma(av, b[j], acc[(i4 * 4u + r) * VN4 + j]); }
        }
      }
    }
  }
  if (sumA) {
    for (var i4 = 0u; i4 < VM / 4u; i4++) { if (m0 + i4 * 4u < p.M) { storeBiasGrad4(m0 / 4u + i4, colA[i4]); } }
  }
  let bC = p.offC + g.z * p.strideC;
  for (var i = 0u; i < VM; i++) {
    if (m0 + i >= p.M) { break; }
    for (var j = 0u; j < VN4; j++) { if (c0 + j < N4) { store4(bC, m0 + i, c0 + j, acc[i * VN4 + j]); } }
  }
}
