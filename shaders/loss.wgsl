// Cross-entropy over the vocabulary with the softmax fused in. One workgroup per row of logits [N, V]:
// threads stride over the row (V may be 50257), a workgroup tree takes the max, then the sum of
// exp(l - max); lse = max + log(sum), loss_n = lse - logit[target]. The fused entries then write
// dlogits = (softmax - onehot(target)) * scale in the same pass, to a separate buffer or over the logits
// themselves (the logits are dead after the loss, and at N x V they are the biggest activation).
// Every reduction has a fixed order, so results are bit-identical run to run.
// Targets are read through a token layout: target n sits at tOff + (n / tT) * tLd + n % tT, so the
// shifted ids of a (B, T+1) batch can be used where they are; n = rowBase + row, so a launch over a chunk
// of rows (the LM head in row chunks) reads its rows' targets. An out-of-range target is clamped (no
// out-of-bounds read); the data layer validates ids.
// Weighted (p.weighted = 1, the mlm objective): row n's loss and gradient are multiplied by weights[n]
// (1/count at the masked positions of a batch, 0 elsewhere, so the row losses sum to the masked mean and
// an unscored row, whose target may be -1, contributes exactly nothing), and correct[row] = weights[n]
// when the target's logit is the row's largest (so correct sums to the masked-token accuracy).
// Unweighted launches bind one-element placeholders there and never touch them.

override WG: u32 = 256u;

var<workgroup> red: array<f32, WG>;

struct Params {
  N: u32, V: u32, tT: u32, tLd: u32,
  tOff: u32, scale: f32, rowBase: u32, weighted: u32,
}

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read_write> lseOut: array<f32>;
@group(0) @binding(3) var<storage, read_write> rowLoss: array<f32>;
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;
@group(0) @binding(6) var<storage, read> weights: array<f32>;
@group(0) @binding(7) var<storage, read_write> correct: array<f32>;

// The row's loss weight (1 when unweighted).
fn weightOf(row: u32) -> f32 {
  var w = 1.0;
  if (p.weighted != 0u) { w = weights[p.rowBase + row]; }
  return w;
}

fn workgroupReduce(lid: u32, v: f32, isMax: bool) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let o = red[lid + s];
      red[lid] = select(red[lid] + o, max(red[lid], o), isMax);
    }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn targetOf(row: u32) -> u32 {
  let n = p.rowBase + row;
  let t = targets[p.tOff + (n / p.tT) * p.tLd + n % p.tT];
  return u32(clamp(t, 0, i32(p.V) - 1));
}

// Computes the row's lse, writes lse and the row loss, and returns lse. Only thread 0 reads the target
// logit; ce_fused_inplace orders that read before the owning thread's overwrite with a storage barrier
// (workgroupBarrier orders workgroup memory only).
fn rowLse(row: u32, lid: u32, tgt: u32, w: f32) -> f32 {
  let base = row * p.V;
  var targetLogit = 0.0;
  if (lid == 0u) { targetLogit = logits[base + tgt]; }
  var m = -3.4028234e38;
  for (var v = lid; v < p.V; v += WG) { m = max(m, logits[base + v]); }
  m = workgroupReduce(lid, m, true);
  var s = 0.0;
  for (var v = lid; v < p.V; v += WG) { s += exp(logits[base + v] - m); }
  let lse = m + log(workgroupReduce(lid, s, false));
  if (lid == 0u) {
    lseOut[row] = lse;
    rowLoss[row] = select(lse - targetLogit, w * (lse - targetLogit), p.weighted != 0u);
    if (p.weighted != 0u) { correct[row] = select(0.0, w, targetLogit >= m); }
  }
  return lse;
}

@compute @workgroup_size(WG)
fn ce_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
  let row = wid.y * nwg.x + wid.x;
  if (row >= p.N) { return; }
  _ = rowLse(row, lid, targetOf(row), weightOf(row));
}

@compute @workgroup_size(WG)
fn ce_fused(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
  let row = wid.y * nwg.x + wid.x;
  if (row >= p.N) { return; }
  let tgt = targetOf(row);
  let w = weightOf(row);
  let lse = rowLse(row, lid, tgt, w);
  let base = row * p.V;
  let scale = p.scale * w;
  for (var v = lid; v < p.V; v += WG) {
    let g = exp(logits[base + v] - lse) * scale;
    dlogits[base + v] = select(g, g - scale, v == tgt);
  }
}

@compute @workgroup_size(WG)
fn ce_fused_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
  let row = wid.y * nwg.x + wid.x;
  if (row >= p.N) { return; }
  let tgt = targetOf(row);
  let w = weightOf(row);
  let lse = rowLse(row, lid, tgt, w);
  let base = row * p.V;
  let scale = p.scale * w;
  // Thread 0's read of the target logit (in rowLse) happens before any thread overwrites the row.
  storageBarrier();
  // Each thread overwrites only the elements it read itself.
  for (var v = lid; v < p.V; v += WG) {
    let g = exp(logits[base + v] - lse) * scale;
    logits[base + v] = select(g, g - scale, v == tgt);
  }
}
