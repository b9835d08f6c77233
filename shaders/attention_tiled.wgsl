// Multi-head self-attention for GPUs, FlashAttention-2 style (without tensor cores): the same operation,
// layout, bindings, Params, LSE and masking as attention.wgsl (read its header first), so either file's
// backward consumes the other's forward. attention.wgsl gives each thread a whole row, which keeps
// 1 to 4 dHead-long arrays per thread live and spills registers on GPUs at dHead 64 and 128; here a
// workgroup owns ROWS rows (queries in forward and backward_dq, keys in backward_dkdv) of one (b, h)
// and streams the other side COLS rows at a time, and its NT threads share both the rows and the head
// dimension, so per-thread state is a few small register blocks:
// - scores: the [ROWS, COLS] tile of dot products is a register-blocked matmul of two staged tiles, each
//   thread a TM x TN block (owned rows sy + a*SROWS, streamed rows sx + b*SCOLS);
// - accumulators: out[ROWS, dHead] += w[ROWS, COLS] x staged[COLS, dHead], each thread RM rows
//   (ry + a*RG) by CD vec4 columns (cx + b*CG): ROWS*DP/NT floats, at most 32 at the default tiles.
// Rows are staged as vec4s (a quarter of the shared-memory loads and of the unrolled code) DS = DP/4 + 1
// vec4s apart, and score rows COLS + 1 floats apart: threads that read one column of consecutive rows
// then hit different memory banks. Padding columns and rows past T are staged as zeros and masked scores
// get weight 0, so padded products add exact zeros.
// Each output element is written by one thread that sums in a fixed order (deterministic, no atomics).
// Template parameters: ROWS, COLS, NT, TM, TN (TM*TN = ROWS*COLS/NT), RM, CG (RM*DP/CG = ROWS*DP/NT),
// DP = dHead rounded up to a multiple of 4*CG, and CAUSAL, QK and the storage types Q_T, K_T, V_T, O_T as
// in attention.wgsl.
// Grid: x = owned-row tile (ceil(T/ROWS)), y = b*H + h.

struct Params {
  T: u32, H: u32, dHead: u32, rowStride: u32,
  seqStride: u32, scale: f32, tableRows: u32, _p1: u32,
}

@group(0) @binding(0) var<storage, read> Q: array<{{Q_T:f32}}>;
@group(0) @binding(1) var<storage, read> K: array<{{K_T:f32}}>;
@group(0) @binding(2) var<storage, read> V: array<{{V_T:f32}}>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read_write> LSE: array<f32>;
@group(0) @binding(5) var<storage, read_write> O: array<{{O_T:f32}}>;
@group(0) @binding(5) var<storage, read> dO: array<f32>;
@group(0) @binding(6) var<storage, read_write> Delta: array<f32>;
@group(0) @binding(7) var<storage, read_write> dQ: array<f32>;
@group(0) @binding(8) var<storage, read> Ofwd: array<{{O_T:f32}}>;
@group(0) @binding(7) var<storage, read_write> dK: array<f32>;
@group(0) @binding(8) var<storage, read_write> dV: array<f32>;
@group(0) @binding(9) var<storage, read> RopeTab: array<f32>;

const ROWS: u32 = {{ROWS}}u;
const COLS: u32 = {{COLS}}u;
const NT: u32 = {{NT}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const RM: u32 = {{RM}}u;
const CG: u32 = {{CG}}u;
const DP: u32 = {{DP}}u;
const CAUSAL: bool = {{CAUSAL}};
const DS: u32 = DP / 4u + 1u;
const SS: u32 = COLS + 1u;
const SROWS: u32 = ROWS / TM;
const SCOLS: u32 = COLS / TN;
const RG: u32 = ROWS / RM;
const CD: u32 = DP / 4u / CG;
const NEG_BIG: f32 = -1.0e30;

// Owned rows (forward: q; dq: q, dO; dkdv: k, v), reused at the end to stage the results for stores.
var<workgroup> ownA: array<vec4<f32>, ROWS * DS>;
var<workgroup> ownB: array<vec4<f32>, ROWS * DS>;
// Streamed rows (forward: k, then v in the same tile; dq: k, v; dkdv: q, dO).
var<workgroup> strA: array<vec4<f32>, COLS * DS>;
var<workgroup> strB: array<vec4<f32>, COLS * DS>;
// Score-tile weights (forward: p; dq: dS; dkdv: dS^T in w1 and P^T in w2).
var<workgroup> w1: array<f32, ROWS * SS>;
var<workgroup> w2: array<f32, ROWS * SS>;
var<workgroup> rowM: array<f32, ROWS>;     // forward: running max; dq: lse
var<workgroup> rowL: array<f32, ROWS>;     // forward: running sum; dq: delta
var<workgroup> rowAlpha: array<f32, ROWS>; // forward: this tile's rescale factor
var<workgroup> colLse: array<f32, COLS>;   // dkdv
var<workgroup> colDelta: array<f32, COLS>; // dkdv

// Element loads widen the storage type (f16 under mixed precision) to f32, the arithmetic type.
fn qAt(i: u32) -> f32 { return f32(Q[i]); }
fn kAt(i: u32) -> f32 { return f32(K[i]); }
fn vAt(i: u32) -> f32 { return f32(V[i]); }
fn oAt(i: u32) -> f32 { return f32(Ofwd[i]); }

fn loadQ(row: u32, t: u32, c: u32) -> f32 { return {{QK}}Q(row, t, c); }
fn loadK(row: u32, t: u32, c: u32) -> f32 { return {{QK}}K(row, t, c); }
// Element c of the gradient w.r.t. caller's q or k at position t, from the one w.r.t. the rotated row r of ownA.
fn gradAt(r: u32, c: u32, t: u32) -> f32 { return {{QK}}GradAt(r, c, t); }

fn plainQ(row: u32, t: u32, c: u32) -> f32 { return qAt(row + c); }
fn plainK(row: u32, t: u32, c: u32) -> f32 { return kAt(row + c); }
fn plainGradAt(r: u32, c: u32, t: u32) -> f32 { return ownAt(r, c); }
// Element c of staged row r of ownA.
fn ownAt(r: u32, c: u32) -> f32 { return ownA[r * DS + c / 4u][c % 4u]; }

// RoPE exactly as attention.wgsl applies it, one element at a time.
fn ropeCos(t: u32, i: u32) -> f32 { return RopeTab[t * (p.dHead / 2u) + i]; }
fn ropeSin(t: u32, i: u32) -> f32 { return RopeTab[(p.tableRows + t) * (p.dHead / 2u) + i]; }
fn ropeQ(row: u32, t: u32, c: u32) -> f32 {
  let half = p.dHead / 2u;
  if (c < half) { return qAt(row + c) * ropeCos(t, c) - qAt(row + c + half) * ropeSin(t, c); }
  return qAt(row + c) * ropeCos(t, c - half) + qAt(row + c - half) * ropeSin(t, c - half);
}
fn ropeK(row: u32, t: u32, c: u32) -> f32 {
  let half = p.dHead / 2u;
  if (c < half) { return kAt(row + c) * ropeCos(t, c) - kAt(row + c + half) * ropeSin(t, c); }
  return kAt(row + c) * ropeCos(t, c - half) + kAt(row + c - half) * ropeSin(t, c - half);
}
fn ropeGradAt(r: u32, c: u32, t: u32) -> f32 {
  let half = p.dHead / 2u;
  let g = ownAt(r, c);
  if (c < half) { return g * ropeCos(t, c) + ownAt(r, c + half) * ropeSin(t, c); }
  let m = c - half;
  return g * ropeCos(t, m) - ownAt(r, m) * ropeSin(t, m);
}

fn headBase(bh: u32) -> u32 {
  return (bh / p.H) * p.seqStride + (bh % p.H) * p.dHead;
}

const SRC_Q: u32 = 0u;
const SRC_K: u32 = 1u;
const SRC_V: u32 = 2u;
// Vec4 x of a staged tile whose row 0 is token t0: zero past T and in the padding columns. (dO has its
// own function: forward binds O in its slot, so forward must not reach a function that reads dO.)
fn staged(src: u32, base: u32, t0: u32, x: u32) -> vec4<f32> {
  let t = t0 + x / DS;
  var r = vec4<f32>(0.0);
  if (t >= p.T) { return r; }
  let row = base + t * p.rowStride;
  for (var e = 0u; e < 4u; e++) {
    let c = (x % DS) * 4u + e;
    if (c < p.dHead) {
      switch src {
        case SRC_Q: { r[e] = loadQ(row, t, c); }
        case SRC_K: { r[e] = loadK(row, t, c); }
        default: { r[e] = vAt(row + c); }
      }
    }
  }
  return r;
}
fn stagedDO(base: u32, t0: u32, x: u32) -> vec4<f32> {
  let t = t0 + x / DS;
  var r = vec4<f32>(0.0);
  if (t >= p.T) { return r; }
  for (var e = 0u; e < 4u; e++) {
    let c = (x % DS) * 4u + e;
    if (c < p.dHead) { r[e] = dO[base + t * p.rowStride + c]; }
  }
  return r;
}

// Query i sees key j (both real tokens).
fn visible(i: u32, j: u32) -> bool {
  return i < p.T && j < p.T && (!CAUSAL || j <= i);
}

// The thread's TM x TN block of ownA . strA^T (dotsA) or ownB . strB^T (dotsB), s[a*TN + b] for owned
// row sy + a*SROWS and streamed row sx + b*SCOLS.
fn dotsA(sy: u32, sx: u32) -> array<f32, TM * TN> {
  var s: array<f32, TM * TN>;
  for (var d = 0u; d < DP / 4u; d++) {
    var x: array<vec4<f32>, TM>;
    for (var a = 0u; a < TM; a++) { x[a] = ownA[(sy + a * SROWS) * DS + d]; }
    for (var b = 0u; b < TN; b++) {
      let y = strA[(sx + b * SCOLS) * DS + d];
      for (var a = 0u; a < TM; a++) { s[a * TN + b] += dot(x[a], y); }
    }
  }
  return s;
}
fn dotsB(sy: u32, sx: u32) -> array<f32, TM * TN> {
  var s: array<f32, TM * TN>;
  for (var d = 0u; d < DP / 4u; d++) {
    var x: array<vec4<f32>, TM>;
    for (var a = 0u; a < TM; a++) { x[a] = ownB[(sy + a * SROWS) * DS + d]; }
    for (var b = 0u; b < TN; b++) {
      let y = strB[(sx + b * SCOLS) * DS + d];
      for (var a = 0u; a < TM; a++) { s[a * TN + b] += dot(x[a], y); }
    }
  }
  return s;
}

// acc[a*CD + b] += sum_k w1[r][k] strA[k][c4] (accumulate1) or w2[r][k] strB[k][c4] (accumulate2), for
// r = ry + a*RG and vec4 column c4 = cx + b*CG.
fn accumulate1(acc: ptr<function, array<vec4<f32>, RM * CD>>, ry: u32, cx: u32) {
  for (var k = 0u; k < COLS; k++) {
    var w: array<f32, RM>;
    for (var a = 0u; a < RM; a++) { w[a] = w1[(ry + a * RG) * SS + k]; }
    for (var b = 0u; b < CD; b++) {
      let y = strA[k * DS + cx + b * CG];
      for (var a = 0u; a < RM; a++) { (*acc)[a * CD + b] = fma(vec4<f32>(w[a]), y, (*acc)[a * CD + b]); }
    }
  }
}
fn accumulate2(acc: ptr<function, array<vec4<f32>, RM * CD>>, ry: u32, cx: u32) {
  for (var k = 0u; k < COLS; k++) {
    var w: array<f32, RM>;
    for (var a = 0u; a < RM; a++) { w[a] = w2[(ry + a * RG) * SS + k]; }
    for (var b = 0u; b < CD; b++) {
      let y = strB[k * DS + cx + b * CG];
      for (var a = 0u; a < RM; a++) { (*acc)[a * CD + b] = fma(vec4<f32>(w[a]), y, (*acc)[a * CD + b]); }
    }
  }
}

// Online-softmax update of owned query row r over the scaled scores of this key tile (in w1, NEG_BIG where
// masked): w1 becomes the tile's weights exp(s - m), rowAlpha[r] the factor that rescales what came before.
fn softmaxRow(r: u32) {
  let mOld = rowM[r];
  var m = mOld;
  for (var k = 0u; k < COLS; k++) { m = max(m, w1[r * SS + k]); }
  // While a row has seen no visible key m is still NEG_BIG, and exp(NEG_BIG - m) would be 1, not 0.
  let seen = m > NEG_BIG;
  var sum = 0.0;
  for (var k = 0u; k < COLS; k++) {
    let e = select(0.0, exp(w1[r * SS + k] - m), seen);
    w1[r * SS + k] = e;
    sum += e;
  }
  let alpha = exp(mOld - m);
  rowAlpha[r] = alpha;
  rowM[r] = m;
  rowL[r] = rowL[r] * alpha + sum;
}

@compute @workgroup_size(NT)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let bh = wg.y;
  let base = headBase(bh);
  let q0 = wg.x * ROWS;
  for (var x = lid; x < ROWS * DS; x += NT) { ownA[x] = staged(SRC_Q, base, q0, x); }
  for (var r = lid; r < ROWS; r += NT) { rowM[r] = NEG_BIG; rowL[r] = 0.0; }
  let sy = lid / SCOLS;
  let sx = lid % SCOLS;
  let ry = lid / CG;
  let cx = lid % CG;
  var acc: array<vec4<f32>, RM * CD>;
  let kEnd = select(p.T, min(p.T, q0 + ROWS), CAUSAL);
  for (var j0 = 0u; j0 < kEnd; j0 += COLS) {
    workgroupBarrier();
    for (var x = lid; x < COLS * DS; x += NT) { strA[x] = staged(SRC_K, base, j0, x); }
    workgroupBarrier();
    let s = dotsA(sy, sx);
    for (var a = 0u; a < TM; a++) {
      for (var b = 0u; b < TN; b++) {
        let r = sy + a * SROWS;
        let c = sx + b * SCOLS;
        w1[r * SS + c] = select(NEG_BIG, s[a * TN + b] * p.scale, visible(q0 + r, j0 + c));
      }
    }
    workgroupBarrier();
    // One thread per query row does its O(COLS) softmax update while the others stage v over k (the
    // O(COLS * dHead) products on both sides of it are what the whole workgroup shares).
    for (var r = lid; r < ROWS; r += NT) { softmaxRow(r); }
    for (var x = lid; x < COLS * DS; x += NT) { strA[x] = staged(SRC_V, base, j0, x); }
    workgroupBarrier();
    for (var a = 0u; a < RM; a++) {
      let alpha = rowAlpha[ry + a * RG];
      for (var b = 0u; b < CD; b++) { acc[a * CD + b] *= alpha; }
    }
    accumulate1(&acc, ry, cx);
  }
  // q was last read before the loop's final barrier, so ownA can take o for row-contiguous stores.
  for (var a = 0u; a < RM; a++) {
    let r = ry + a * RG;
    let inv = select(0.0, 1.0 / rowL[r], q0 + r < p.T);
    for (var b = 0u; b < CD; b++) { ownA[r * DS + cx + b * CG] = acc[a * CD + b] * inv; }
  }
  workgroupBarrier();
  for (var x = lid; x < ROWS * DP; x += NT) {
    let t = q0 + x / DP;
    let c = x % DP;
    if (t < p.T && c < p.dHead) { O[base + t * p.rowStride + c] = {{O_T:f32}}(ownAt(x / DP, c)); }
  }
  for (var r = lid; r < ROWS; r += NT) {
    if (q0 + r < p.T) { LSE[bh * p.T + q0 + r] = rowM[r] + log(rowL[r]); }
  }
}

// dq_i = scale * sum_j p_ij (dO_i.v_j - delta_i) k_j, and delta_i = dO_i . o_i for backward_dkdv.
@compute @workgroup_size(NT)
fn backward_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let bh = wg.y;
  let base = headBase(bh);
  let q0 = wg.x * ROWS;
  for (var x = lid; x < ROWS * DS; x += NT) {
    ownA[x] = staged(SRC_Q, base, q0, x);
    ownB[x] = stagedDO(base, q0, x);
  }
  workgroupBarrier();
  for (var r = lid; r < ROWS; r += NT) {
    let t = min(q0 + r, p.T - 1u);
    let row = base + t * p.rowStride;
    var delta = 0.0;
    for (var c = 0u; c < p.dHead; c++) { delta = fma(ownB[r * DS + c / 4u][c % 4u], oAt(row + c), delta); }
    rowM[r] = LSE[bh * p.T + t];
    rowL[r] = delta;
    if (q0 + r < p.T) { Delta[bh * p.T + q0 + r] = delta; }
  }
  let sy = lid / SCOLS;
  let sx = lid % SCOLS;
  let ry = lid / CG;
  let cx = lid % CG;
  var acc: array<vec4<f32>, RM * CD>;
  let kEnd = select(p.T, min(p.T, q0 + ROWS), CAUSAL);
  for (var j0 = 0u; j0 < kEnd; j0 += COLS) {
    workgroupBarrier();
    for (var x = lid; x < COLS * DS; x += NT) {
      strA[x] = staged(SRC_K, base, j0, x);
      strB[x] = staged(SRC_V, base, j0, x);
    }
    workgroupBarrier();
    let s = dotsA(sy, sx);
    let dp = dotsB(sy, sx);
    for (var a = 0u; a < TM; a++) {
      for (var b = 0u; b < TN; b++) {
        let r = sy + a * SROWS;
        let c = sx + b * SCOLS;
        let ds = exp(s[a * TN + b] * p.scale - rowM[r]) * (dp[a * TN + b] - rowL[r]);
        w1[r * SS + c] = select(0.0, ds, visible(q0 + r, j0 + c));
      }
    }
    workgroupBarrier();
    accumulate1(&acc, ry, cx);
  }
  // q was last read before the loop's final barrier: ownA takes scale * dq (w.r.t. the rotated q).
  for (var a = 0u; a < RM; a++) {
    for (var b = 0u; b < CD; b++) { ownA[(ry + a * RG) * DS + cx + b * CG] = acc[a * CD + b] * p.scale; }
  }
  workgroupBarrier();
  for (var x = lid; x < ROWS * DP; x += NT) {
    let t = q0 + x / DP;
    let c = x % DP;
    if (t < p.T && c < p.dHead) { dQ[base + t * p.rowStride + c] = gradAt(x / DP, c, t); }
  }
}

// dv_j = sum_i p_ij dO_i;  dk_j = scale * sum_i p_ij (dO_i.v_j - delta_i) q_i, over the queries i that see j.
@compute @workgroup_size(NT)
fn backward_dkdv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let bh = wg.y;
  let base = headBase(bh);
  let k0 = wg.x * ROWS;
  for (var x = lid; x < ROWS * DS; x += NT) {
    ownA[x] = staged(SRC_K, base, k0, x);
    ownB[x] = staged(SRC_V, base, k0, x);
  }
  let sy = lid / SCOLS;
  let sx = lid % SCOLS;
  let ry = lid / CG;
  let cx = lid % CG;
  var dk: array<vec4<f32>, RM * CD>;
  var dv: array<vec4<f32>, RM * CD>;
  // Causal: queries before k0 see none of this workgroup's keys.
  for (var i0 = select(0u, k0, CAUSAL); i0 < p.T; i0 += COLS) {
    workgroupBarrier();
    for (var x = lid; x < COLS * DS; x += NT) {
      strA[x] = staged(SRC_Q, base, i0, x);
      strB[x] = stagedDO(base, i0, x);
    }
    for (var c = lid; c < COLS; c += NT) {
      let i = min(i0 + c, p.T - 1u);
      colLse[c] = LSE[bh * p.T + i];
      colDelta[c] = Delta[bh * p.T + i];
    }
    workgroupBarrier();
    let s = dotsA(sy, sx);
    let dp = dotsB(sy, sx);
    for (var a = 0u; a < TM; a++) {
      for (var b = 0u; b < TN; b++) {
        let r = sy + a * SROWS;
        let c = sx + b * SCOLS;
        let pr = select(0.0, exp(s[a * TN + b] * p.scale - colLse[c]), visible(i0 + c, k0 + r));
        w1[r * SS + c] = pr * (dp[a * TN + b] - colDelta[c]);
        w2[r * SS + c] = pr;
      }
    }
    workgroupBarrier();
    accumulate1(&dk, ry, cx);
    accumulate2(&dv, ry, cx);
  }
  // k and v were last read before the loop's final barrier: ownA takes scale * dk, ownB dv.
  for (var a = 0u; a < RM; a++) {
    for (var b = 0u; b < CD; b++) {
      let x = (ry + a * RG) * DS + cx + b * CG;
      ownA[x] = dk[a * CD + b] * p.scale;
      ownB[x] = dv[a * CD + b];
    }
  }
  workgroupBarrier();
  for (var x = lid; x < ROWS * DP; x += NT) {
    let t = k0 + x / DP;
    let c = x % DP;
    if (t < p.T && c < p.dHead) {
      dK[base + t * p.rowStride + c] = gradAt(x / DP, c, t);
      dV[base + t * p.rowStride + c] = ownB[(x / DP) * DS + c / 4u][c % 4u];
    }
  }
}
