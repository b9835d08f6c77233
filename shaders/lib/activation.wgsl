// FFN activation math shared by shaders that `// #include "lib/activation"` (activation.wgsl's elementwise
// kernels and grouped_gemm.wgsl's fused expert epilogues), so both compute bit-identical values.

// Written so exp never overflows: for g < 0 use e^g / (1 + e^g).
fn sigmoid(g: f32) -> f32 {
  let e = exp(-abs(g));
  return select(e / (1.0 + e), 1.0 / (1.0 + e), g >= 0.0);
}

const GELU_C: f32 = 0.7978845608028654; // sqrt(2 / pi)

// GELU through 0.5 (1 + tanh z) = sigmoid(2z) and 0.5 (1 - tanh^2 z) = 2 sigmoid(2z) (1 - sigmoid(2z)):
// in the negative tail 1 + tanh z cancels to 0 in f32 while sigmoid keeps its relative precision, and
// no tanh of a large argument (NaN on some drivers) is ever taken.
fn geluGate(x: f32) -> f32 {
  return sigmoid(2.0 * GELU_C * (x + 0.044715 * x * x * x));
}

fn gelu(x: f32) -> f32 { return x * geluGate(x); }

// d/dx [x s(2z)] = s + 2 x s (1 - s) dz/dx
fn geluGrad(x: f32) -> f32 {
  let s = geluGate(x);
  let dInner = GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
  return s + 2.0 * x * s * (1.0 - s) * dInner;
}

// SwiGLU h = silu(g) * u and its gradients: dg = dh * u * s * (1 + g (1 - s)), du = dh * silu(g).
fn swiglu(g: f32, u: f32) -> f32 { return g * sigmoid(g) * u; }

fn swigluDGate(dh: f32, g: f32, u: f32) -> f32 {
  let s = sigmoid(g);
  return dh * u * s * (1.0 + g * (1.0 - s));
}

fn swigluDUp(dh: f32, g: f32) -> f32 { return dh * g * sigmoid(g); }
