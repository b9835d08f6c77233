// FFN activations, elementwise over a rows x cols window: SwiGLU h = silu(g) * u (fused, so the gate and
// up projections are read once) and GELU with the tanh approximation, forward and backward.
// Every operand k is a strided window (element (r, c) at off_k + r * ld_k + c), so gate and up may be the
// two halves of one fused [N, 2*inner] projection and the gradients may be written back the same way.

override WG: u32 = 256u;

struct Params {
  rows: u32, cols: u32, ld0: u32, ld1: u32,
  ld2: u32, ld3: u32, ld4: u32, off0: u32,
  off1: u32, off2: u32, off3: u32, off4: u32,
}

@group(0) @binding(5) var<uniform> p: Params;

struct Cell { ok: bool, r: u32, c: u32 }

fn cellOf(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Cell {
  let e = (wid.y * nwg.x + wid.x) * WG + lid;
  return Cell(e < p.rows * p.cols, e / max(p.cols, 1u), e % max(p.cols, 1u));
}

// Written so exp never overflows: for g < 0 use e^g / (1 + e^g).
fn sigmoid(g: f32) -> f32 {
  let e = exp(-abs(g));
  return select(e / (1.0 + e), 1.0 / (1.0 + e), g >= 0.0);
}

const GELU_C: f32 = 0.7978845608028654; // sqrt(2 / pi)

// GELU through 0.5 (1 + tanh z) = sigmoid(2z) and 0.5 (1 - tanh^2 z) = 2 sigmoid(2z) (1 - sigmoid(2z)):
// in the negative tail 1 + tanh z cancels to 0 in f32 while sigmoid keeps its relative precision, and
// no tanh of a large argument (NaN on some drivers) is ever taken.
fn geluGate(x: f32) -> f32 {
  return sigmoid(2.0 * GELU_C * (x + 0.044715 * x * x * x));
}

@group(0) @binding(0) var<storage, read> in0: array<f32>;
@group(0) @binding(1) var<storage, read> in1: array<f32>;
@group(0) @binding(2) var<storage, read_write> out2: array<f32>;

@compute @workgroup_size(WG)
fn swiglu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
  let q = cellOf(wid, nwg, lid);
  if (!q.ok) { return; }
  let g = in0[p.off0 + q.r * p.ld0 + q.c];
  let u = in1[p.off1 + q.r * p.ld1 + q.c];
  out2[p.off2 + q.r * p.ld2 + q.c] = g * sigmoid(g) * u;
}

// gelu_forward: x is operand 0, y operand 1 (bound at slot 2 so the input slots stay read-only).
@compute @workgroup_size(WG)
fn gelu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
  let q = cellOf(wid, nwg, lid);
  if (!q.ok) { return; }
  let x = in0[p.off0 + q.r * p.ld0 + q.c];
  out2[p.off1 + q.r * p.ld1 + q.c] = x * geluGate(x);
}

// swiglu_backward: operands dh, g, u, dg, du. dg = dh * u * s * (1 + g (1 - s)), du = dh * silu(g).
@group(0) @binding(2) var<storage, read> in2: array<f32>;
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;
@group(0) @binding(4) var<storage, read_write> out4: array<f32>;

@compute @workgroup_size(WG)
fn swiglu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let q = cellOf(wid, nwg, lid);
  if (!q.ok) { return; }
  let dh = in0[p.off0 + q.r * p.ld0 + q.c];
  let g = in1[p.off1 + q.r * p.ld1 + q.c];
  let u = in2[p.off2 + q.r * p.ld2 + q.c];
  let s = sigmoid(g);
  out3[p.off3 + q.r * p.ld3 + q.c] = dh * u * s * (1.0 + g * (1.0 - s));
  out4[p.off4 + q.r * p.ld4 + q.c] = dh * g * s;
}

// gelu_backward: operands dy, x, dx (dx bound at slot 3); d/dx [x s(2z)] = s + 2 x s (1 - s) dz/dx.
@compute @workgroup_size(WG)
fn gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
  let q = cellOf(wid, nwg, lid);
  if (!q.ok) { return; }
  let dy = in0[p.off0 + q.r * p.ld0 + q.c];
  let x = in1[p.off1 + q.r * p.ld1 + q.c];
  let s = geluGate(x);
  let dInner = GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
  out3[p.off2 + q.r * p.ld2 + q.c] = dy * (s + 2.0 * x * s * (1.0 - s) * dInner);
}
