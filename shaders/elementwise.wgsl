// Elementwise and reduction utilities for the residual stream and gradient bookkeeping.
// Every reduction sums in an order fixed by the launch shape alone (strided per-thread partial sums, then a
// workgroup tree, then per-block partials summed in block order), never with atomics, so a run is
// bit-for-bit reproducible: training resume depends on that.
// 1-D launches may be split over x and y (grid1d in src/gpu/tensor.ts): the flat index folds both back.

override WG: u32 = 256u;

var<workgroup> red: array<f32, WG>;

fn flatIndex(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
  return (wid.y * nwg.x + wid.x) * WG + lid;
}

// #include "lib/reduce"

// ---- y = a + b --------------------------------------------------------------------------------------

struct AddParams { n: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> addA: array<f32>;
@group(0) @binding(1) var<storage, read> addB: array<f32>;
@group(0) @binding(2) var<storage, read_write> addY: array<f32>;
@group(0) @binding(3) var<uniform> addP: AddParams;

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
  let i = flatIndex(wid, nwg, lid);
  if (i < addP.n) { addY[i] = addA[i] + addB[i]; }
}

// ---- dst = alpha * src + beta * dst over a rows x cols window of two strided matrices -----------------
// Covers copy (beta 0: dst is never read, so stale memory or NaN there cannot leak), scaled copy,
// accumulate (y += alpha x) and strided slicing in and out of wider buffers.

struct AxpbyParams {
  rows: u32, cols: u32, ldSrc: u32, ldDst: u32,
  offSrc: u32, offDst: u32, alpha: f32, beta: f32,
}

@group(0) @binding(0) var<storage, read> axSrc: array<f32>;
@group(0) @binding(1) var<storage, read_write> axDst: array<f32>;
@group(0) @binding(2) var<uniform> axP: AxpbyParams;

@compute @workgroup_size(WG)
fn axpby(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
  let i = flatIndex(wid, nwg, lid);
  if (i >= axP.rows * axP.cols) { return; }
  let r = i / axP.cols;
  let c = i % axP.cols;
  let s = axP.alpha * axSrc[axP.offSrc + r * axP.ldSrc + c];
  let di = axP.offDst + r * axP.ldDst + c;
  if (axP.beta == 0.0) { axDst[di] = s; } else { axDst[di] = s + axP.beta * axDst[di]; }
}

// ---- x *= alpha, in place (a separate entry: one buffer may not be bound as both src and dst) ----------

struct ScaleParams { n: u32, alpha: f32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<storage, read_write> scX: array<f32>;
@group(0) @binding(1) var<uniform> scP: ScaleParams;

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
  let i = flatIndex(wid, nwg, lid);
  if (i < scP.n) { scX[i] = scX[i] * scP.alpha; }
}

// ---- out[c] = sum over blocks of partial[b, c]: stage 2 of a column reduction (stage 1 in norm.wgsl) ----
// The blocks are added in block order, so the sum is deterministic.

struct ReduceParams { F: u32, blocks: u32, beta: f32, _p0: u32 }

@group(0) @binding(0) var<storage, read> rdPartial: array<f32>;
@group(0) @binding(1) var<storage, read_write> rdOut: array<f32>;
@group(0) @binding(2) var<uniform> rdP: ReduceParams;

// (+ beta * out[c]; beta 1 accumulates a gradient)
@compute @workgroup_size(WG)
fn colsum_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
  let c = flatIndex(wid, nwg, lid);
  if (c >= rdP.F) { return; }
  var s = 0.0;
  for (var b = 0u; b < rdP.blocks; b++) { s += rdPartial[b * rdP.F + c]; }
  if (rdP.beta == 0.0) { rdOut[c] = s; } else { rdOut[c] = s + rdP.beta * rdOut[c]; }
}

// ---- global sum of squares over many tensors --------------------------------------------------------
// One sumsq_partial launch per tensor writes one value per workgroup into partials[slot + wg]; then
// sumsq_reduce (a single workgroup) sums every slot into out[0]. The slot layout is fixed at plan time.

struct SumsqParams { n: u32, offset: u32, slot: u32, _p0: u32 }

@group(0) @binding(0) var<storage, read> sqX: array<f32>;
@group(0) @binding(1) var<storage, read_write> sqPartial: array<f32>;
@group(0) @binding(2) var<uniform> sqP: SumsqParams;

@compute @workgroup_size(WG)
fn sumsq_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var i = wid.x * WG + lid; i < sqP.n; i += nwg.x * WG) {
    let v = sqX[sqP.offset + i];
    s += v * v;
  }
  let total = workgroupSum(lid, s);
  if (lid == 0u) { sqPartial[sqP.slot + wid.x] = total; }
}

// out[0] = scale * sum(x[0..n)): the last stage of the sum of squares (scale 1) and of the mean loss.
struct SumParams { n: u32, scale: f32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<storage, read> smX: array<f32>;
@group(0) @binding(1) var<storage, read_write> smOut: array<f32>;
@group(0) @binding(2) var<uniform> smP: SumParams;

@compute @workgroup_size(WG)
fn sum_all(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var i = lid; i < smP.n; i += WG) { s += smX[i]; }
  let total = workgroupSum(lid, s);
  if (lid == 0u) { smOut[0] = total * smP.scale; }
}
