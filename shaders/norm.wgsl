// RMSNorm over rows of x [N, d]: y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps).
// One workgroup per row: threads take columns lid, lid+WG, ... and a tree in workgroup memory combines
// them, so every sum has a fixed order (deterministic) and any d works. Rows may be split over x and y of
// the grid (more than 65535 rows). The weight gradient is a column reduction over rows: stage 1 here
// (rmsnorm_dw_partial), stage 2 is colsum_reduce in elementwise.wgsl.

override WG: u32 = 256u;

var<workgroup> red: array<f32, WG>;

// #include "lib/reduce"

struct Params { N: u32, d: u32, eps: f32, beta: f32 }

@group(0) @binding(0) var<storage, read> fwdX: array<f32>;
@group(0) @binding(1) var<storage, read> fwdW: array<f32>;
@group(0) @binding(2) var<storage, read_write> fwdY: array<f32>;
@group(0) @binding(3) var<storage, read_write> fwdRstd: array<f32>;
@group(0) @binding(4) var<uniform> fwdP: Params;

@compute @workgroup_size(WG)
fn rmsnorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let row = wid.y * nwg.x + wid.x;
  if (row >= fwdP.N) { return; }
  let base = row * fwdP.d;
  var ss = 0.0;
  for (var i = lid; i < fwdP.d; i += WG) {
    let v = fwdX[base + i];
    ss += v * v;
  }
  let r = 1.0 / sqrt(workgroupSum(lid, ss) / f32(fwdP.d) + fwdP.eps);
  if (lid == 0u) { fwdRstd[row] = r; }
  for (var i = lid; i < fwdP.d; i += WG) { fwdY[base + i] = fwdX[base + i] * r * fwdW[i]; }
}

// dx = r * w * dy - x * r^3 * mean(dy * w * x)  (+ beta * dx: beta 1 adds into the residual gradient).

@group(0) @binding(0) var<storage, read> bwdDy: array<f32>;
@group(0) @binding(1) var<storage, read> bwdX: array<f32>;
@group(0) @binding(2) var<storage, read> bwdW: array<f32>;
@group(0) @binding(3) var<storage, read> bwdRstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> bwdDx: array<f32>;
@group(0) @binding(5) var<uniform> bwdP: Params;

@compute @workgroup_size(WG)
fn rmsnorm_backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
  let row = wid.y * nwg.x + wid.x;
  if (row >= bwdP.N) { return; }
  let base = row * bwdP.d;
  var dot = 0.0;
  for (var i = lid; i < bwdP.d; i += WG) { dot += bwdDy[base + i] * bwdW[i] * bwdX[base + i]; }
  let r = bwdRstd[row];
  let coef = r * r * r * workgroupSum(lid, dot) / f32(bwdP.d);
  for (var i = lid; i < bwdP.d; i += WG) {
    let g = r * bwdW[i] * bwdDy[base + i] - coef * bwdX[base + i];
    if (bwdP.beta == 0.0) { bwdDx[base + i] = g; } else { bwdDx[base + i] = g + bwdP.beta * bwdDx[base + i]; }
  }
}

// Stage 1 of dw = sum over rows of dy * x * rstd: workgroup (column block x, row block y) sums its rows in
// order into partial[block, col].

struct PartialParams { N: u32, d: u32, rowsPerBlock: u32, _p0: u32 }

@group(0) @binding(0) var<storage, read> dwDy: array<f32>;
@group(0) @binding(1) var<storage, read> dwX: array<f32>;
@group(0) @binding(2) var<storage, read> dwRstd: array<f32>;
@group(0) @binding(3) var<storage, read_write> dwPartial: array<f32>;
@group(0) @binding(4) var<uniform> dwP: PartialParams;

@compute @workgroup_size(WG)
fn rmsnorm_dw_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let c = wid.x * WG + lid;
  if (c >= dwP.d) { return; }
  let r0 = wid.y * dwP.rowsPerBlock;
  let r1 = min(dwP.N, r0 + dwP.rowsPerBlock);
  var s = 0.0;
  for (var r = r0; r < r1; r++) { s += dwDy[r * dwP.d + c] * dwX[r * dwP.d + c] * dwRstd[r]; }
  dwPartial[wid.y * dwP.d + c] = s;
}
