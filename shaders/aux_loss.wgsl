// MoE auxiliary losses over S sub-tokens and E experts (MODEL_SPEC.md section 2, "Auxiliary losses").
//   Load balance (Switch): L_aux = E * sum_e (c_e / S) * P_e, c_e = assignments to e before capacity,
//     P_e = mean_r probs[r,e]. lb_expert_sums: one workgroup per expert, a tree sum (fixed order, no float
//     atomics); aux_finalize: one thread sums the E terms in expert order.
//   Router z-loss (ST-MoE): L_z = mean_r lse_r^2, lse per sub-token from router.wgsl's softmax_topk;
//     aux_finalize sums the squares in its one workgroup (strided partial sums, then a tree).
//   Both losses' gradients are per-row terms, added into dz by router.wgsl's softmax_topk_backward.
// Template parameter: WG (workgroup size, a power of two).

const WG: u32 = {{WG}}u;

struct Params {
  S: u32, E: u32, k: u32,
  flag: u32, // aux_finalize: 1 = add the values to the loss buffers (summing over layers)
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

// ---- aux_finalize: one workgroup. All threads sum the z-loss; thread 0 also the E load-balance terms.
@group(0) @binding(0) var<storage, read> af_probSum: array<f32>;        // [E]
@group(0) @binding(1) var<storage, read> af_counts: array<i32>;         // [E]
@group(0) @binding(2) var<storage, read> af_lse: array<f32>;            // [S]
@group(0) @binding(3) var<storage, read_write> af_auxLoss: array<f32>;  // [1]
@group(0) @binding(4) var<storage, read_write> af_zLoss: array<f32>;    // [1]
@group(0) @binding(5) var<uniform> af: Params;

@compute @workgroup_size(WG)
fn aux_finalize(@builtin(local_invocation_index) lid: u32) {
  var sum = 0.0;
  for (var r = lid; r < af.S; r += WG) { sum += af_lse[r] * af_lse[r]; }
  redF[lid] = sum;
  workgroupBarrier();
  for (var half = WG / 2u; half > 0u; half /= 2u) {
    if (lid < half) { redF[lid] += redF[lid + half]; }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let zLoss = redF[0] / f32(af.S);
    let S = f32(af.S);
    var acc = 0.0;
    for (var e = 0u; e < af.E; e++) { acc += (f32(af_counts[e]) / S) * (af_probSum[e] / S); }
    let auxLoss = f32(af.E) * acc;
    if (af.flag == 1u) {
      af_zLoss[0] += zLoss;
      af_auxLoss[0] += auxLoss;
    } else {
      af_zLoss[0] = zLoss;
      af_auxLoss[0] = auxLoss;
    }
  }
}
