// Multi-head self-attention, causal or bidirectional (CAUSAL), flash style (online softmax; backward recomputes probabilities from the
// saved per-row log-sum-exp, so no [B,H,T,T] matrix is ever stored).
//
// q, k, v, o, dO, dq, dk, dv are [B, T, H, dHead] as the projections produce them: token row n = b*T + t
// holds the H heads side by side, so one (b, h) is a strided set of rows (rowStride = H*dHead elements apart).
// lse and delta are [B, H, T]. Each thread owns one row (a query in forward/dq, a key in dkdv) and keeps
// its accumulators in registers; the rows it streams over are staged BT at a time through workgroup memory.
// Every output element is written by exactly one thread that sums in a fixed order: results are
// deterministic, and no atomics or zero-initialised outputs are needed (outputs are overwritten).
//
// Template parameters: D4 = ceil(dHead/4) (vec4s per row; the padding lanes hold zeros), WG = threads
// (rows) per workgroup, BT = rows per staged tile (bounded by the workgroup-memory limit for large dHead),
// CAUSAL = true (query i sees keys j <= i) or false (every key of its sequence: the mlm objective),
// QK = plain (q and k come with RoPE applied) or rope (q and k come un-rotated: each row is rotated as it
// is loaded, by its own position t, from the ropeTable at binding 9, and backward writes dq, dk with the
// transpose rotation applied, i.e. the gradients w.r.t. the un-rotated inputs). Fusing RoPE this way
// saves its launches and the round trip of q and k through memory; the rotation is recomputed per load,
// which costs a few flops per staged element against the T-long dot-product loops.
// Q_T, K_T, V_T, O_T = f32 or f16: the storage types of q, k, v and o (forward's output, backward_dq's
// Ofwd). f16 is storage only (mixed precision): loads widen to f32, all arithmetic is f32 and o is
// rounded once as it is stored; dO, the gradients, lse, delta and the table are always f32.
// Grid: x = row tile (ceil(T/WG)), y = b*H + h.
// The loops over staged rows run to a bound that is the same for the whole workgroup and mask the causal
// condition inside: the staged-row index then stays uniform, so every thread reads the same workgroup
// address (a broadcast; lavapipe emits one scalar load instead of a per-lane gather).

struct Params {
  T: u32, H: u32, dHead: u32, rowStride: u32,
  seqStride: u32, scale: f32, tableRows: u32, _p1: u32,
}

@group(0) @binding(0) var<storage, read> Q: array<{{Q_T:f32}}>;
@group(0) @binding(1) var<storage, read> K: array<{{K_T:f32}}>;
@group(0) @binding(2) var<storage, read> V: array<{{V_T:f32}}>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read_write> LSE: array<f32>;   // written by forward, read by backward
// forward only
@group(0) @binding(5) var<storage, read_write> O: array<{{O_T:f32}}>;
// backward only (two entry points share the slots; each uses bindings 0..8 and nothing else)
@group(0) @binding(5) var<storage, read> dO: array<f32>;
@group(0) @binding(6) var<storage, read_write> Delta: array<f32>; // rowsum(dO * o): written by dq, read by dkdv
@group(0) @binding(7) var<storage, read_write> dQ: array<f32>;    // backward_dq
@group(0) @binding(8) var<storage, read> Ofwd: array<{{O_T:f32}}>; // backward_dq: the forward's o
@group(0) @binding(7) var<storage, read_write> dK: array<f32>;    // backward_dkdv
@group(0) @binding(8) var<storage, read_write> dV: array<f32>;    // backward_dkdv
// QK = rope only (the plain functions never touch it, so the plain pipelines do not bind it):
// cos [tableRows, dHead/2], then sin, as ropeTable makes it.
@group(0) @binding(9) var<storage, read> RopeTab: array<f32>;

const D4: u32 = {{D4}}u;
const WG: u32 = {{WG}}u;
const BT: u32 = {{BT}}u;
const CAUSAL: bool = {{CAUSAL}};
// Below any real score, yet finite: exp(NEG_BIG - s) is exactly 0 without relying on infinities.
const NEG_BIG: f32 = -1.0e30;

var<workgroup> tileA: array<vec4<f32>, BT * D4>;
var<workgroup> tileB: array<vec4<f32>, BT * D4>;
var<workgroup> tileLse: array<f32, BT>;
var<workgroup> tileDelta: array<f32, BT>;

// Element loads widen the storage type (f16 under mixed precision) to f32, the arithmetic type.
fn qAt(i: u32) -> f32 { return f32(Q[i]); }
fn kAt(i: u32) -> f32 { return f32(K[i]); }
fn vAt(i: u32) -> f32 { return f32(V[i]); }
fn oAt(i: u32) -> f32 { return f32(Ofwd[i]); }

// Row loads pad the last vec4 with zeros so that dot products over D4 vec4s are exact for any dHead.
// q and k as the scores use them (rotated), for the row at element `row` holding position t.
fn loadQ(row: u32, t: u32, c4: u32) -> vec4<f32> { return {{QK}}Q(row, t, c4); }
fn loadK(row: u32, t: u32, c4: u32) -> vec4<f32> { return {{QK}}K(row, t, c4); }
// A gradient w.r.t. a rotated q or k row at position t, turned into the gradient w.r.t. the caller's q or k.
fn gradToInput(g: array<vec4<f32>, D4>, t: u32) -> array<vec4<f32>, D4> { return {{QK}}Grad(g, t); }

fn plainQ(row: u32, t: u32, c4: u32) -> vec4<f32> {
  var r = vec4<f32>(0.0);
  for (var e = 0u; e < 4u; e++) { let c = c4 * 4u + e; if (c < p.dHead) { r[e] = qAt(row + c); } }
  return r;
}
fn plainK(row: u32, t: u32, c4: u32) -> vec4<f32> {
  var r = vec4<f32>(0.0);
  for (var e = 0u; e < 4u; e++) { let c = c4 * 4u + e; if (c < p.dHead) { r[e] = kAt(row + c); } }
  return r;
}
fn plainGrad(g: array<vec4<f32>, D4>, t: u32) -> array<vec4<f32>, D4> { return g; }

// RoPE as rope.wgsl computes it (rotate-half: the pair (i, i + dHead/2) turns by angle t * theta_i):
// y_i = x_i cos - x_{i+half} sin,  y_{i+half} = x_{i+half} cos + x_i sin.
fn ropeCos(t: u32, i: u32) -> f32 { return RopeTab[t * (p.dHead / 2u) + i]; }
fn ropeSin(t: u32, i: u32) -> f32 { return RopeTab[(p.tableRows + t) * (p.dHead / 2u) + i]; }
fn ropeQ(row: u32, t: u32, c4: u32) -> vec4<f32> {
  let half = p.dHead / 2u;
  var r = vec4<f32>(0.0);
  for (var e = 0u; e < 4u; e++) {
    let c = c4 * 4u + e;
    if (c < half) { r[e] = qAt(row + c) * ropeCos(t, c) - qAt(row + c + half) * ropeSin(t, c); }
    else if (c < p.dHead) { r[e] = qAt(row + c) * ropeCos(t, c - half) + qAt(row + c - half) * ropeSin(t, c - half); }
  }
  return r;
}
fn ropeK(row: u32, t: u32, c4: u32) -> vec4<f32> {
  let half = p.dHead / 2u;
  var r = vec4<f32>(0.0);
  for (var e = 0u; e < 4u; e++) {
    let c = c4 * 4u + e;
    if (c < half) { r[e] = kAt(row + c) * ropeCos(t, c) - kAt(row + c + half) * ropeSin(t, c); }
    else if (c < p.dHead) { r[e] = kAt(row + c) * ropeCos(t, c - half) + kAt(row + c - half) * ropeSin(t, c - half); }
  }
  return r;
}
// The transpose of the rotation (the rotation by -angle, as rope.wgsl's backward). The partner of lane c
// sits in another vec4 whenever half is not a multiple of 4, hence the copy indexed at run time: only
// here, once per row, so the accumulators of the main loops stay statically indexed.
fn ropeGrad(g: array<vec4<f32>, D4>, t: u32) -> array<vec4<f32>, D4> {
  let half = p.dHead / 2u;
  var src = g;
  var out: array<vec4<f32>, D4>;
  for (var c4 = 0u; c4 < D4; c4++) {
    var r = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
      let c = c4 * 4u + e;
      if (c < half) {
        let m = c + half;
        r[e] = src[c4][e] * ropeCos(t, c) + src[m / 4u][m % 4u] * ropeSin(t, c);
      } else if (c < p.dHead) {
        let m = c - half;
        r[e] = src[c4][e] * ropeCos(t, m) - src[m / 4u][m % 4u] * ropeSin(t, m);
      }
    }
    out[c4] = r;
  }
  return out;
}

fn loadV(row: u32, c4: u32) -> vec4<f32> {
  var r = vec4<f32>(0.0);
  for (var e = 0u; e < 4u; e++) { let c = c4 * 4u + e; if (c < p.dHead) { r[e] = vAt(row + c); } }
  return r;
}
fn loadDO(row: u32, c4: u32) -> vec4<f32> {
  var r = vec4<f32>(0.0);
  for (var e = 0u; e < 4u; e++) { let c = c4 * 4u + e; if (c < p.dHead) { r[e] = dO[row + c]; } }
  return r;
}
fn loadOfwd(row: u32, c4: u32) -> vec4<f32> {
  var r = vec4<f32>(0.0);
  for (var e = 0u; e < 4u; e++) { let c = c4 * 4u + e; if (c < p.dHead) { r[e] = oAt(row + c); } }
  return r;
}

// Stores drop the padding lanes. Loops over a constant D4 (not over the runtime dHead) keep the register
// arrays statically indexed, so compilers can hold them in registers instead of addressable memory.
fn storeO(row: u32, c4: u32, x: vec4<f32>) {
  for (var e = 0u; e < 4u; e++) { let c = c4 * 4u + e; if (c < p.dHead) { O[row + c] = {{O_T:f32}}(x[e]); } }
}
fn storeDQ(row: u32, c4: u32, x: vec4<f32>) {
  for (var e = 0u; e < 4u; e++) { let c = c4 * 4u + e; if (c < p.dHead) { dQ[row + c] = x[e]; } }
}
fn storeDK(row: u32, c4: u32, x: vec4<f32>) {
  for (var e = 0u; e < 4u; e++) { let c = c4 * 4u + e; if (c < p.dHead) { dK[row + c] = x[e]; } }
}
fn storeDV(row: u32, c4: u32, x: vec4<f32>) {
  for (var e = 0u; e < 4u; e++) { let c = c4 * 4u + e; if (c < p.dHead) { dV[row + c] = x[e]; } }
}

// Element index of token 0 of head h in sequence b (bh = b*H + h).
fn headBase(bh: u32) -> u32 {
  return (bh / p.H) * p.seqStride + (bh % p.H) * p.dHead;
}

// Stages key/value rows j0 .. j0+BT-1 of one head (zeros past T) for the query-row kernels.
fn stageKV(base: u32, j0: u32, lid: u32) {
  for (var r = lid; r < BT * D4; r += WG) {
    let j = j0 + r / D4;
    let c4 = r % D4;
    var kv = vec4<f32>(0.0);
    var vv = vec4<f32>(0.0);
    if (j < p.T) {
      let row = base + j * p.rowStride;
      kv = loadK(row, j, c4);
      vv = loadV(row, c4);
    }
    tileA[r] = kv;
    tileB[r] = vv;
  }
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let bh = wg.y;
  let base = headBase(bh);
  let q0 = wg.x * WG;
  let i = q0 + lid;
  let inRange = i < p.T;
  let iRow = base + min(i, p.T - 1u) * p.rowStride;
  var q: array<vec4<f32>, D4>;
  var acc: array<vec4<f32>, D4>;
  for (var c4 = 0u; c4 < D4; c4++) { q[c4] = loadQ(iRow, min(i, p.T - 1u), c4); acc[c4] = vec4<f32>(0.0); }
  var m = NEG_BIG;
  var l = 0.0;
  // Causal: no query of this workgroup sees a key at or past kEnd, so later tiles are never loaded.
  let kEnd = select(p.T, min(p.T, q0 + WG), CAUSAL);
  for (var j0 = 0u; j0 < kEnd; j0 += BT) {
    workgroupBarrier();
    stageKV(base, j0, lid);
    workgroupBarrier();
    for (var jj = 0u; jj < min(BT, kEnd - j0); jj++) {
      var s = 0.0;
      for (var c4 = 0u; c4 < D4; c4++) { s += dot(q[c4], tileA[jj * D4 + c4]); }
      s *= p.scale;
      if (inRange && (!CAUSAL || j0 + jj <= i)) {
        // Rescale only when the running max moves (rare after the first few keys), instead of every key.
        if (s > m) {
          let a = exp(m - s);
          l *= a;
          for (var c4 = 0u; c4 < D4; c4++) { acc[c4] *= a; }
          m = s;
        }
        let e = exp(s - m);
        l += e;
        for (var c4 = 0u; c4 < D4; c4++) { acc[c4] = fma(vec4<f32>(e), tileB[jj * D4 + c4], acc[c4]); }
      }
    }
  }
  if (inRange) {
    let inv = 1.0 / l;
    for (var c4 = 0u; c4 < D4; c4++) { storeO(iRow, c4, acc[c4] * inv); }
    LSE[bh * p.T + i] = m + log(l);
  }
}

// dq_i = scale * sum_j p_ij (dO_i.v_j - delta_i) k_j, with p_ij = exp(scale q_i.k_j - lse_i) recomputed.
// Also writes delta_i = dO_i . o_i (= rowsum(dP * P)) for backward_dkdv, which runs after it.
@compute @workgroup_size(WG)
fn backward_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let bh = wg.y;
  let base = headBase(bh);
  let q0 = wg.x * WG;
  let i = q0 + lid;
  let inRange = i < p.T;
  let iRow = base + min(i, p.T - 1u) * p.rowStride;
  var q: array<vec4<f32>, D4>;
  var g: array<vec4<f32>, D4>;
  var acc: array<vec4<f32>, D4>;
  var delta = 0.0;
  for (var c4 = 0u; c4 < D4; c4++) {
    q[c4] = loadQ(iRow, min(i, p.T - 1u), c4);
    g[c4] = loadDO(iRow, c4);
    acc[c4] = vec4<f32>(0.0);
    delta += dot(g[c4], loadOfwd(iRow, c4));
  }
  let lse = LSE[bh * p.T + min(i, p.T - 1u)];
  if (inRange) { Delta[bh * p.T + i] = delta; }
  let kEnd = select(p.T, min(p.T, q0 + WG), CAUSAL);
  for (var j0 = 0u; j0 < kEnd; j0 += BT) {
    workgroupBarrier();
    stageKV(base, j0, lid);
    workgroupBarrier();
    for (var jj = 0u; jj < min(BT, kEnd - j0); jj++) {
      var s = 0.0;
      var dp = 0.0;
      for (var c4 = 0u; c4 < D4; c4++) {
        s += dot(q[c4], tileA[jj * D4 + c4]);
        dp += dot(g[c4], tileB[jj * D4 + c4]);
      }
      if (inRange && (!CAUSAL || j0 + jj <= i)) {
        let ds = exp(s * p.scale - lse) * (dp - delta);
        for (var c4 = 0u; c4 < D4; c4++) { acc[c4] = fma(vec4<f32>(ds), tileA[jj * D4 + c4], acc[c4]); }
      }
    }
  }
  if (inRange) {
    for (var c4 = 0u; c4 < D4; c4++) { acc[c4] *= p.scale; }
    var dq = gradToInput(acc, i);
    for (var c4 = 0u; c4 < D4; c4++) { storeDQ(iRow, c4, dq[c4]); }
  }
}

// dv_j = sum_{i>=j} p_ij dO_i;  dk_j = scale * sum_{i>=j} p_ij (dO_i.v_j - delta_i) q_i (over all i when
// not CAUSAL).
@compute @workgroup_size(WG)
fn backward_dkdv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let bh = wg.y;
  let base = headBase(bh);
  let k0 = wg.x * WG;
  let j = k0 + lid;
  let inRange = j < p.T;
  let jRow = base + min(j, p.T - 1u) * p.rowStride;
  var kr: array<vec4<f32>, D4>;
  var vr: array<vec4<f32>, D4>;
  var dk: array<vec4<f32>, D4>;
  var dv: array<vec4<f32>, D4>;
  for (var c4 = 0u; c4 < D4; c4++) {
    kr[c4] = loadK(jRow, min(j, p.T - 1u), c4);
    vr[c4] = loadV(jRow, c4);
    dk[c4] = vec4<f32>(0.0);
    dv[c4] = vec4<f32>(0.0);
  }
  // Causal: queries before k0 see none of this workgroup's keys.
  for (var i0 = select(0u, k0, CAUSAL); i0 < p.T; i0 += BT) {
    workgroupBarrier();
    for (var r = lid; r < BT * D4; r += WG) {
      let i = i0 + r / D4;
      let c4 = r % D4;
      var qv = vec4<f32>(0.0);
      var gv = vec4<f32>(0.0);
      if (i < p.T) {
        let row = base + i * p.rowStride;
        qv = loadQ(row, i, c4);
        gv = loadDO(row, c4);
      }
      tileA[r] = qv;
      tileB[r] = gv;
    }
    for (var r = lid; r < BT; r += WG) {
      let i = min(i0 + r, p.T - 1u);
      tileLse[r] = LSE[bh * p.T + i];
      tileDelta[r] = Delta[bh * p.T + i];
    }
    workgroupBarrier();
    for (var ii = 0u; ii < min(BT, p.T - i0); ii++) {
      var s = 0.0;
      var dp = 0.0;
      for (var c4 = 0u; c4 < D4; c4++) {
        s += dot(tileA[ii * D4 + c4], kr[c4]);
        dp += dot(tileB[ii * D4 + c4], vr[c4]);
      }
      if (inRange && (!CAUSAL || i0 + ii >= j)) {
        let pr = exp(s * p.scale - tileLse[ii]);
        let ds = pr * (dp - tileDelta[ii]);
        for (var c4 = 0u; c4 < D4; c4++) {
          dv[c4] = fma(vec4<f32>(pr), tileB[ii * D4 + c4], dv[c4]);
          dk[c4] = fma(vec4<f32>(ds), tileA[ii * D4 + c4], dk[c4]);
        }
      }
    }
  }
  if (inRange) {
    for (var c4 = 0u; c4 < D4; c4++) { dk[c4] *= p.scale; }
    var dkIn = gradToInput(dk, j);
    for (var c4 = 0u; c4 < D4; c4++) {
      storeDK(jRow, c4, dkIn[c4]);
      storeDV(jRow, c4, dv[c4]);
    }
  }
}
