// AdamW with gradient clipping, PyTorch semantics (torch.optim.AdamW + clip_grad_norm_).
// The per-step scalars live in one small storage buffer `st` so a training step creates no buffer: the host
// writes st[0..9) with queue.writeBuffer before each step; the GPU owns st[9..12): the clip scale of the step
// and the two bias corrections, which advance only when a step is applied, so a skipped (non-finite) step
// leaves Adam's step count where it was:
//   st: 0 beta1, 1 1-beta1, 2 beta2, 3 1-beta2, 4 eps, 5 shrink = 1 - lr*wd, 6 lr, 7 max_norm (<= 0: no
//       clipping), 8 unused, 9 clip scale, 10 bc1 = 1 - beta1^n, 11 bc2 = 1 - beta2^n (n = updates applied)
// The host computes 1-beta and the decay factor in double precision, as PyTorch does in Python floats:
// 1 - f32(0.999) would be off by 1e-5 relative. The bias corrections follow bc <- beta*bc + (1-beta), which
// equals 1 - beta^n and keeps f32's relative accuracy (1 - pow(beta, n) in f32 would cancel badly).

override WG: u32 = 256u;

const CLIP: u32 = 9u;
const BC1: u32 = 10u;
const BC2: u32 = 11u;

@group(0) @binding(0) var<storage, read_write> norm: array<f32>;
@group(0) @binding(1) var<storage, read_write> stw: array<f32>;

// Inf or NaN by the bit pattern: WGSL lets compilers assume finite floats, so `x != x` may be folded away.
fn is_nonfinite(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}

// One thread: norm[0] holds the global sum of squares on entry and the global norm on exit. A non-finite
// norm (an overflowed or NaN gradient) sets the clip scale to -1, which makes the update skip the whole
// step, moments included, so the parameters stay those of the last good step; the host sees the norm.
@compute @workgroup_size(1)
fn clip_scale() {
  let ss = norm[0];
  let n = select(sqrt(max(ss, 0.0)), ss, is_nonfinite(ss));
  norm[0] = n;
  let maxNorm = stw[7];
  var clip = 1.0;
  if (maxNorm > 0.0) { clip = min(1.0, maxNorm / (n + 1e-6)); }
  if (is_nonfinite(n)) {
    clip = -1.0;
  } else {
    stw[BC1] = stw[0] * stw[BC1] + stw[1];
    stw[BC2] = stw[2] * stw[BC2] + stw[3];
  }
  stw[CLIP] = clip;
}

struct Segment { n: u32, offset: u32, decay: u32, _p0: u32 }

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m1: array<f32>;
@group(0) @binding(3) var<storage, read_write> m2: array<f32>;
@group(0) @binding(4) var<storage, read> st: array<f32>;
@group(0) @binding(5) var<uniform> seg: Segment;

// Elements offset..offset+n of one segment (the same offset in param, grad and both moments).
@compute @workgroup_size(WG)
fn adamw_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= seg.n || st[CLIP] < 0.0) { return; }
  let j = seg.offset + i;
  let g = grad[j] * st[CLIP];
  var p = param[j];
  if (seg.decay != 0u) { p *= st[5]; }
  let m = st[0] * m1[j] + st[1] * g;
  let v = st[2] * m2[j] + st[3] * (g * g);
  m1[j] = m;
  m2[j] = v;
  param[j] = p - (st[6] / st[BC1]) * m / (sqrt(v) / sqrt(st[BC2]) + st[4]);
}
