// Token embedding: out[n, :] = table[id(n), :], and its backward, a scatter-add of dout rows into dtable.
// A table larger than one binding comes in row parts: a launch sees rows v0..v0+vRows of the table and
// handles only the tokens whose id falls there (one launch per part covers every token once).
// Token n's id sits at tOff + (n / tT) * tLd + n % tT, so the inputs of a (B, T+1) batch are read where
// they are. Ids outside [0, V) are clamped (no out-of-bounds access); the data layer validates them.
//
// The backward must be deterministic without float atomics. embedding_links threads the tokens of each
// id into a chain in position order: links[n] = the next position with the same id (N at the end) and
// links[N + n] = 1 when n is the first position of its id. Then embedding_backward lets only each chain's
// head walk its chain, summing dout rows in position order, and add the sum into dtable: every row of
// dtable is written by exactly one workgroup column, in an order fixed by the ids alone.

override WG: u32 = 256u;

struct Params {
  N: u32, V: u32, d: u32, tT: u32,
  tLd: u32, tOff: u32, v0: u32, vRows: u32,
}

@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

fn tokenId(n: u32) -> u32 {
  let id = ids[p.tOff + (n / p.tT) * p.tLd + n % p.tT];
  return u32(clamp(id, 0, i32(p.V) - 1));
}

// src = table [V, d], dst = out [N, d]; one thread per output element.
@compute @workgroup_size(WG)
fn embedding_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
  let e = (wid.y * nwg.x + wid.x) * WG + lid;
  if (e >= p.N * p.d) { return; }
  let n = e / p.d;
  let c = e % p.d;
  let id = tokenId(n);
  if (id < p.v0 || id >= p.v0 + p.vRows) { return; }
  dst[e] = src[(id - p.v0) * p.d + c];
}

// The same lookup added to what dst holds: the token-type embedding (mlm) on top of the token embedding.
@compute @workgroup_size(WG)
fn embedding_forward_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
  let e = (wid.y * nwg.x + wid.x) * WG + lid;
  if (e >= p.N * p.d) { return; }
  let n = e / p.d;
  let c = e % p.d;
  let id = tokenId(n);
  if (id < p.v0 || id >= p.v0 + p.vRows) { return; }
  dst[e] += src[(id - p.v0) * p.d + c];
}

@group(0) @binding(4) var<storage, read_write> linksOut: array<u32>;

// One thread per token: scan forward to the next equal id and backward to a previous one. The cost is
// the distance between repeats (N for a token seen once), a few million compares at training sizes.
@compute @workgroup_size(WG)
fn embedding_links(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
  let n = (wid.y * nwg.x + wid.x) * WG + lid;
  if (n >= p.N) { return; }
  let id = tokenId(n);
  var next = p.N;
  for (var m = n + 1u; m < p.N; m++) {
    if (tokenId(m) == id) { next = m; break; }
  }
  var head = 1u;
  for (var m = n; m > 0u; m--) {
    if (tokenId(m - 1u) == id) { head = 0u; break; }
  }
  linksOut[n] = next;
  linksOut[p.N + n] = head;
}

@group(0) @binding(4) var<storage, read> links: array<u32>;

// src = dout [N, d], dst = dtable [V, d] (added to). Workgroup w covers token n = w / colBlocks and
// columns (w % colBlocks) * WG + lid; only chain heads do any work.
@compute @workgroup_size(WG)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
  let colBlocks = (p.d + WG - 1u) / WG;
  let w = wid.y * nwg.x + wid.x;
  let n = w / colBlocks;
  if (n >= p.N || links[p.N + n] == 0u) { return; }
  let c = (w % colBlocks) * WG + lid;
  if (c >= p.d) { return; }
  var acc = 0.0;
  var m = n;
  loop {
    acc += src[m * p.d + c];
    m = links[m];
    if (m >= p.N) { break; }
  }
  let id = tokenId(n);
  if (id < p.v0 || id >= p.v0 + p.vRows) { return; }
  let row = (id - p.v0) * p.d;
  dst[row + c] = dst[row + c] + acc;
}
