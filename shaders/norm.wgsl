// RMSNorm over rows of x [N, d]: y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps).
// Forward: one workgroup per row; threads take columns lid, lid+WG, ... and a tree in workgroup memory
// combines them, so every sum has a fixed order (deterministic) and any d works. Rows may be split over x
// and y of the grid (more than 65535 rows).
// Backward: one workgroup per block of consecutive rows (blocks split over x and y the same way). It
// computes each row's dx as the forward computes y, and the same threads, which own the same columns row
// after row, add dy * xhat into partial[block, :] in row order: stage 1 of the weight gradient's column
// reduction, in a fixed order. Stage 2 is colsum_reduce in elementwise.wgsl.

override WG: u32 = 256u;

var<workgroup> red: array<f32, WG>;

// #include "lib/reduce"

struct Params { N: u32, d: u32, eps: f32, beta: f32 }

@group(0) @binding(0) var<storage, read> fwdX: array<f32>;
@group(0) @binding(1) var<storage, read> fwdW: array<f32>;
// y's storage type: f32, or f16 (template Y_T) for the projections' inputs under mixed precision.
@group(0) @binding(2) var<storage, read_write> fwdY: array<{{Y_T:f32}}>;
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
  for (var i = lid; i < fwdP.d; i += WG) { fwdY[base + i] = {{Y_T:f32}}(fwdX[base + i] * r * fwdW[i]); }
}

// dx = r * w * dy - x * r^3 * mean(dy * w * x)  (+ beta * dx: beta 1 adds into the residual gradient);
// partial[block, c] = sum over the block's rows, in order, of dy * x * r (dw = sum over blocks).

struct BwdParams { N: u32, d: u32, rowsPerBlock: u32, blocks: u32, beta: f32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> bwdDy: array<f32>;
@group(0) @binding(1) var<storage, read> bwdX: array<f32>;
@group(0) @binding(2) var<storage, read> bwdW: array<f32>;
@group(0) @binding(3) var<storage, read> bwdRstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> bwdDx: array<f32>;
@group(0) @binding(5) var<storage, read_write> bwdPartial: array<f32>;
@group(0) @binding(6) var<uniform> bwdP: BwdParams;

@compute @workgroup_size(WG)
fn rmsnorm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
  let block = wid.y * nwg.x + wid.x;
  if (block >= bwdP.blocks) { return; }
  let d = bwdP.d;
  let pbase = block * d;
  // Thread lid alone reads and writes its columns of partial[block, :], so program order is enough.
  for (var i = lid; i < d; i += WG) { bwdPartial[pbase + i] = 0.0; }
  let r0 = block * bwdP.rowsPerBlock;
  let r1 = min(bwdP.N, r0 + bwdP.rowsPerBlock);
  for (var row = r0; row < r1; row++) {
    let base = row * d;
    var dot = 0.0;
    for (var i = lid; i < d; i += WG) { dot += bwdDy[base + i] * bwdW[i] * bwdX[base + i]; }
    let r = bwdRstd[row];
    let coef = r * r * r * workgroupSum(lid, dot) / f32(d);
    for (var i = lid; i < d; i += WG) {
      let dy = bwdDy[base + i];
      let x = bwdX[base + i];
      let g = r * bwdW[i] * dy - coef * x;
      if (bwdP.beta == 0.0) { bwdDx[base + i] = g; } else { bwdDx[base + i] = g + bwdP.beta * bwdDx[base + i]; }
      bwdPartial[pbase + i] += dy * x * r;
    }
  }
}
