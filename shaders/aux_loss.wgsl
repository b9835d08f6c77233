// MoE auxiliary losses over S sub-tokens and E experts (MODEL_SPEC.md section 2, "Auxiliary losses").
//   Load balance (Switch): L_aux = E * sum_e (c_e / S) * P_e, c_e = assignments to e before capacity,
//     P_e = mean_r probs[r,e]. lb_expert_sums: one workgroup per expert, a tree sum (fixed order, no float
//     atomics); lb_finalize: one thread sums the E terms in expert order.
//   Router z-loss (ST-MoE): L_z = mean_r lse_r^2. z_rows: lse per sub-token; z_finalize: one workgroup.
//   aux_backward: dz += P * (a - P.a), a_e = auxCoef * E * c_e / S^2 (softmax backward of the constant
//     dProbs row; no gradient through c_e), plus zCoef * 2 * lse_r * P / S.
// Template parameter: WG (workgroup size, a power of two).

const WG: u32 = {{WG}}u;

struct Params {
  S: u32, E: u32, k: u32,
  flag: u32, // finalize: 1 = add the value to the loss buffer (summing over layers)
  auxCoef: f32, zCoef: f32, _p0: u32, _p1: u32,
}

var<workgroup> redF: array<f32, WG>;
var<workgroup> redI: array<i32, WG>;

// ---- lb_expert_sums
@group(0) @binding(0) var<storage, read> ls_probs: array<f32>;        // [S, E]
@group(0) @binding(1) var<storage, read> ls_idx: array<i32>;          // [S, k]
@group(0) @binding(2) var<storage, read_write> ls_probSum: array<f32>; // [E]
@group(0) @binding(3) var<storage, read_write> ls_counts: array<i32>;  // [E]
@group(0) @binding(4) var<uniform> ls: Params;

@compute @workgroup_size(WG)
fn lb_expert_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
  let e = wid.x + wid.y * nwg.x;
  if (e >= ls.E) { return; }
  var sum = 0.0;
  var n = 0;
  for (var r = lid; r < ls.S; r += WG) {
    sum += ls_probs[r * ls.E + e];
    for (var j = 0u; j < ls.k; j++) {
      if (ls_idx[r * ls.k + j] == i32(e)) { n++; }
    }
  }
  redF[lid] = sum;
  redI[lid] = n;
  workgroupBarrier();
  for (var half = WG / 2u; half > 0u; half /= 2u) {
    if (lid < half) {
      redF[lid] += redF[lid + half];
      redI[lid] += redI[lid + half];
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    ls_probSum[e] = redF[0];
    ls_counts[e] = redI[0];
  }
}

// ---- lb_finalize: a single thread (E terms).
@group(0) @binding(0) var<storage, read> lf_probSum: array<f32>; // [E]
@group(0) @binding(1) var<storage, read> lf_counts: array<i32>;  // [E]
@group(0) @binding(2) var<storage, read_write> lf_loss: array<f32>; // [1]
@group(0) @binding(3) var<uniform> lf: Params;

@compute @workgroup_size(1)
fn lb_finalize() {
  let S = f32(lf.S);
  var acc = 0.0;
  for (var e = 0u; e < lf.E; e++) { acc += (f32(lf_counts[e]) / S) * (lf_probSum[e] / S); }
  let loss = f32(lf.E) * acc;
  if (lf.flag == 1u) { lf_loss[0] += loss; } else { lf_loss[0] = loss; }
}

// ---- z_rows: lse per sub-token, max-shifted.
@group(0) @binding(0) var<storage, read> zr_z: array<f32>;          // [S, E]
@group(0) @binding(1) var<storage, read_write> zr_lse: array<f32>;  // [S]
@group(0) @binding(2) var<uniform> zr: Params;

@compute @workgroup_size(WG)
fn z_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = gid.x + gid.y * nwg.x * WG;
  if (r >= zr.S) { return; }
  let base = r * zr.E;
  var mx = zr_z[base];
  for (var e = 1u; e < zr.E; e++) { mx = max(mx, zr_z[base + e]); }
  var sum = 0.0;
  for (var e = 0u; e < zr.E; e++) { sum += exp(zr_z[base + e] - mx); }
  zr_lse[r] = mx + log(sum);
}

// ---- z_finalize: one workgroup, strided partial sums then a tree.
@group(0) @binding(0) var<storage, read> zf_lse: array<f32>;         // [S]
@group(0) @binding(1) var<storage, read_write> zf_loss: array<f32>;  // [1]
@group(0) @binding(2) var<uniform> zf: Params;

@compute @workgroup_size(WG)
fn z_finalize(@builtin(local_invocation_index) lid: u32) {
  var sum = 0.0;
  for (var r = lid; r < zf.S; r += WG) { sum += zf_lse[r] * zf_lse[r]; }
  redF[lid] = sum;
  workgroupBarrier();
  for (var half = WG / 2u; half > 0u; half /= 2u) {
    if (lid < half) { redF[lid] += redF[lid + half]; }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let loss = redF[0] / f32(zf.S);
    if (zf.flag == 1u) { zf_loss[0] += loss; } else { zf_loss[0] = loss; }
  }
}

// ---- aux_backward: one thread per sub-token, adds into dz. A term whose coefficient is 0 is skipped, so
// its input buffer (counts or lse) may hold anything.
@group(0) @binding(0) var<storage, read> ab_probs: array<f32>;     // [S, E]
@group(0) @binding(1) var<storage, read> ab_counts: array<i32>;    // [E]
@group(0) @binding(2) var<storage, read> ab_lse: array<f32>;       // [S]
@group(0) @binding(3) var<storage, read_write> ab_dz: array<f32>;  // [S, E]
@group(0) @binding(4) var<uniform> ab: Params;

@compute @workgroup_size(WG)
fn aux_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = gid.x + gid.y * nwg.x * WG;
  if (r >= ab.S) { return; }
  let base = r * ab.E;
  let S = f32(ab.S);
  let aScale = ab.auxCoef * f32(ab.E) / (S * S);
  var dot = 0.0;
  if (ab.auxCoef != 0.0) {
    for (var e = 0u; e < ab.E; e++) { dot += aScale * f32(ab_counts[e]) * ab_probs[base + e]; }
  }
  var zScale = 0.0;
  if (ab.zCoef != 0.0) { zScale = ab.zCoef * 2.0 * ab_lse[r] / S; }
  for (var e = 0u; e < ab.E; e++) {
    let P = ab_probs[base + e];
    var g = zScale * P;
    if (ab.auxCoef != 0.0) { g += P * (aScale * f32(ab_counts[e]) - dot); }
    ab_dz[base + e] += g;
  }
}
