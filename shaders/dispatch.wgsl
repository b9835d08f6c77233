// MoE dispatch kernels (MODEL_SPEC.md section 2, steps 5-7), MegaBlocks-style small primitives.
// An assignment a = r*k + j is the j-th choice of sub-token r; idx[a] is its expert.
//
// Ranking within an expert, without atomics and without host knowledge of the counts: positions t of an
// order (0: t = a, sub-token major; 1: t = j*S + r, choice major, the capacity admission order) are cut
// into blocks of WG. rank_blocks counts each expert per block; *_scan turns those counts into per-expert
// exclusive offsets over blocks (one workgroup, blocks in order); *_finish adds the rank inside the
// block (earlier positions of the same expert). The result is the stable rank of every assignment within
// its expert in that order, deterministic by construction.
//
// gather / combine move rows between sub-token order [S, dSub] and the expert-grouped buffer [S*k, dSub];
// rows past the kept total are written as zeros so the worst-case-sized grouped GEMM reads defined data.
// Template parameter: WG (workgroup size, a power of two).

const WG: u32 = {{WG}}u;

struct Params {
  S: u32, k: u32, E: u32, dSub: u32,
  order: u32,    // ranking: 0 = a = r*k + j, 1 = t = j*S + r
  useMask: u32,  // ranking: 1 = only assignments with keep[a] != 0 take part
  capacity: u32, // capacity_*: C; 0xffffffff when dropless
  nBlocks: u32,
  flag: u32,     // gather_backward: add into ds; combine: add the inner residual s
  n: u32,        // copy: element count
  _p0: u32, _p1: u32,
}

fn flatId(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

// ---- ranking kernels: shared bindings 0..3, outputs from 4 on.
@group(0) @binding(0) var<storage, read> rk_idx: array<i32>;   // [S*k]
@group(0) @binding(1) var<storage, read> rk_keep: array<i32>;  // [S*k], read only when useMask
@group(0) @binding(2) var<storage, read_write> rk_blocks: array<i32>; // [nBlocks, E]
@group(0) @binding(3) var<uniform> rk: Params;

var<workgroup> blockExpert: array<i32, WG>;

fn assignmentAt(t: u32) -> u32 {
  if (rk.order == 0u) { return t; }
  return (t % rk.S) * rk.k + t / rk.S;
}

// The expert of position t, or -1 past the end or when masked out.
fn expertAt(t: u32) -> i32 {
  if (t >= rk.S * rk.k) { return -1; }
  let a = assignmentAt(t);
  if (rk.useMask == 1u && rk_keep[a] == 0) { return -1; }
  return rk_idx[a];
}

// Loads block b's experts into workgroup memory; returns this thread's rank among earlier equal ones.
fn loadBlock(b: u32, lid: u32) -> u32 {
  let ex = expertAt(b * WG + lid);
  blockExpert[lid] = ex;
  workgroupBarrier();
  var before = 0u;
  for (var i = 0u; i < lid; i++) {
    if (blockExpert[i] == ex) { before++; }
  }
  return before;
}

fn blockIndex(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return wid.x + wid.y * nwg.x;
}

@compute @workgroup_size(WG)
fn rank_blocks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let b = blockIndex(wid, nwg);
  if (b >= rk.nBlocks) { return; }
  blockExpert[lid] = expertAt(b * WG + lid);
  workgroupBarrier();
  for (var e = lid; e < rk.E; e += WG) {
    var n = 0;
    for (var i = 0u; i < WG; i++) {
      if (blockExpert[i] == i32(e)) { n++; }
    }
    rk_blocks[b * rk.E + e] = n;
  }
}

// capacity_finish (order 1, no mask): keep[a] = 1 when fewer than C earlier assignments chose its expert.
@group(0) @binding(4) var<storage, read_write> cf_keep: array<i32>; // [S*k]

@compute @workgroup_size(WG)
fn capacity_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let b = blockIndex(wid, nwg);
  if (b >= rk.nBlocks) { return; }
  let before = loadBlock(b, lid);
  let t = b * WG + lid;
  let ex = blockExpert[lid];
  if (ex < 0) { return; }
  let rank = u32(rk_blocks[b * rk.E + u32(ex)]) + before;
  cf_keep[assignmentAt(t)] = select(0, 1, rank < rk.capacity);
}

// permute_finish (order 0): row = offsets[e] + rank; both maps written, -1 where no row / no assignment.
@group(0) @binding(4) var<storage, read_write> pf_rowAssignment: array<i32>; // [S*k]
@group(0) @binding(5) var<storage, read_write> pf_assignmentRow: array<i32>; // [S*k]
@group(0) @binding(6) var<storage, read> pf_offsets: array<i32>;             // [E+1]

@compute @workgroup_size(WG)
fn permute_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
  let b = blockIndex(wid, nwg);
  if (b >= rk.nBlocks) { return; }
  let before = loadBlock(b, lid);
  let t = b * WG + lid;
  if (t >= rk.S * rk.k) { return; }
  let ex = blockExpert[lid];
  if (ex < 0) {
    pf_assignmentRow[t] = -1;
  } else {
    let row = pf_offsets[u32(ex)] + rk_blocks[b * rk.E + u32(ex)] + i32(before);
    pf_assignmentRow[t] = row;
    pf_rowAssignment[row] = i32(t);
  }
  // Rows past the kept total hold no assignment; the rows below it are each written once above.
  if (i32(t) >= pf_offsets[rk.E]) { pf_rowAssignment[t] = -1; }
}

// ---- scans: one workgroup; block counts -> per-expert exclusive block offsets in place, totals per expert.
@group(0) @binding(0) var<storage, read_write> sc_blocks: array<i32>; // [nBlocks, E]
@group(0) @binding(1) var<storage, read_write> sc_counts: array<i32>; // [E]
@group(0) @binding(2) var<storage, read_write> sc_out: array<i32>;    // hist: offsets [E+1]; capacity: dropped [1]
@group(0) @binding(3) var<uniform> sc: Params;

fn scanBlocks(lid: u32) {
  for (var e = lid; e < sc.E; e += WG) {
    var run = 0;
    for (var b = 0u; b < sc.nBlocks; b++) {
      let c = sc_blocks[b * sc.E + e];
      sc_blocks[b * sc.E + e] = run;
      run += c;
    }
    sc_counts[e] = run;
  }
  storageBarrier();
}

@compute @workgroup_size(WG)
fn hist_scan(@builtin(local_invocation_index) lid: u32) {
  scanBlocks(lid);
  if (lid == 0u) {
    var run = 0;
    for (var e = 0u; e < sc.E; e++) {
      sc_out[e] = run;
      run += sc_counts[e];
    }
    sc_out[sc.E] = run;
  }
}

@compute @workgroup_size(WG)
fn capacity_scan(@builtin(local_invocation_index) lid: u32) {
  scanBlocks(lid);
  if (lid == 0u) {
    var dropped = 0u;
    for (var e = 0u; e < sc.E; e++) {
      let c = u32(sc_counts[e]);
      if (c > sc.capacity) { dropped += c - sc.capacity; }
    }
    sc_out[0] = i32(dropped);
  }
}

// ---- gather: x[i] = s[rowAssignment[i] / k], zero rows past the kept total. One thread per element.
@group(0) @binding(0) var<storage, read> ga_s: array<f32>;            // [S, dSub]
@group(0) @binding(1) var<storage, read> ga_rowAssignment: array<i32>; // [S*k]
@group(0) @binding(2) var<storage, read_write> ga_x: array<f32>;      // [S*k, dSub]
@group(0) @binding(3) var<uniform> ga: Params;

@compute @workgroup_size(WG)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatId(gid, nwg);
  if (i >= ga.S * ga.k * ga.dSub) { return; }
  let row = i / ga.dSub;
  let a = ga_rowAssignment[row];
  var v = 0.0;
  if (a >= 0) { v = ga_s[(u32(a) / ga.k) * ga.dSub + i % ga.dSub]; }
  ga_x[i] = v;
}

// ---- gather_backward: ds[r] (+)= sum over r's kept choices j, in choice order, of dx[assignmentRow[r*k+j]].
// A sub-token owns at most k rows, so this is a gather from its side: no scatter, no atomics.
@group(0) @binding(0) var<storage, read> gb_dx: array<f32>;            // [S*k, dSub]
@group(0) @binding(1) var<storage, read> gb_assignmentRow: array<i32>;  // [S*k]
@group(0) @binding(2) var<storage, read_write> gb_ds: array<f32>;      // [S, dSub]
@group(0) @binding(3) var<uniform> gb: Params;

@compute @workgroup_size(WG)
fn gather_rows_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatId(gid, nwg);
  if (i >= gb.S * gb.dSub) { return; }
  let r = i / gb.dSub;
  let c = i % gb.dSub;
  var acc = 0.0;
  for (var j = 0u; j < gb.k; j++) {
    let row = gb_assignmentRow[r * gb.k + j];
    if (row >= 0) { acc += gb_dx[u32(row) * gb.dSub + c]; }
  }
  if (gb.flag == 1u) { gb_ds[i] += acc; } else { gb_ds[i] = acc; }
}

// ---- combine: y_r = sum over kept j of g[r,j] * yPerm[assignmentRow[r*k+j]] (+ s_r with the inner residual).
@group(0) @binding(0) var<storage, read> co_yPerm: array<f32>;        // [S*k, dSub]
@group(0) @binding(1) var<storage, read> co_gates: array<f32>;        // [S, k]
@group(0) @binding(2) var<storage, read> co_assignmentRow: array<i32>; // [S*k]
@group(0) @binding(3) var<storage, read> co_s: array<f32>;            // [S, dSub], read when flag
@group(0) @binding(4) var<storage, read_write> co_y: array<f32>;      // [S, dSub]
@group(0) @binding(5) var<uniform> co: Params;

@compute @workgroup_size(WG)
fn combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatId(gid, nwg);
  if (i >= co.S * co.dSub) { return; }
  let r = i / co.dSub;
  let c = i % co.dSub;
  var acc = 0.0;
  for (var j = 0u; j < co.k; j++) {
    let row = co_assignmentRow[r * co.k + j];
    if (row >= 0) { acc += co_gates[r * co.k + j] * co_yPerm[u32(row) * co.dSub + c]; }
  }
  if (co.flag == 1u) { acc += co_s[i]; }
  co_y[i] = acc;
}

// ---- combine_backward_rows: dyPerm[i] = g[a] * dy[a / k] for the assignment a of row i, zero past the total.
@group(0) @binding(0) var<storage, read> cr_dy: array<f32>;             // [S, dSub]
@group(0) @binding(1) var<storage, read> cr_gates: array<f32>;          // [S, k]
@group(0) @binding(2) var<storage, read> cr_rowAssignment: array<i32>;  // [S*k]
@group(0) @binding(3) var<storage, read_write> cr_dyPerm: array<f32>;   // [S*k, dSub]
@group(0) @binding(4) var<uniform> cr: Params;

@compute @workgroup_size(WG)
fn combine_backward_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatId(gid, nwg);
  if (i >= cr.S * cr.k * cr.dSub) { return; }
  let a = cr_rowAssignment[i / cr.dSub];
  var v = 0.0;
  if (a >= 0) { v = cr_gates[u32(a)] * cr_dy[(u32(a) / cr.k) * cr.dSub + i % cr.dSub]; }
  cr_dyPerm[i] = v;
}

// ---- combine_backward_gates: dGates[a] = dy_r . yPerm[assignmentRow[a]], 0 for a dropped assignment.
@group(0) @binding(0) var<storage, read> cg_dy: array<f32>;             // [S, dSub]
@group(0) @binding(1) var<storage, read> cg_yPerm: array<f32>;          // [S*k, dSub]
@group(0) @binding(2) var<storage, read> cg_assignmentRow: array<i32>;  // [S*k]
@group(0) @binding(3) var<storage, read_write> cg_dGates: array<f32>;   // [S, k]
@group(0) @binding(4) var<uniform> cg: Params;

@compute @workgroup_size(WG)
fn combine_backward_gates(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let a = flatId(gid, nwg);
  if (a >= cg.S * cg.k) { return; }
  let row = cg_assignmentRow[a];
  var acc = 0.0;
  if (row >= 0) {
    let r = a / cg.k;
    for (var c = 0u; c < cg.dSub; c++) { acc += cg_dy[r * cg.dSub + c] * cg_yPerm[u32(row) * cg.dSub + c]; }
  }
  cg_dGates[a] = acc;
}

// ---- copy: dst = src (the inner residual's share of ds is dy itself).
@group(0) @binding(0) var<storage, read> cp_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> cp_dst: array<f32>;
@group(0) @binding(2) var<uniform> cp: Params;

@compute @workgroup_size(WG)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatId(gid, nwg);
  if (i < cp.n) { cp_dst[i] = cp_src[i]; }
}
