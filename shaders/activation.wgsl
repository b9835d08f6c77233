// FFN activations, elementwise over a rows x cols window: SwiGLU h = silu(g) * u (fused, so the gate and
// up projections are read once) and GELU with the tanh approximation, forward and backward.
// Every operand k is a strided window (element (r, c) at off_k + r * ld_k + c), so gate and up may be the
// two halves of one fused [N, 2*inner] projection and the gradients may be written back the same way.
// Storage element types by binding slot (template S0_T .. S4_T: f32, or f16 for the FFN activations under
// mixed precision): loads widen to f32 and stores round once, so the arithmetic is f32 either way.

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

// #include "lib/activation"

alias T0 = {{S0_T:f32}};
alias T1 = {{S1_T:f32}};
alias T2 = {{S2_T:f32}};
alias T3 = {{S3_T:f32}};
alias T4 = {{S4_T:f32}};

@group(0) @binding(0) var<storage, read> in0: array<T0>;
@group(0) @binding(1) var<storage, read> in1: array<T1>;
@group(0) @binding(2) var<storage, read_write> out2: array<T2>;

@compute @workgroup_size(WG)
fn swiglu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
  let q = cellOf(wid, nwg, lid);
  if (!q.ok) { return; }
  let g = f32(in0[p.off0 + q.r * p.ld0 + q.c]);
  let u = f32(in1[p.off1 + q.r * p.ld1 + q.c]);
  out2[p.off2 + q.r * p.ld2 + q.c] = T2(swiglu(g, u));
}

// gelu_forward: x is operand 0, y operand 1 (bound at slot 2 so the input slots stay read-only).
@compute @workgroup_size(WG)
fn gelu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
  let q = cellOf(wid, nwg, lid);
  if (!q.ok) { return; }
  let x = f32(in0[p.off0 + q.r * p.ld0 + q.c]);
  out2[p.off1 + q.r * p.ld1 + q.c] = T2(gelu(x));
}

// swiglu_backward: operands dh, g, u, dg, du.
@group(0) @binding(2) var<storage, read> in2: array<T2>;
@group(0) @binding(3) var<storage, read_write> out3: array<T3>;
@group(0) @binding(4) var<storage, read_write> out4: array<T4>;

@compute @workgroup_size(WG)
fn swiglu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let q = cellOf(wid, nwg, lid);
  if (!q.ok) { return; }
  let dh = f32(in0[p.off0 + q.r * p.ld0 + q.c]);
  let g = f32(in1[p.off1 + q.r * p.ld1 + q.c]);
  let u = f32(in2[p.off2 + q.r * p.ld2 + q.c]);
  out3[p.off3 + q.r * p.ld3 + q.c] = T3(swigluDGate(dh, g, u));
  out4[p.off4 + q.r * p.ld4 + q.c] = T4(swigluDUp(dh, g));
}

// gelu_backward: operands dy, x, dx (dx bound at slot 3).
@compute @workgroup_size(WG)
fn gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
  let q = cellOf(wid, nwg, lid);
  if (!q.ok) { return; }
  let dy = f32(in0[p.off0 + q.r * p.ld0 + q.c]);
  let x = f32(in1[p.off1 + q.r * p.ld1 + q.c]);
  out3[p.off2 + q.r * p.ld2 + q.c] = T3(dy * geluGrad(x));
}
