// Small utility kernels: fill a buffer with a value, copy/scale and accumulate.

struct FillParams {
  n: u32,
  value: f32,
}

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<uniform> p: FillParams;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i < p.n) {
    out[i] = p.value;
  }
}
