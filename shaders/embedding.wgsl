// Token embedding: out[n, :] = table[id(n), :], and its backward, a scatter-add of dout rows into dtable.
// A table larger than one binding comes in row parts: a launch sees rows v0..v0+vRows of the table and
// handles only the tokens whose id falls there (one launch per part covers every token once).
// Token n's id sits at tOff + (n / tT) * tLd + n % tT, so the inputs of a (B, T+1) batch are read where
// they are. Ids outside [0, V) are clamped (no out-of-bounds access); the data layer validates them.
//
// The backward must be deterministic without float atomics, so it is "owner computes": each workgroup
// owns R rows of dtable and gathers, in position order, the tokens that land there (embedding_backward).

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

// ---- backward: src = dout [N, d], dst = dtable rows v0..v0+vRows (added to).
// Workgroup w owns rows r0..r0+R of the part (r0 = (w / colBlocks) * R) at columns
// (w % colBlocks) * WG + lid, one per thread. It streams all N ids in chunks of WG (one coalesced read per
// thread) and compacts the chunk's tokens whose id falls in its rows, in position order: each sets its bit
// in a match mask, and its slot is the number of bits below it (a prefix sum over the match flags that
// costs two barriers a chunk, not the 2 log2(WG) of a scan, which lavapipe pays for dearly). Then every
// thread adds those tokens' dout values at its column into per-row accumulators of its own. At the end each
// row that any token hit gets dtable[row] += its sum, so each element of dtable is written by one thread,
// once, with dtable + (its dout rows summed in position order): the order of every sum is fixed by the ids
// alone, and the only atomics are integer ORs.
// Work per part: N * ceil(vRows / R) * ceil(d / WG) id reads (coalesced; linear in N for a fixed vocab and
// independent of how the ids repeat), N * d dout reads, and a read and write of each row the tokens hit.
// The accumulators live in private memory, so the rows per workgroup R are a template value (embeddingTuning).
const R: u32 = {{R}}u;

// Two masks of WG bits, used by alternate chunks: a chunk clears its mask after its second barrier, and
// the chunk after next is the first to set bits in it again.
var<workgroup> hitMask: array<atomic<u32>, 2u * ((WG + 31u) / 32u)>;
var<workgroup> hitPos: array<u32, WG>;  // the matching tokens' positions, in position order
var<workgroup> hitRow: array<u32, WG>;  // their rows, relative to r0

@compute @workgroup_size(WG)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
  let colBlocks = (p.d + WG - 1u) / WG;
  let w = wid.y * nwg.x + wid.x;
  let r0 = (w / colBlocks) * R;
  let rEnd = min(r0 + R, p.vRows);
  let c = (w % colBlocks) * WG + lid;
  let words = (WG + 31u) / 32u;
  var acc: array<f32, R>;
  var hit: array<bool, R>;
  // Every thread runs every chunk (the barriers need uniform control flow), even past d or past the rows.
  for (var base = 0u; base < p.N; base += WG) {
    let mask = ((base / WG) % 2u) * words;
    let n = base + lid;
    var mine = false;
    var row = 0u;
    if (n < p.N) {
      let id = tokenId(n);
      if (id >= p.v0 + r0 && id < p.v0 + rEnd) {
        mine = true;
        row = id - p.v0 - r0;
        atomicOr(&hitMask[mask + lid / 32u], 1u << (lid % 32u));
      }
    }
    workgroupBarrier();
    var count = 0u;
    var slot = 0u;
    for (var j = 0u; j < words; j++) {
      let bits = atomicLoad(&hitMask[mask + j]);
      if (j == lid / 32u) { slot = count + countOneBits(bits & ((1u << (lid % 32u)) - 1u)); }
      count += countOneBits(bits);
    }
    if (mine) {
      hitPos[slot] = n;
      hitRow[slot] = row;
    }
    workgroupBarrier();
    if (lid < words) { atomicStore(&hitMask[mask + lid], 0u); }
    if (c < p.d) {
      for (var k = 0u; k < count; k++) {
        let r = hitRow[k];
        acc[r] += src[hitPos[k] * p.d + c];
        hit[r] = true;
      }
    }
  }
  if (c >= p.d) { return; }
  for (var r = 0u; r0 + r < rEnd; r++) {
    if (hit[r]) {
      let e = (r0 + r) * p.d + c;
      dst[e] = dst[e] + acc[r];
    }
  }
}
