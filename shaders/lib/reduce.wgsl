// Shared by shaders that `// #include "lib/reduce"`: the including file declares
// `override WG: u32` (a power of two) and `var<workgroup> red: array<f32, WG>`.

// Tree sum over the workgroup in a fixed order (deterministic). Ends with a barrier so `red` can be
// reused straight away.
fn workgroupSum(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let total = red[0];
  workgroupBarrier();
  return total;
}
