// MoE dispatch kernels (MODEL_SPEC.md section 2, steps 5-7), MegaBlocks-style small primitives.
// An assignment a = r*k + j is the j-th choice of sub-token r; idx[a] is its expert.
//
// Ranking within an expert, without atomics and without host knowledge of the counts: positions t of an
// order (0: t = a, sub-token major; 1: t = j*S + r, choice major, the capacity admission order) are cut
// into blocks of WG. rank_blocks counts each expert per block into [nBlocks, E]; *_finish (one workgroup
// per block b) sums those counts itself: per expert, over the blocks before b (b's exclusive offset) and,
// where needed, over all blocks (the totals, then their exclusive prefix over experts), and adds the rank
// inside the block (earlier positions of the same expert). The result is the stable rank of every
// assignment within its expert in that order, deterministic by construction (integer sums in a fixed order).
// The per-expert outputs (counts, offsets, dropped) are written by workgroup 0 alone: permute_finish needs
// the totals in every workgroup (identical everywhere), capacity_finish only for those outputs, so there
// only workgroup 0 reads past the blocks before its own.
//
// Cost of the sums: a workgroup reads up to nBlocks * E counts, O(nBlocks * E / WG) per thread with
// coalesced reads, so O(nBlocks^2 * E) in all but parallel over the nBlocks workgroups, and no launch of
// its own; a separate scan launch would walk the nBlocks blocks serially per expert in one workgroup.
// rank_blocks' counts are read only, never rewritten in place: the workgroups read each other's blocks.
//
// The gather (the second half of permute_finish) and combine move rows between sub-token order [S, dSub]
// and the expert-grouped buffer [S*k, dSub]; rows past the kept total are written as zeros so the
// worst-case-sized grouped GEMM reads defined data.
// Template parameters: WG (workgroup size, a power of two); XP_T, xPerm's storage type (f32, or f16 for
// the expert input under mixed precision: the gather rounds each element once, padding stays exact zeros).

const WG: u32 = {{WG}}u;

struct Params {
  S: u32, k: u32, E: u32, dSub: u32,
  order: u32,    // ranking: 0 = a = r*k + j, 1 = t = j*S + r
  capacity: u32, // capacity_*: C; 0xffffffff when dropless
  nBlocks: u32,
  flag: u32,     // gather_backward: add into ds; combine: add the inner residual s
  residual: u32, // gather_backward: 1 = ds = residual + the gathered sum (the inner residual's dy)
  _p0: u32, _p1: u32, _p2: u32,
}

fn flatId(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

// ---- ranking kernels: shared bindings 0..2, outputs from 3 on. The experts are topkIdx, or after capacity
// keptIdx (-1 for a dropped assignment): one array rather than topkIdx plus a mask, so permute_finish binds
// 8 storage buffers, WebGPU's default limit, counts included.
@group(0) @binding(0) var<storage, read> rk_idx: array<i32>;          // [S*k]
@group(0) @binding(1) var<storage, read_write> rk_blocks: array<i32>; // [nBlocks, E]
@group(0) @binding(2) var<uniform> rk: Params;

var<workgroup> blockExpert: array<i32, WG>;

fn assignmentAt(t: u32) -> u32 {
  if (rk.order == 0u) { return t; }
  return (t % rk.S) * rk.k + t / rk.S;
}

// The expert of position t, or -1 past the end or when dropped.
fn expertAt(t: u32) -> i32 {
  if (t >= rk.S * rk.k) { return -1; }
  return rk_idx[assignmentAt(t)];
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

// ---- block sums, shared by the finish kernels. Experts go in chunks of up to WG; for a chunk of w
// experts the threads form WG / w groups of w, group g reading blocks g, g + WG/w, ...: each group reads w
// neighbouring counts of one block row, and with w = E the whole workgroup reads one contiguous stretch.
var<workgroup> partBefore: array<i32, WG>;  // per thread: its blocks before b, for its expert
var<workgroup> partTotal: array<i32, WG>;   // per thread: all its blocks (below nRead), for its expert
var<workgroup> chunkBefore: array<i32, WG>; // per chunk expert: the count in blocks before b
var<workgroup> chunkTotal: array<i32, WG>;  // per chunk expert: the count in blocks before nRead
var<workgroup> chunkBase: array<i32, WG>;   // per chunk expert (permute_finish): exclusive prefix of the totals

// Sums rk_blocks over blocks b' < nRead for experts e0 .. e0 + w - 1 into chunkBefore (b' < b) and
// chunkTotal; returns w. Call in uniform control flow; the chunk arrays hold until the next call.
fn sumBlockCounts(b: u32, nRead: u32, e0: u32, lid: u32) -> u32 {
  let w = min(WG, rk.E - e0);
  let groups = WG / w;
  let g = lid / w;
  let e = e0 + lid % w;
  var before = 0;
  var total = 0;
  if (g < groups) {
    for (var bb = g; bb < nRead; bb += groups) {
      let c = rk_blocks[bb * rk.E + e];
      total += c;
      if (bb < b) { before += c; }
    }
  }
  partBefore[lid] = before;
  partTotal[lid] = total;
  workgroupBarrier();
  // the groups' partials, reduced in group order
  if (lid < w) {
    var sumBefore = 0;
    var sumTotal = 0;
    for (var i = 0u; i < groups; i++) {
      sumBefore += partBefore[i * w + lid];
      sumTotal += partTotal[i * w + lid];
    }
    chunkBefore[lid] = sumBefore;
    chunkTotal[lid] = sumTotal;
  }
  workgroupBarrier();
  return w;
}

// capacity_finish (order 1, on topkIdx): keptIdx[a] = idx[a] when fewer than C earlier assignments chose
// its expert, else -1. Workgroup 0 also writes the counts before capacity and the number dropped.
@group(0) @binding(3) var<storage, read_write> cf_keptIdx: array<i32>;      // [S*k]
@group(0) @binding(4) var<storage, read_write> cf_countsBefore: array<i32>; // [E]
@group(0) @binding(5) var<storage, read_write> cf_dropped: array<i32>;      // [1]

@compute @workgroup_size(WG)
fn capacity_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let b = blockIndex(wid, nwg);
  if (b >= rk.nBlocks) { return; }
  let before = loadBlock(b, lid);
  let ex = blockExpert[lid];
  // the ranks need only the blocks before b; workgroup 0 (whose are none) reads them all for the totals
  let nRead = select(b, rk.nBlocks, b == 0u);
  var rank = 0u;
  var dropped = 0u;
  for (var e0 = 0u; e0 < rk.E; e0 += WG) {
    let w = sumBlockCounts(b, nRead, e0, lid);
    if (ex >= i32(e0) && ex < i32(e0 + w)) { rank = u32(chunkBefore[u32(ex) - e0]) + before; }
    if (b == 0u) {
      if (lid < w) { cf_countsBefore[e0 + lid] = chunkTotal[lid]; }
      if (lid == 0u) {
        for (var i = 0u; i < w; i++) {
          let c = u32(chunkTotal[i]);
          if (c > rk.capacity) { dropped += c - rk.capacity; }
        }
      }
    }
    workgroupBarrier(); // the next chunk overwrites the chunk arrays
  }
  if (b == 0u && lid == 0u) { cf_dropped[0] = i32(dropped); }
  if (ex < 0) { return; }
  cf_keptIdx[assignmentAt(b * WG + lid)] = select(-1, ex, rank < rk.capacity);
}

// permute_finish (order 0): row = offsets[e] + rank; both maps written, -1 where no row / no assignment.
// Workgroup 0 also writes counts and offsets.
// Then the gather: the workgroup copies its assignments' sub-tokens into their rows of xPerm and zeros the
// padding rows it owns (row t past the kept total), threads striding over the block's WG * dSub elements so
// neighbouring threads touch neighbouring addresses.
@group(0) @binding(3) var<storage, read_write> pf_rowAssignment: array<i32>; // [S*k]
@group(0) @binding(4) var<storage, read_write> pf_assignmentRow: array<i32>; // [S*k]
@group(0) @binding(5) var<storage, read_write> pf_counts: array<i32>;        // [E]
@group(0) @binding(6) var<storage, read_write> pf_offsets: array<i32>;       // [E+1]
@group(0) @binding(7) var<storage, read> pf_s: array<f32>;                   // [S, dSub]
@group(0) @binding(8) var<storage, read_write> pf_xPerm: array<{{XP_T:f32}}>; // [S*k, dSub]

var<workgroup> blockRow: array<i32, WG>;  // the permuted row of the block's assignment, -1 for none
var<workgroup> blockPad: array<u32, WG>;  // 1 where row t (the position's own index) is padding
var<workgroup> expertRun: i32;            // thread 0's running prefix over the experts of earlier chunks

@compute @workgroup_size(WG)
fn permute_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
  let b = blockIndex(wid, nwg);
  if (b >= rk.nBlocks) { return; }
  let before = loadBlock(b, lid);
  let t = b * WG + lid;
  let ex = blockExpert[lid];
  var row = -1;
  if (lid == 0u) { expertRun = 0; }
  for (var e0 = 0u; e0 < rk.E; e0 += WG) {
    let w = sumBlockCounts(b, rk.nBlocks, e0, lid);
    // offsets[e] = the totals of the experts before e, summed in expert order
    if (lid == 0u) {
      var run = expertRun;
      for (var i = 0u; i < w; i++) {
        chunkBase[i] = run;
        run += chunkTotal[i];
      }
      expertRun = run;
    }
    workgroupBarrier();
    if (ex >= i32(e0) && ex < i32(e0 + w)) {
      let i = u32(ex) - e0;
      row = chunkBase[i] + chunkBefore[i] + i32(before);
    }
    if (b == 0u && lid < w) {
      pf_counts[e0 + lid] = chunkTotal[lid];
      pf_offsets[e0 + lid] = chunkBase[lid];
    }
    workgroupBarrier(); // the next chunk overwrites the chunk arrays
  }
  let kept = expertRun;
  if (b == 0u && lid == 0u) { pf_offsets[rk.E] = kept; }
  var pad = 0u;
  if (t < rk.S * rk.k) {
    if (ex < 0) {
      pf_assignmentRow[t] = -1;
    } else {
      pf_assignmentRow[t] = row;
      pf_rowAssignment[row] = i32(t);
    }
    // Rows past the kept total hold no assignment; the rows below it are each written once above.
    if (i32(t) >= kept) {
      pf_rowAssignment[t] = -1;
      pad = 1u;
    }
  }
  blockRow[lid] = row;
  blockPad[lid] = pad;
  workgroupBarrier();
  let dSub = rk.dSub;
  for (var i = lid; i < WG * dSub; i += WG) {
    let p = i / dSub;
    let c = i % dSub;
    let at = b * WG + p;
    if (blockRow[p] >= 0) { pf_xPerm[u32(blockRow[p]) * dSub + c] = {{XP_T:f32}}(pf_s[(at / rk.k) * dSub + c]); }
    if (blockPad[p] == 1u) { pf_xPerm[at * dSub + c] = {{XP_T:f32}}(0.0); }
  }
}

// ---- gather_backward: ds[r] (+)= sum over r's kept choices j, in choice order, of dx[assignmentRow[r*k+j]],
// or with the inner residual ds[r] = dy[r] + that sum. A sub-token owns at most k rows, so this is a
// gather from its side: no scatter, no atomics.
@group(0) @binding(0) var<storage, read> gb_dx: array<f32>;            // [S*k, dSub]
@group(0) @binding(1) var<storage, read> gb_assignmentRow: array<i32>;  // [S*k]
@group(0) @binding(2) var<storage, read_write> gb_ds: array<f32>;      // [S, dSub]
@group(0) @binding(3) var<uniform> gb: Params;
@group(0) @binding(4) var<storage, read> gb_residual: array<f32>;      // [S, dSub], read when residual

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
  if (gb.residual == 1u) {
    gb_ds[i] = gb_residual[i] + acc;
  } else if (gb.flag == 1u) {
    gb_ds[i] += acc;
  } else {
    gb_ds[i] = acc;
  }
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

// ---- combine_backward: one thread per element of the permuted rows [S*k, dSub].
//   dyPerm[i] = g[a] * dy[a / k] for the assignment a of row i / dSub, zero past the total;
//   the first thread of each row-length stretch (i = a * dSub) also writes dGates[a] = dy_r . yPerm[row of a],
//   0 for a dropped assignment: S*k dot products spread one per dSub threads.
@group(0) @binding(0) var<storage, read> cb_dy: array<f32>;             // [S, dSub]
@group(0) @binding(1) var<storage, read> cb_gates: array<f32>;          // [S, k]
@group(0) @binding(2) var<storage, read> cb_rowAssignment: array<i32>;  // [S*k]
@group(0) @binding(3) var<storage, read> cb_assignmentRow: array<i32>;  // [S*k]
@group(0) @binding(4) var<storage, read> cb_yPerm: array<f32>;          // [S*k, dSub]
@group(0) @binding(5) var<storage, read_write> cb_dyPerm: array<f32>;   // [S*k, dSub]
@group(0) @binding(6) var<storage, read_write> cb_dGates: array<f32>;   // [S, k]
@group(0) @binding(7) var<uniform> cb: Params;

@compute @workgroup_size(WG)
fn combine_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatId(gid, nwg);
  if (i >= cb.S * cb.k * cb.dSub) { return; }
  let a = cb_rowAssignment[i / cb.dSub];
  var v = 0.0;
  if (a >= 0) { v = cb_gates[u32(a)] * cb_dy[(u32(a) / cb.k) * cb.dSub + i % cb.dSub]; }
  cb_dyPerm[i] = v;

  if (i % cb.dSub != 0u) { return; }
  let ga = i / cb.dSub;
  let row = cb_assignmentRow[ga];
  var acc = 0.0;
  if (row >= 0) {
    let r = ga / cb.k;
    for (var c = 0u; c < cb.dSub; c++) { acc += cb_dy[r * cb.dSub + c] * cb_yPerm[u32(row) * cb.dSub + c]; }
  }
  cb_dGates[ga] = acc;
}
