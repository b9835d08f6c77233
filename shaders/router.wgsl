// MoE router kernels over S sub-tokens and E experts (MODEL_SPEC.md section 2, steps 3-4).
//   cosine_forward / cosine_backward_rows / cosine_backward_emb: the X-MoE cosine logits
//     z[r,e] = cos(p_r, emb_e) / tau, norms clamped at 1e-6; the sums over sub-tokens in the backward run
//     as matmuls (fixed summation order, so deterministic) between backward_rows and backward_emb.
//   softmax_topk / softmax_topk_backward: probs = softmax(z), top-k with ties to the lower expert index,
//     gates (renormalised when norm_topk_prob), and dz from dgates through both. The forward also writes
//     the row's logsumexp (the z-loss reads it) and the backward adds the auxiliary losses' gradients
//     (aux_loss.wgsl's losses): both are per-row work on the same row, so they need no launch of their own.
// Entry points bind different buffers, so every binding below is named after its kernel.
// Template parameter: WG (workgroup size). Launches are 1-D, split over x and y by grid1d.

const WG: u32 = {{WG}}u;
const NORM_EPS: f32 = 1e-6;

struct Params {
  S: u32, E: u32, R: u32, k: u32,
  // softmax_topk*: 1 = divide the gates by their sum; cosine_backward_emb: 1 = add into dEmb / dTau
  flag: u32, _p0: u32,
  // softmax_topk_backward: the load-balance and z-loss coefficients; a 0 skips that term (and its input)
  auxCoef: f32, zCoef: f32,
}

fn flatId(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

// ---- cosine_forward: one thread per (r, e); the R-long norms are recomputed, R is small (router_dim).
@group(0) @binding(0) var<storage, read> cf_p: array<f32>;        // [S, R]
@group(0) @binding(1) var<storage, read> cf_emb: array<f32>;      // [E, R]
@group(0) @binding(2) var<storage, read> cf_tau: array<f32>;      // [1]
@group(0) @binding(3) var<storage, read_write> cf_z: array<f32>;  // [S, E]
@group(0) @binding(4) var<storage, read_write> cf_pNorm: array<f32>;   // [S], unclamped
@group(0) @binding(5) var<storage, read_write> cf_embNorm: array<f32>; // [E], unclamped
@group(0) @binding(6) var<uniform> cf: Params;

@compute @workgroup_size(WG)
fn cosine_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatId(gid, nwg);
  if (i >= cf.S * cf.E) { return; }
  let r = i / cf.E;
  let e = i % cf.E;
  var pp = 0.0;
  var ee = 0.0;
  var pe = 0.0;
  for (var c = 0u; c < cf.R; c++) {
    let a = cf_p[r * cf.R + c];
    let b = cf_emb[e * cf.R + c];
    pp += a * a;
    ee += b * b;
    pe += a * b;
  }
  let np = sqrt(pp);
  let ne = sqrt(ee);
  cf_z[i] = pe / (max(np, NORM_EPS) * max(ne, NORM_EPS) * cf_tau[0]);
  if (e == 0u) { cf_pNorm[r] = np; }
  if (r == 0u) { cf_embNorm[e] = ne; }
}

// ---- cosine_backward_rows: one thread per sub-token r. With dcos = dz / tau and cos = z * tau:
//   G[r,e] = dcos[r,e] / (np_r ne_e)   (clamped norms), consumed by the two matmuls
//   dp_r   = -[|p_r| > eps] (sum_e dcos cos) p_r / |p_r|^2; the matmul dp += G emb then adds the main term.
@group(0) @binding(0) var<storage, read> cbr_dz: array<f32>;       // [S, E]
@group(0) @binding(1) var<storage, read> cbr_z: array<f32>;        // [S, E]
@group(0) @binding(2) var<storage, read> cbr_p: array<f32>;        // [S, R]
@group(0) @binding(3) var<storage, read> cbr_pNorm: array<f32>;    // [S]
@group(0) @binding(4) var<storage, read> cbr_embNorm: array<f32>;  // [E]
@group(0) @binding(5) var<storage, read> cbr_tau: array<f32>;      // [1]
@group(0) @binding(6) var<storage, read_write> cbr_G: array<f32>;  // [S, E]
@group(0) @binding(7) var<storage, read_write> cbr_dp: array<f32>; // [S, R]
@group(0) @binding(8) var<uniform> cbr: Params;

@compute @workgroup_size(WG)
fn cosine_backward_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = flatId(gid, nwg);
  if (r >= cbr.S) { return; }
  let tau = cbr_tau[0];
  let np = cbr_pNorm[r];
  let npc = max(np, NORM_EPS);
  var rowCos = 0.0;
  for (var e = 0u; e < cbr.E; e++) {
    let dcos = cbr_dz[r * cbr.E + e] / tau;
    rowCos += dcos * (cbr_z[r * cbr.E + e] * tau);
    cbr_G[r * cbr.E + e] = dcos / (npc * max(cbr_embNorm[e], NORM_EPS));
  }
  // A clamped norm is a constant, so its term vanishes.
  var f = 0.0;
  if (np > NORM_EPS) { f = rowCos / (np * np); }
  for (var c = 0u; c < cbr.R; c++) {
    cbr_dp[r * cbr.R + c] = -f * cbr_p[r * cbr.R + c];
  }
}

// ---- cosine_backward_emb: one thread per (e, c), after M = G^T p [E, R]:
//   dEmb_e = M_e - [|emb_e| > eps] colCos_e emb_e / |emb_e|^2, colCos_e = sum_r dcos cos = emb_e . M_e,
//   dTau = -sum_{r,e} dz z / tau = -(sum_e colCos_e) / tau, summed by thread 0 in expert order.
@group(0) @binding(0) var<storage, read> cbe_M: array<f32>;         // [E, R]
@group(0) @binding(1) var<storage, read> cbe_emb: array<f32>;       // [E, R]
@group(0) @binding(2) var<storage, read> cbe_embNorm: array<f32>;   // [E]
@group(0) @binding(3) var<storage, read> cbe_tau: array<f32>;       // [1]
@group(0) @binding(4) var<storage, read_write> cbe_dEmb: array<f32>; // [E, R]
@group(0) @binding(5) var<storage, read_write> cbe_dTau: array<f32>; // [1]
@group(0) @binding(6) var<uniform> cbe: Params;

fn colCos(e: u32) -> f32 {
  var acc = 0.0;
  for (var c = 0u; c < cbe.R; c++) { acc += cbe_emb[e * cbe.R + c] * cbe_M[e * cbe.R + c]; }
  return acc;
}

@compute @workgroup_size(WG)
fn cosine_backward_emb(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatId(gid, nwg);
  if (i == 0u) {
    var total = 0.0;
    for (var e = 0u; e < cbe.E; e++) { total += colCos(e); }
    let dTau = -total / cbe_tau[0];
    if (cbe.flag == 1u) { cbe_dTau[0] += dTau; } else { cbe_dTau[0] = dTau; }
  }
  if (i >= cbe.E * cbe.R) { return; }
  let e = i / cbe.R;
  let ne = cbe_embNorm[e];
  var v = cbe_M[i];
  if (ne > NORM_EPS) { v -= colCos(e) / (ne * ne) * cbe_emb[i]; }
  if (cbe.flag == 1u) { cbe_dEmb[i] += v; } else { cbe_dEmb[i] = v; }
}

// ---- softmax_topk: one thread per sub-token. The j-th choice is the largest prob among experts that come
// after choice j-1 in the order (prob descending, index ascending); a strict '>' scanning upwards keeps
// the lower index on ties, exactly as the reference does. lse = max + log(sum of shifted exps), the
// z-loss's per-row term, from the max and sum the softmax needs anyway.
@group(0) @binding(0) var<storage, read> st_z: array<f32>;           // [S, E]
@group(0) @binding(1) var<storage, read_write> st_probs: array<f32>; // [S, E]
@group(0) @binding(2) var<storage, read_write> st_idx: array<i32>;   // [S, k]
@group(0) @binding(3) var<storage, read_write> st_gates: array<f32>; // [S, k]
@group(0) @binding(4) var<storage, read_write> st_lse: array<f32>;   // [S]
@group(0) @binding(5) var<uniform> st: Params;

@compute @workgroup_size(WG)
fn softmax_topk(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = flatId(gid, nwg);
  if (r >= st.S) { return; }
  let base = r * st.E;
  var mx = st_z[base];
  for (var e = 1u; e < st.E; e++) { mx = max(mx, st_z[base + e]); }
  var sum = 0.0;
  for (var e = 0u; e < st.E; e++) { sum += exp(st_z[base + e] - mx); }
  st_lse[r] = mx + log(sum);
  for (var e = 0u; e < st.E; e++) { st_probs[base + e] = exp(st_z[base + e] - mx) / sum; }

  var prevV = 0.0;
  var prevE = -1;
  var gateSum = 0.0;
  for (var j = 0u; j < st.k; j++) {
    var best = -1;
    var bestV = 0.0;
    for (var e = 0u; e < st.E; e++) {
      let v = st_probs[base + e];
      let ei = i32(e);
      let after = prevE < 0 || v < prevV || (v == prevV && ei > prevE);
      if (after && (best < 0 || v > bestV)) {
        best = ei;
        bestV = v;
      }
    }
    st_idx[r * st.k + j] = best;
    st_gates[r * st.k + j] = bestV;
    gateSum += bestV;
    prevV = bestV;
    prevE = best;
  }
  if (st.flag == 1u) {
    for (var j = 0u; j < st.k; j++) { st_gates[r * st.k + j] = st_gates[r * st.k + j] / gateSum; }
  }
}

// ---- softmax_topk_backward: one thread per sub-token; writes dz = the top-k gates' part plus the
// auxiliary losses' parts.
//   dP at the chosen experts: dg_j, or with renormalisation (dg_j - sum_i dg_i g_i) / sum_i P_i;
//   dz = P * (dP - sum_e dP_e P_e).
//   load balance: + P * (a - P.a), a_e = auxCoef * E * c_e / S^2 (the softmax backward of a constant
//     dProbs row; no gradient through c_e); z-loss: + zCoef * 2 * lse_r * P / S.
@group(0) @binding(0) var<storage, read> sb_dGates: array<f32>; // [S, k]
@group(0) @binding(1) var<storage, read> sb_probs: array<f32>;  // [S, E]
@group(0) @binding(2) var<storage, read> sb_idx: array<i32>;    // [S, k]
@group(0) @binding(3) var<storage, read> sb_gates: array<f32>;  // [S, k]
@group(0) @binding(4) var<storage, read> sb_counts: array<i32>; // [E] c_e, read when auxCoef != 0
@group(0) @binding(5) var<storage, read> sb_lse: array<f32>;    // [S], read when zCoef != 0
@group(0) @binding(6) var<storage, read_write> sb_dz: array<f32>; // [S, E]
@group(0) @binding(7) var<uniform> sb: Params;

fn chosenGrad(r: u32, j: u32, dot: f32, zsum: f32) -> f32 {
  let g = sb_dGates[r * sb.k + j];
  if (sb.flag == 1u) { return (g - dot) / zsum; }
  return g;
}

@compute @workgroup_size(WG)
fn softmax_topk_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = flatId(gid, nwg);
  if (r >= sb.S) { return; }
  let base = r * sb.E;
  var zsum = 0.0;
  var dot = 0.0;
  for (var j = 0u; j < sb.k; j++) {
    zsum += sb_probs[base + u32(sb_idx[r * sb.k + j])];
    dot += sb_dGates[r * sb.k + j] * sb_gates[r * sb.k + j];
  }
  // dP is zero off the chosen experts, so the softmax's row dot product is a k-term sum.
  var pdot = 0.0;
  for (var j = 0u; j < sb.k; j++) {
    pdot += chosenGrad(r, j, dot, zsum) * sb_probs[base + u32(sb_idx[r * sb.k + j])];
  }
  let S = f32(sb.S);
  let aScale = sb.auxCoef * f32(sb.E) / (S * S);
  var aDot = 0.0;
  if (sb.auxCoef != 0.0) {
    for (var e = 0u; e < sb.E; e++) { aDot += aScale * f32(sb_counts[e]) * sb_probs[base + e]; }
  }
  var zScale = 0.0;
  if (sb.zCoef != 0.0) { zScale = sb.zCoef * 2.0 * sb_lse[r] / S; }
  for (var e = 0u; e < sb.E; e++) {
    var dP = 0.0;
    for (var j = 0u; j < sb.k; j++) {
      if (u32(sb_idx[r * sb.k + j]) == e) { dP = chosenGrad(r, j, dot, zsum); }
    }
    let P = sb_probs[base + e];
    var v = P * (dP - pdot);
    // The aux part is summed on its own, then added once: dz rounds as the two parts' f32 sum, and a
    // run without auxiliary losses leaves the top-k part exactly as it is.
    if (sb.auxCoef != 0.0 || sb.zCoef != 0.0) {
      var g = zScale * P;
      if (sb.auxCoef != 0.0) { g += P * (aScale * f32(sb_counts[e]) - aDot); }
      v += g;
    }
    sb_dz[base + e] = v;
  }
}
