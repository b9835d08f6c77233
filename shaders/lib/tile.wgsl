// The tiled GEMM core shared by matmul.wgsl and grouped_gemm.wgsl (`// #include "lib/tile"`). The
// including file defines the tile: BM x BN of C per workgroup, BK deep, TM x TN per thread (BM, BK, TN
// multiples of 4), so BN/TN x BM/TM threads. A and B tiles are staged through workgroup memory in two
// buffers: while the threads multiply out one tile, the next one's global loads are in flight in
// registers (ra / rb), and one barrier per K step suffices. Loads come in groups of 4 elements along each
// operand's contiguous dimension, so consecutive threads read consecutive addresses; the including file
// fetches the groups (its own addressing and masking) and the loop is, per kernel:
//   fetch step t0 into ra / rb; storeTile(0); barrier;
//   for each step t: fetch t + 1 (if any); tileMac(t's buffer); storeTile(the other buffer); barrier.
// The other buffer was last read one step earlier, which every thread finished before that step's barrier.

const TN4: u32 = TN / 4u;
const BN4: u32 = BN / 4u;
const WX: u32 = BN / TN;
const WY: u32 = BM / TM;
const NT: u32 = WX * WY;
const GA: u32 = BM * BK / 4u;        // groups of 4 A elements per tile
const GB: u32 = BK * BN / 4u;        // groups of 4 B elements per tile
const RA: u32 = (GA + NT - 1u) / NT; // groups per thread
const RB: u32 = (GB + NT - 1u) / NT;

var<workgroup> As: array<f32, 2u * BK * BM>;        // buffer b: As[b * BK * BM + k * BM + m]
var<workgroup> Bs: array<vec4<f32>, 2u * BK * BN4>; // buffer b: Bs[b * BK * BN4 + k * BN4 + n / 4]
var<private> ra: array<vec4<f32>, RA>;              // the next tile's groups, in flight
var<private> rb: array<vec4<f32>, RB>;
var<private> tacc: array<vec4<f32>, TM * TN4>;      // this thread's TM x TN block of C

// Group g of a tile: the (m, k) of its first A element, contiguous along m when transA (A stored [K, M]),
// else along k; the (k, n) of its first B element, contiguous along k when transB (B stored [N, K]).
fn groupA(g: u32, transA: bool) -> vec2<u32> {
  if (transA) { return vec2<u32>((g % (BM / 4u)) * 4u, g / (BM / 4u)); }
  return vec2<u32>(g / (BK / 4u), (g % (BK / 4u)) * 4u);
}
fn groupB(g: u32, transB: bool) -> vec2<u32> {
  if (transB) { return vec2<u32>((g % (BK / 4u)) * 4u, g / (BK / 4u)); }
  return vec2<u32>(g / BN4, (g % BN4) * 4u);
}

// Writes ra / rb into workgroup buffer `buf`, A transposed to k-major so the multiply reads rows of k.
fn storeTile(buf: u32, lid: u32, transA: bool, transB: bool) {
  let oa = buf * BK * BM;
  let ob = buf * BK * BN4;
  for (var r = 0u; r < RA; r++) {
    let g = lid + r * NT;
    if (g >= GA) { break; }
    let mk = groupA(g, transA);
    for (var c = 0u; c < 4u; c++) {
      if (transA) { As[oa + mk.y * BM + mk.x + c] = ra[r][c]; } else { As[oa + (mk.y + c) * BM + mk.x] = ra[r][c]; }
    }
  }
  for (var r = 0u; r < RB; r++) {
    let g = lid + r * NT;
    if (g >= GB) { break; }
    let kn = groupB(g, transB);
    if (transB) {
      for (var c = 0u; c < 4u; c++) { Bs[ob + (kn.x + c) * BN4 + kn.y / 4u][kn.y % 4u] = rb[r][c]; }
    } else {
      Bs[ob + kn.x * BN4 + kn.y / 4u] = rb[r];
    }
  }
}

// tacc += the A tile x the B tile of buffer `buf`, for the thread at (lx, ly) of the workgroup.
fn tileMac(buf: u32, lx: u32, ly: u32) {
  let oa = buf * BK * BM;
  let ob = buf * BK * BN4;
  for (var k = 0u; k < BK; k++) {
    var b: array<vec4<f32>, TN4>;
    for (var j = 0u; j < TN4; j++) { b[j] = Bs[ob + k * BN4 + lx * TN4 + j]; }
    for (var i = 0u; i < TM; i++) {
      let a = vec4<f32>(As[oa + k * BM + ly * TM + i]);
      for (var j = 0u; j < TN4; j++) { tacc[i * TN4 + j] = fma(a, b[j], tacc[i * TN4 + j]); }
    }
  }
}
