// Rotary position embedding, rotate-half convention (Hugging Face LLaMA), on q or k read as rows
// (B*T of them) of H heads of dHead values: row n holds token t = n % T, so positions restart at 0 in
// every sequence. One thread per (row, head, i < dHead/2) rotates the pair (i, i + dHead/2):
//   y1 = x1 cos - x2 sin,  y2 = x2 cos + x1 sin.
// The backward is the rotation by the opposite angle (the rotation is orthogonal): sign = -1 flips sin.
// The table holds cos[t, i] for t < tableRows, i < dHead/2, then sin in the same layout; it is made once
// per run. Rows may be strided (ld) and offset, so q and k can live inside a fused qkv buffer.
// X_T, Y_T = f32 or f16: the storage types of x and y (the in-place entry's buffer is x's). f16 is storage
// only (mixed-precision q, k): loads widen to f32, the rotation is f32 and each result is rounded once.

override WG: u32 = 256u;

struct Params {
  rows: u32, T: u32, H: u32, half: u32,
  ldX: u32, ldY: u32, offX: u32, offY: u32,
  tableRows: u32, sign: f32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<storage, read> ropeX: array<{{X_T:f32}}>;
@group(0) @binding(1) var<storage, read_write> ropeY: array<{{Y_T:f32}}>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

struct Pair { ix: u32, iy: u32, c: f32, s: f32 }

// Locates the pair handled by flat thread index e (valid when e < rows * H * half).
fn pairOf(e: u32) -> Pair {
  let i = e % p.half;
  let head = (e / p.half) % p.H;
  let row = e / (p.half * p.H);
  let t = row % p.T;
  let dHead = 2u * p.half;
  var out: Pair;
  out.ix = p.offX + row * p.ldX + head * dHead + i;
  out.iy = p.offY + row * p.ldY + head * dHead + i;
  out.c = table[t * p.half + i];
  out.s = p.sign * table[(p.tableRows + t) * p.half + i];
  return out;
}

@compute @workgroup_size(WG)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = (wid.y * nwg.x + wid.x) * WG + lid;
  if (e >= p.rows * p.H * p.half) { return; }
  let q = pairOf(e);
  let x1 = f32(ropeX[q.ix]);
  let x2 = f32(ropeX[q.ix + p.half]);
  ropeY[q.iy] = {{Y_T:f32}}(x1 * q.c - x2 * q.s);
  ropeY[q.iy + p.half] = {{Y_T:f32}}(x2 * q.c + x1 * q.s);
}

// In place: one buffer may not be bound both read-only and writable, and each thread reads its pair
// before writing it, so overwriting x is safe. It takes binding 1 (binding 0 stays empty) so that the
// table and params keep their slots.
@group(0) @binding(1) var<storage, read_write> ropeXY: array<{{X_T:f32}}>;

@compute @workgroup_size(WG)
fn rope_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
  let e = (wid.y * nwg.x + wid.x) * WG + lid;
  if (e >= p.rows * p.H * p.half) { return; }
  let q = pairOf(e);
  let x1 = f32(ropeXY[q.ix]);
  let x2 = f32(ropeXY[q.ix + p.half]);
  ropeXY[q.ix] = {{X_T:f32}}(x1 * q.c - x2 * q.s);
  ropeXY[q.ix + p.half] = {{X_T:f32}}(x2 * q.c + x1 * q.s);
}
