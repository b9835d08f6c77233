// Tiled f32 matrix multiply, batched: C[b] = alpha * op(A[b]) op(B[b]) + beta * C[b].
// Layouts (TRANS_A, TRANS_B): nn: A [M,K], B [K,N]; nt: A [M,K], B [N,K] (A B^T); tn: A [K,M], B [K,N] (A^T B).
// Each workgroup computes a BM x BN tile of C; each thread a TM x TN block held in registers. A and B tiles
// are staged through workgroup memory BK deep, double-buffered, by the tile core in lib/tile.wgsl (shared
// with the grouped expert GEMMs). Its global loads come in groups of 4 elements along each operand's
// contiguous dimension; FETCH (template text from src/ops/matmul.ts) reads a group as one vec4 when every
// stride and extent is 4-aligned and as 4 masked scalars otherwise. Any M, N, K works: loads and stores
// outside are masked.
// Template parameters: BM BN BK TM TN (TN, BK and BM multiples of 4), TRANS_A TRANS_B (true/false).
//
// Fused extras, each saving a launch (src/ops/matmul.ts writes the template text for them):
// - zsum > 1: C = alpha * sum_z op(A[z]) op(B[z]) + beta * C, the batches summed into one C (one launch for
//   dx = dq Wq + dk Wk + dv Wv); the grid's z is then 1.
// - the epilogue (template EPI1 / EPI4) adds R (a residual, laid out like C) and/or a bias over columns,
//   declared at bindings 4 and 5 by the template EPI_DECL only when used (every declared binding a kernel
//   touches is in its layout, so the text must not exist when the launch binds nothing there).
// - BIAS_GRAD (tn only): the workgroups of the first column block also sum A over K, the bias gradient of a
//   linear layer whose weight gradient this is: DB[m] = alpha * sum_k A[k, m] + beta * DB[m] (binding 6).
//
// Split-K (kSplit > 1, one C only): the K steps of every batch summed into C, (z, k0) in order, are cut
// into kSplit contiguous runs; the grid's z is the run. Each run writes its raw sums (and bias-gradient
// sums) to the scratch Part (binding 7, template STORE_OUT / BG_STORE1 text), and splitk_reduce adds the
// runs in order and applies alpha, beta and the epilogue. A weight gradient whose C is a few tiles but
// whose K is the token count then fills the GPU instead of looping over K in a few workgroups.

struct Params {
  M: u32, N: u32, K: u32, lda: u32,
  ldb: u32, ldc: u32, offA: u32, offB: u32,
  offC: u32, strideA: u32, strideB: u32, strideC: u32,
  alpha: f32, beta: f32, zsum: u32, kSplit: u32,
}

// Storage element types (template A_T, B_T, C_T: f32, or f16 for activations under mixed precision). Every
// load widens to f32 and every store rounds once, so the arithmetic is f32 either way.
@group(0) @binding(0) var<storage, read> A: array<{{A_T:f32}}>;
@group(0) @binding(1) var<storage, read> B: array<{{B_T:f32}}>;
@group(0) @binding(2) var<storage, read_write> C: array<{{C_T:f32}}>;
alias CT = {{C_T:f32}};
@group(0) @binding(3) var<uniform> p: Params;

const BM: u32 = {{BM}}u;
const BN: u32 = {{BN}}u;
const BK: u32 = {{BK}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const TRANS_A: bool = {{TRANS_A}};
const TRANS_B: bool = {{TRANS_B}};
const BIAS_GRAD: bool = {{BIAS_GRAD}};

{{EPI_DECL}}
// Split-K's per-run sums: C's [kSplit, M, N], then the bias gradient's [kSplit, M]. Only main in split mode
// and splitk_reduce touch it.
@group(0) @binding(7) var<storage, read_write> Part: array<f32>;

// What the epilogue adds to C's element idx (column n, or vec4 column n4).
fn epi1(idx: u32, n: u32) -> f32 { return 0.0{{EPI1}}; }
fn epi4(idx: u32, n4: u32) -> vec4<f32> { return vec4<f32>(0.0){{EPI4}}; }
fn storeBiasGrad1(s: u32, m: u32, v: f32) { {{BG_STORE1}} }
fn storeBiasGrad4(m4: u32, v: vec4<f32>) { {{BG_STORE4}} }
// C's element idx (row m, column n) from the sum `a` over K (run s of a split).
fn storeOut(s: u32, m: u32, n: u32, idx: u32, a: f32) { {{STORE_OUT}} }

// #include "lib/tile"

fn loadA(base: u32, m: u32, k: u32) -> f32 {
  if (m >= p.M || k >= p.K) { return 0.0; }
  if (TRANS_A) { return f32(A[base + k * p.lda + m]); }
  return f32(A[base + m * p.lda + k]);
}

fn loadB(base: u32, k: u32, n: u32) -> f32 {
  if (k >= p.K || n >= p.N) { return 0.0; }
  if (TRANS_B) { return f32(B[base + n * p.ldb + k]); }
  return f32(B[base + k * p.ldb + n]);
}

// fetchA(base, m, k): A's 4 elements from (m, k) along its contiguous dimension (m for tn, else k);
// fetchB(base, k, n): B's along its own (k for nt, else n).
{{FETCH}}

// Issues the global loads of K step t (batch z + t / nK, k0 = (t % nK) * BK) into ra / rb.
fn fetchTile(t: u32, nK: u32, z: u32, m0: u32, n0: u32, lid: u32) {
  let zz = z + t / nK;
  let k0 = (t % nK) * BK;
  let baseA = p.offA + zz * p.strideA;
  let baseB = p.offB + zz * p.strideB;
  for (var r = 0u; r < RA; r++) {
    let g = lid + r * NT;
    if (g < GA) { let mk = groupA(g, TRANS_A); ra[r] = fetchA(baseA, m0 + mk.x, k0 + mk.y); }
  }
  for (var r = 0u; r < RB; r++) {
    let g = lid + r * NT;
    if (g < GB) { let kn = groupB(g, TRANS_B); rb[r] = fetchB(baseB, k0 + kn.x, n0 + kn.y); }
  }
}

@compute @workgroup_size(WX, WY, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let lid = lid3.y * WX + lid3.x;
  let m0 = wg.y * BM;
  let n0 = wg.x * BN;
  // With split-K the grid's z is the run; there is one C (batch 0).
  let split = p.kSplit > 1u;
  let z = select(wg.z, 0u, split);
  let baseC = p.offC + z * p.strideC;
  let nK = (p.K + BK - 1u) / BK;
  let steps = max(p.zsum, 1u) * nK;
  var t0 = 0u;
  var t1 = steps;
  if (split) {
    let per = (steps + p.kSplit - 1u) / p.kSplit;
    t0 = min(steps, wg.z * per);
    t1 = min(steps, t0 + per);
  }
  // Only the first column block's threads of column 0 sum A for the bias gradient.
  let sumA = BIAS_GRAD && wg.x == 0u && lid3.x == 0u;

  var colA: array<f32, TM>;

  if (t0 < t1) {
    fetchTile(t0, nK, z, m0, n0, lid);
    storeTile(0u, lid, TRANS_A, TRANS_B);
  }
  workgroupBarrier();
  for (var t = t0; t < t1; t++) {
    let cur = (t - t0) % 2u;
    let more = t + 1u < t1;
    if (more) { fetchTile(t + 1u, nK, z, m0, n0, lid); }
    tileMac(cur, lid3.x, lid3.y);
    if (sumA) {
      for (var k = 0u; k < BK; k++) {
        for (var i = 0u; i < TM; i++) { colA[i] += As[cur * BK * BM + k * BM + lid3.y * TM + i]; }
      }
    }
    if (more) { storeTile(1u - cur, lid, TRANS_A, TRANS_B); }
    workgroupBarrier();
  }

  for (var i = 0u; i < TM; i++) {
    let m = m0 + lid3.y * TM + i;
    if (m >= p.M) { break; }
    if (sumA) { storeBiasGrad1(wg.z, m, colA[i]); }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + lid3.x * TN + j;
      if (n >= p.N) { break; }
      storeOut(wg.z, m, n, baseC + m * p.ldc + n, tacc[i * TN4 + j / 4u][j % 4u]);
    }
  }
}

// Split-K, second pass: one thread per element of C adds the kSplit runs in order (and the bias-gradient
// runs, in column 0's thread), then applies alpha, beta and the epilogue through the same store functions.
@compute @workgroup_size(256)
fn splitk_reduce(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = g.x + g.y * nwg.x * 256u;
  if (i >= p.M * p.N) { return; }
  let m = i / p.N;
  let n = i % p.N;
  var s = 0.0;
  for (var r = 0u; r < p.kSplit; r++) { s += Part[r * p.M * p.N + i]; }
  storeOut(0u, m, n, p.offC + m * p.ldc + n, s);
  if (BIAS_GRAD && n == 0u) {
    var sb = 0.0;
    for (var r = 0u; r < p.kSplit; r++) { sb += Part[p.kSplit * p.M * p.N + r * p.M + m]; }
    storeBiasGrad1(0u, m, sb);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Direct vec4 kernels, for when every row stride and offset is a multiple of 4 (checked by the launcher).
// No workgroup memory and no barriers: on CPU adapters (lavapipe) the caches do the staging better than
// workgroup memory does, and each thread keeps a VM x (4*VN4) block of C in registers, loading A and B four
// elements at a time. Offsets/strides in Params are then in vec4 units. Template: VM, VN4.

@group(0) @binding(0) var<storage, read> A4: array<vec4<{{A_T:f32}}>>;
@group(0) @binding(1) var<storage, read> B4: array<vec4<{{B_T:f32}}>>;
@group(0) @binding(2) var<storage, read_write> C4: array<vec4<CT>>;

const VM: u32 = {{VM}}u;
const VN4: u32 = {{VN4}}u;

fn store4(base: u32, m: u32, n4: u32, v: vec4<f32>) {
  let idx = base + m * p.ldc + n4;
  var out = p.alpha * v;
  if (p.beta != 0.0) { out += p.beta * vec4<f32>(C4[idx]); }
  C4[idx] = vec4<CT>(out + epi4(idx, n4));
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
      for (var i = 0u; i < VM; i++) { a[i] = vec4<f32>(A4[bA + min(m0 + i, p.M - 1u) * p.lda + k4]); }
      for (var kk = 0u; kk < 4u; kk++) {
        var b: array<vec4<f32>, VN4>;
        for (var j = 0u; j < VN4; j++) { b[j] = vec4<f32>(B4[bB + (k4 * 4u + kk) * p.ldb + min(c0 + j, N4 - 1u)]); }
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
      for (var i = 0u; i < VM; i++) { a[i] = vec4<f32>(A4[bA + min(m0 + i, p.M - 1u) * p.lda + k4]); }
      for (var j = 0u; j < VN4; j++) {
        let n = min(c0 + j, N4 - 1u) * 4u;
        let b0 = vec4<f32>(B4[bB + n * p.ldb + k4]);
        let b1 = vec4<f32>(B4[bB + (n + 1u) * p.ldb + k4]);
        let b2 = vec4<f32>(B4[bB + (n + 2u) * p.ldb + k4]);
        let b3 = vec4<f32>(B4[bB + (n + 3u) * p.ldb + k4]);
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
      for (var j = 0u; j < VN4; j++) { b[j] = vec4<f32>(B4[bB + k * p.ldb + min(c0 + j, N4 - 1u)]); }
      for (var i4 = 0u; i4 < VM / 4u; i4++) {
        let a = vec4<f32>(A4[bA + k * p.lda + min(m0 / 4u + i4, M4 - 1u)]);
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
