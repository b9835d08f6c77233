// Decoding one new token per step against a K/V cache (src/model/decoder.ts). The step's position is a
// runtime value, state[0], written by the host before each submit: one plan serves every position, so a
// new token costs O(prefix) attention and O(1) everything else.
//
// rope_append: RoPE (rotate-half, as rope.wgsl) of the new q in place and of the new k at position pos,
//   k written into cache row pos; v copied into its cache row. One thread per element of a [d] row.
// attend: single-query causal attention of the new q over cache rows 0..pos, one workgroup per head.
//   Scores are kept in a [H, maxT] scratch buffer: pass 1 writes s_j = scale q.k_j and finds the max,
//   pass 2 turns them into exp(s_j - max) and sums them (a stable softmax), pass 3 has one thread per
//   output channel sum p_j v_j over j in order. Every output is written by one thread in a fixed order:
//   results are deterministic. Nothing depends on how many keys a workgroup has (no tile edge to get wrong).
//
// Template parameter WG: threads of the attend workgroup, a power of two (tree reductions).

struct Params {
  H: u32, dHead: u32, d: u32, maxT: u32,
  tableRows: u32, scale: f32, _p0: u32, _p1: u32,
}

@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> state: array<u32>; // [0]: the position of this step's token

// attend
@group(0) @binding(0) var<storage, read> Qa: array<f32>;          // [d] the new query, RoPE applied
@group(0) @binding(1) var<storage, read> Kca: array<f32>;         // [maxT, d] key cache
@group(0) @binding(2) var<storage, read> Vca: array<f32>;         // [maxT, d] value cache
@group(0) @binding(5) var<storage, read_write> Scores: array<f32>; // [H, maxT] scratch
@group(0) @binding(6) var<storage, read_write> Oa: array<f32>;     // [d] output, heads side by side

// rope_append
@group(0) @binding(0) var<storage, read_write> Qr: array<f32>;    // [d] q, rotated in place
@group(0) @binding(1) var<storage, read_write> Kc: array<f32>;    // [maxT, d]
@group(0) @binding(2) var<storage, read_write> Vc: array<f32>;    // [maxT, d]
@group(0) @binding(5) var<storage, read> Kn: array<f32>;          // [d] the new k (before RoPE)
@group(0) @binding(6) var<storage, read> Vn: array<f32>;          // [d] the new v
@group(0) @binding(7) var<storage, read> table: array<f32>;       // ropeTable: cos [tableRows, dHead/2], then sin

const WG: u32 = {{WG}}u;
const NEG_BIG: f32 = -1.0e30;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(64)
fn rope_append(@builtin(global_invocation_id) gid: vec3<u32>) {
  let e = gid.x;
  if (e >= p.d) { return; }
  let pos = state[0];
  let row = pos * p.d;
  Vc[row + e] = Vn[e];
  let half = p.dHead / 2u;
  if (e < p.d / 2u) {
    let i = e % half;
    let ix = (e / half) * p.dHead + i;
    let c = table[pos * half + i];
    let s = table[(p.tableRows + pos) * half + i];
    let q1 = Qr[ix];
    let q2 = Qr[ix + half];
    Qr[ix] = q1 * c - q2 * s;
    Qr[ix + half] = q2 * c + q1 * s;
    let k1 = Kn[ix];
    let k2 = Kn[ix + half];
    Kc[row + ix] = k1 * c - k2 * s;
    Kc[row + ix + half] = k2 * c + k1 * s;
  }
}

@compute @workgroup_size(WG)
fn attend(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let h = wg.x;
  let n = state[0] + 1u; // keys 0..pos
  let qOff = h * p.dHead;
  let sOff = h * p.maxT;

  var m = NEG_BIG;
  for (var j = lid; j < n; j += WG) {
    let kOff = j * p.d + qOff;
    var s = 0.0;
    for (var c = 0u; c < p.dHead; c++) { s = fma(Qa[qOff + c], Kca[kOff + c], s); }
    s *= p.scale;
    Scores[sOff + j] = s;
    m = max(m, s);
  }
  red[lid] = m;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
    if (lid < stride) { red[lid] = max(red[lid], red[lid + stride]); }
    workgroupBarrier();
  }
  let mx = red[0];
  workgroupBarrier();

  var l = 0.0;
  for (var j = lid; j < n; j += WG) {
    let e = exp(Scores[sOff + j] - mx);
    Scores[sOff + j] = e;
    l += e;
  }
  red[lid] = l;
  storageBarrier(); // pass 3 reads the probabilities other threads wrote
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
    if (lid < stride) { red[lid] = red[lid] + red[lid + stride]; }
    workgroupBarrier();
  }
  let inv = 1.0 / red[0];

  for (var c = lid; c < p.dHead; c += WG) {
    var acc = 0.0;
    for (var j = 0u; j < n; j++) { acc = fma(Scores[sOff + j], Vca[j * p.d + qOff + c], acc); }
    Oa[qOff + c] = acc * inv;
  }
}
