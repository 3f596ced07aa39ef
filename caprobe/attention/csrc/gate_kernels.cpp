// One-pass CPU kernels for the map-sized steps of CBAM and of the channel gates (SE, ECA) on
// channels-last maps.
//
// A channel gate: out = x * gc (gc = gate(mean_hw x), N x C). Eager autograd's backward forms
// dy * x as a map to reduce it, dy * gc as another, then adds the mean's expanded gradient
// into a third; channel_gate_grad (read dy, x) and channel_input_grad (read dy, write dx) do
// it in two passes.
//
// CBAM: y1 = x * gc (gc = sigma(MLP(mean_hw x) + MLP(max_hw x)), N x C), s = [max_c y1,
// mean_c y1] (N x 2 x H x W), gs = sigma(BN(conv(s))) (N x 1 x H x W), out = y1 * gs. The
// MLP stays in PyTorch; the spatial gate (k x k conv, BN, gate) runs here in training
// (cbam_spatial_gate_forward/backward); the map kernels never write y1:
//   forward:  cbam_channel_pool (read x), cbam_spatial_pool (read x), cbam_product (read x,
//             write out);
//   backward: cbam_product_grads (read dy, x: dgs and gc's gradient through the product),
//             cbam_spatial_pool_grad (read x: gc's gradient through s), cbam_input_grad (read
//             dy, write dx: the input's whole gradient).
// Maps are the NHWC views of channels-last tensors (contiguous); gc, the pooled vectors and
// their gradients are N x C; gs and dgs N x H x W (an N x 1 x H x W tensor); s and ds
// N x 2 x H x W, planar (the max, then the mean): the spatial gate's k x k conv below runs
// along its rows. A max's gradient goes to its first arg-max,
// as torch.max and max_pool2d route it. Sums over positions run one sample per task, in a
// fixed order; everything else is per row of the map: no result depends on the thread count.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace caprobe_kernels {

namespace {

void check_like(const Tensor& t, const Tensor& x, std::vector<int64_t> shape, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == x.scalar_type() &&
              t.sizes() == at::IntArrayRef(shape), name, " must be a contiguous ",
              x.scalar_type(), " tensor of shape ", at::IntArrayRef(shape));
}

void check_index(const Tensor& t, std::vector<int64_t> shape, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == at::kLong &&
              t.sizes() == at::IntArrayRef(shape), name, " must be a contiguous int64 tensor "
              "of shape ", at::IntArrayRef(shape));
}

// Channels are reduced in kLanes lanes (one AVX-512 vector of float32, two of AVX2).
constexpr int kLanes = 16;

}  // namespace

// mean and max over H and W (N x C each) and the position (i * W + j) of each max.
std::vector<Tensor> cbam_channel_pool(const Tensor& x) {
  check_map(x, "x");
  const int64_t n = x.size(0), hw = x.size(1) * x.size(2), c = x.size(3);
  TORCH_CHECK(hw >= 1, "x must have a position");
  Tensor mean = at::empty({n, c}, x.options());
  Tensor peak = at::empty({n, c}, x.options());
  Tensor index = at::empty({n, c}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_channel_pool", [&] {
    const scalar_t* __restrict__ xp = x.data_ptr<scalar_t>();
    scalar_t* __restrict__ mp = mean.data_ptr<scalar_t>();
    scalar_t* __restrict__ pp = peak.data_ptr<scalar_t>();
    int64_t* __restrict__ ip = index.data_ptr<int64_t>();
    const scalar_t inv = scalar_t(1) / scalar_t(hw);
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        const scalar_t* xs = xp + s * hw * c;
        scalar_t* m = mp + s * c;
        scalar_t* p = pp + s * c;
        int64_t* id = ip + s * c;
        std::copy(xs, xs + c, m);
        std::copy(xs, xs + c, p);
        std::fill(id, id + c, int64_t(0));
        for (int64_t q = 1; q < hw; ++q) {
          const scalar_t* v = xs + q * c;
          _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) {
            m[k] += v[k];
            // torch.max: the first maximum wins; a NaN wins over any number
            const bool take = v[k] > p[k] || (std::isnan(v[k]) && !std::isnan(p[k]));
            p[k] = take ? v[k] : p[k];
            id[k] = take ? q : id[k];
          }
        }
        _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) m[k] *= inv;
      }
    });
  });
  return {mean, peak, index};
}

// s = [max over C, mean over C] of x * gc (N x 2 x H x W) and the channel of each max
// (N x H x W), without writing x * gc.
std::vector<Tensor> cbam_spatial_pool(const Tensor& x, const Tensor& gc) {
  check_map(x, "x");
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3), hw = h * w;
  check_like(gc, x, {n, c}, "gc");
  Tensor s = at::empty({n, 2, h, w}, x.options());
  Tensor index = at::empty({n, h, w}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_spatial_pool", [&] {
    const scalar_t* __restrict__ xp = x.data_ptr<scalar_t>();
    const scalar_t* __restrict__ gp = gc.data_ptr<scalar_t>();
    scalar_t* __restrict__ sp = s.data_ptr<scalar_t>();
    int64_t* __restrict__ ip = index.data_ptr<int64_t>();
    const scalar_t inv = scalar_t(1) / scalar_t(c);
    at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {  // r = sample * h + row
        const int64_t smp = r / h;
        const scalar_t* g = gp + smp * c;
        for (int64_t j = 0; j < w; ++j) {
          const int64_t q = (r % h) * w + j;
          const scalar_t* v = xp + (r * w + j) * c;
          // lane-wise running sums and first maxima over channels k = l, l + kLanes, ...:
          // vector code without a horizontal step per channel
          scalar_t sum_l[kLanes] = {}, top_l[kLanes];
          int32_t arg_l[kLanes] = {};
          std::fill(top_l, top_l + kLanes, -std::numeric_limits<scalar_t>::infinity());
          for (int32_t k = 0; k < c; k += kLanes) {
            const int32_t lanes = std::min<int32_t>(kLanes, c - k);
            _Pragma("omp simd") for (int32_t l = 0; l < lanes; ++l) {
              const scalar_t y = v[k + l] * g[k + l];
              sum_l[l] += y;
              const bool take = y > top_l[l];
              top_l[l] = take ? y : top_l[l];
              arg_l[l] = take ? k + l : arg_l[l];
            }
          }
          scalar_t sum = 0, top = top_l[0];
          _Pragma("omp simd reduction(+:sum) reduction(max:top)")
          for (int32_t l = 0; l < kLanes; ++l) { sum += sum_l[l]; top = std::max(top, top_l[l]); }
          int32_t arg = std::numeric_limits<int32_t>::max();  // the first channel at the max
          _Pragma("omp simd reduction(min:arg)")
          for (int32_t l = 0; l < kLanes; ++l)
            arg = std::min(arg, top_l[l] == top ? arg_l[l] : std::numeric_limits<int32_t>::max());
          if (arg >= c) arg = 0;  // every product -inf
          sp[smp * 2 * hw + q] = top;
          sp[(smp * 2 + 1) * hw + q] = sum * inv;
          ip[smp * hw + q] = arg;
        }
      }
    });
  });
  return {s, index};
}

// out = x * gc * gs, multiplied in that order (as the eager module does).
Tensor cbam_product(const Tensor& x, const Tensor& gc, const Tensor& gs) {
  check_map(x, "x");
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  check_like(gc, x, {n, c}, "gc");
  check_like(gs, x, {n, 1, h, w}, "gs");
  Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_product", [&] {
    const scalar_t* __restrict__ xp = x.data_ptr<scalar_t>();
    const scalar_t* __restrict__ gp = gc.data_ptr<scalar_t>();
    const scalar_t* __restrict__ sp = gs.data_ptr<scalar_t>();
    scalar_t* __restrict__ op = out.data_ptr<scalar_t>();
    at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* g = gp + (r / h) * c;
        for (int64_t j = 0; j < w; ++j) {
          const int64_t off = (r * w + j) * c;
          const scalar_t t = sp[r * w + j];
          _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) op[off + k] = xp[off + k] * g[k] * t;
        }
      }
    });
  });
  return out;
}

// Through out = x * gc * gs: dgs = sum over C of dy * x * gc (N x 1 x H x W) and gc's share
// sum over H, W of dy * x * gs (N x C), in one read of dy and x.
std::vector<Tensor> cbam_product_grads(const Tensor& dy, const Tensor& x, const Tensor& gc,
                                       const Tensor& gs) {
  check_map(dy, "dy");
  check_map(x, "x");
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
              "dy must match x");
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3), hw = h * w;
  check_like(gc, x, {n, c}, "gc");
  check_like(gs, x, {n, 1, h, w}, "gs");
  Tensor dgs = at::empty({n, 1, h, w}, x.options());
  Tensor dgc = at::empty({n, c}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_product_grads", [&] {
    const scalar_t* __restrict__ dp = dy.data_ptr<scalar_t>();
    const scalar_t* __restrict__ xp = x.data_ptr<scalar_t>();
    const scalar_t* __restrict__ gp = gc.data_ptr<scalar_t>();
    const scalar_t* __restrict__ sp = gs.data_ptr<scalar_t>();
    scalar_t* __restrict__ dsp = dgs.data_ptr<scalar_t>();
    scalar_t* __restrict__ dcp = dgc.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t smp = begin; smp < end; ++smp) {
        const scalar_t* g = gp + smp * c;
        scalar_t* acc = dcp + smp * c;
        std::fill(acc, acc + c, scalar_t(0));
        for (int64_t q = 0; q < hw; ++q) {
          const int64_t off = (smp * hw + q) * c;
          const scalar_t t = sp[smp * hw + q];
          scalar_t sum_l[kLanes] = {};  // lane-wise, as in cbam_spatial_pool
          int64_t k = 0;
          for (; k + kLanes <= c; k += kLanes) {
            _Pragma("omp simd") for (int l = 0; l < kLanes; ++l) {
              const scalar_t p = dp[off + k + l] * xp[off + k + l];
              sum_l[l] += p * g[k + l];
              acc[k + l] += p * t;
            }
          }
          for (int l = 0; k + l < c; ++l) {
            const scalar_t p = dp[off + k + l] * xp[off + k + l];
            sum_l[l] += p * g[k + l];
            acc[k + l] += p * t;
          }
          scalar_t sum = 0;
          for (int l = 0; l < kLanes; ++l) sum += sum_l[l];
          dsp[smp * hw + q] = sum;
        }
      }
    });
  });
  return {dgs, dgc};
}

// gc's share through s = [max_c x * gc, mean_c x * gc]: sum over H, W of x * ds_mean / C,
// plus x * ds_max at each position's arg-max channel (N x C), in one read of x.
Tensor cbam_spatial_pool_grad(const Tensor& x, const Tensor& ds, const Tensor& index_s) {
  check_map(x, "x");
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3), hw = h * w;
  check_like(ds, x, {n, 2, h, w}, "ds");
  check_index(index_s, {n, h, w}, "index_s");
  Tensor dgc = at::empty({n, c}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_spatial_pool_grad", [&] {
    const scalar_t* __restrict__ xp = x.data_ptr<scalar_t>();
    const scalar_t* __restrict__ dsp = ds.data_ptr<scalar_t>();
    const int64_t* __restrict__ ip = index_s.data_ptr<int64_t>();
    scalar_t* __restrict__ dcp = dgc.data_ptr<scalar_t>();
    const scalar_t inv = scalar_t(1) / scalar_t(c);
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t smp = begin; smp < end; ++smp) {
        const scalar_t* dmax = dsp + smp * 2 * hw;
        const scalar_t* dmean = dmax + hw;
        scalar_t* acc = dcp + smp * c;
        std::fill(acc, acc + c, scalar_t(0));
        for (int64_t q = 0; q < hw; ++q) {
          const scalar_t* v = xp + (smp * hw + q) * c;
          const scalar_t t = dmean[q] * inv;
          _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) acc[k] += v[k] * t;
          const int64_t arg = ip[smp * hw + q];
          acc[arg] += v[arg] * dmax[q];
        }
      }
    });
  });
  return dgc;
}

// The input's whole gradient: with dy1 = dy * gs + ds_mean / C (+ ds_max at each position's
// arg-max channel), dx = dy1 * gc + dmean / (H W) (+ dmax at each channel's arg-max
// position); one read of dy, one write of dx.
Tensor cbam_input_grad(const Tensor& dy, const Tensor& gs, const Tensor& gc, const Tensor& ds,
                       const Tensor& index_s, const Tensor& dmean, const Tensor& dmax,
                       const Tensor& index_c) {
  check_map(dy, "dy");
  const int64_t n = dy.size(0), h = dy.size(1), w = dy.size(2), c = dy.size(3), hw = h * w;
  check_like(gs, dy, {n, 1, h, w}, "gs");
  check_like(gc, dy, {n, c}, "gc");
  check_like(ds, dy, {n, 2, h, w}, "ds");
  check_index(index_s, {n, h, w}, "index_s");
  check_like(dmean, dy, {n, c}, "dmean");
  check_like(dmax, dy, {n, c}, "dmax");
  check_index(index_c, {n, c}, "index_c");
  Tensor dx = at::empty_like(dy);
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "cbam_input_grad", [&] {
    const scalar_t* __restrict__ dp = dy.data_ptr<scalar_t>();
    const scalar_t* __restrict__ sp = gs.data_ptr<scalar_t>();
    const scalar_t* __restrict__ gp = gc.data_ptr<scalar_t>();
    const scalar_t* __restrict__ dsp = ds.data_ptr<scalar_t>();
    const int64_t* __restrict__ isp = index_s.data_ptr<int64_t>();
    const scalar_t* __restrict__ dmp = dmean.data_ptr<scalar_t>();
    const scalar_t* __restrict__ dxp = dmax.data_ptr<scalar_t>();
    const int64_t* __restrict__ icp = index_c.data_ptr<int64_t>();
    scalar_t* __restrict__ op = dx.data_ptr<scalar_t>();
    const scalar_t inv_c = scalar_t(1) / scalar_t(c), inv_hw = scalar_t(1) / scalar_t(hw);
    at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t smp = r / h;
        const scalar_t* g = gp + smp * c;
        const scalar_t* dm = dmp + smp * c;
        for (int64_t j = 0; j < w; ++j) {
          const int64_t q = (r % h) * w + j, off = (r * w + j) * c;
          const scalar_t t = sp[smp * hw + q];
          const scalar_t e = dsp[(smp * 2 + 1) * hw + q] * inv_c;
          _Pragma("omp simd") for (int64_t k = 0; k < c; ++k)
            op[off + k] = (dp[off + k] * t + e) * g[k] + dm[k] * inv_hw;
          const int64_t arg = isp[smp * hw + q];
          op[off + arg] += dsp[smp * 2 * hw + q] * g[arg];
        }
      }
    });
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t smp = begin; smp < end; ++smp)
        for (int64_t k = 0; k < c; ++k)
          op[(smp * hw + icp[smp * c + k]) * c + k] += dxp[smp * c + k];
    });
  });
  return dx;
}

// CBAM's spatial gate in training, forward: t = the k x k conv (weight 1 x 2 x k x k, zero
// padding k / 2, no bias) of the planar descriptor s (N x 2 x H x W), BN on batch statistics
// (over N, H, W), the gate (0 sigmoid, 1 hsigmoid): {gs (N x 1 x H x W), t (N x H x W),
// mean, invstd, var (biased)}. The conv runs per output row (vector code along the row), the
// statistics in one fixed order: nothing depends on the thread count.
std::vector<Tensor> cbam_spatial_gate_forward(const Tensor& s, const Tensor& w,
                                              const Tensor& bn_w, const Tensor& bn_b,
                                              double eps, int64_t gate) {
  TORCH_CHECK(s.dim() == 4 && s.size(1) == 2 && s.is_contiguous(),
              "s must be a contiguous N x 2 x H x W descriptor");
  const int64_t n = s.size(0), h = s.size(2), wd = s.size(3), hw = h * wd;
  TORCH_CHECK(n * hw >= 2, "batch statistics need two positions or more");
  TORCH_CHECK(w.dim() == 4 && w.size(0) == 1 && w.size(1) == 2 && w.size(2) == w.size(3) &&
              w.size(2) % 2 == 1 && w.is_contiguous() && w.scalar_type() == s.scalar_type(),
              "w must be a contiguous 1 x 2 x k x k weight of s's dtype, k odd");
  for (const Tensor* p : {&bn_w, &bn_b})
    TORCH_CHECK(p->numel() == 1 && p->scalar_type() == s.scalar_type(),
                "BN's weight and bias must be one value of s's dtype");
  const int64_t k = w.size(2), pad = k / 2;
  Tensor t = at::empty({n, h, wd}, s.options());
  Tensor gs = at::empty({n, 1, h, wd}, s.options());
  Tensor mean = at::empty({1}, s.options()), invstd = at::empty({1}, s.options());
  Tensor var = at::empty({1}, s.options());
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "cbam_spatial_gate_forward", [&] {
    const scalar_t* __restrict__ sp = s.data_ptr<scalar_t>();
    const scalar_t* __restrict__ wp = w.data_ptr<scalar_t>();
    scalar_t* __restrict__ tp = t.data_ptr<scalar_t>();
    at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t smp = r / h, i = r % h;
        scalar_t* tr = tp + r * wd;
        std::fill(tr, tr + wd, scalar_t(0));
        for (int64_t c = 0; c < 2; ++c) {
          for (int64_t a = 0; a < k; ++a) {
            const int64_t ii = i + a - pad;
            if (ii < 0 || ii >= h) continue;
            const scalar_t* srow = sp + ((smp * 2 + c) * h + ii) * wd;
            for (int64_t b = 0; b < k; ++b) {
              const int64_t off = b - pad;
              const scalar_t wv = wp[(c * k + a) * k + b];
              const int64_t j0 = std::max<int64_t>(0, -off), j1 = std::min(wd, wd - off);
              _Pragma("omp simd") for (int64_t j = j0; j < j1; ++j) tr[j] += wv * srow[j + off];
            }
          }
        }
      }
    });
    const int64_t count = n * hw;
    scalar_t sum = 0;
    for (int64_t q = 0; q < count; ++q) sum += tp[q];
    const scalar_t m = sum / scalar_t(count);
    scalar_t sq = 0;
    for (int64_t q = 0; q < count; ++q) { const scalar_t d = tp[q] - m; sq += d * d; }
    const scalar_t v = sq / scalar_t(count), is = scalar_t(1) / std::sqrt(v + scalar_t(eps));
    mean.data_ptr<scalar_t>()[0] = m;
    var.data_ptr<scalar_t>()[0] = v;
    invstd.data_ptr<scalar_t>()[0] = is;
    const scalar_t scale = is * bn_w.data_ptr<scalar_t>()[0], shift = bn_b.data_ptr<scalar_t>()[0];
    scalar_t* __restrict__ gp = gs.data_ptr<scalar_t>();
    _Pragma("omp simd") for (int64_t q = 0; q < count; ++q) gp[q] = (tp[q] - m) * scale + shift;
  });
  if (gate == 0) gs.sigmoid_(); else at::hardsigmoid_(gs);  // ATen's, as the module's
  return {gs, t, mean, invstd, var};
}

// Its backward: {ds (N x 2 x H x W), dw (1 x 2 x k x k), dbn_w, dbn_b}. The gate's derivative
// comes from its output (hsigmoid: 1/6 strictly inside (0, 1)). ds per row of the
// descriptor, dw as per-sample partial sums added in order.
std::vector<Tensor> cbam_spatial_gate_backward(const Tensor& dgs, const Tensor& gs,
                                               const Tensor& s, const Tensor& t, const Tensor& w,
                                               const Tensor& mean, const Tensor& invstd,
                                               const Tensor& bn_w, int64_t gate) {
  TORCH_CHECK(s.dim() == 4 && s.size(1) == 2 && s.is_contiguous(),
              "s must be a contiguous N x 2 x H x W descriptor");
  const int64_t n = s.size(0), h = s.size(2), wd = s.size(3), hw = h * wd, count = n * hw;
  check_like(dgs, s, {n, 1, h, wd}, "dgs");
  check_like(gs, s, {n, 1, h, wd}, "gs");
  check_like(t, s, {n, h, wd}, "t");
  const int64_t k = w.size(2), pad = k / 2;
  check_like(w, s, {1, 2, k, k}, "w");
  Tensor dt = at::empty({n, h, wd}, s.options());
  Tensor ds = at::empty_like(s);
  Tensor part_w = at::empty({n, 2 * k * k}, s.options());
  Tensor dw = at::zeros_like(w);
  Tensor dbn_w = at::empty({1}, s.options()), dbn_b = at::empty({1}, s.options());
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "cbam_spatial_gate_backward", [&] {
    const scalar_t* __restrict__ dgp = dgs.data_ptr<scalar_t>();
    const scalar_t* __restrict__ gp = gs.data_ptr<scalar_t>();
    const scalar_t* __restrict__ sp = s.data_ptr<scalar_t>();
    const scalar_t* __restrict__ tp = t.data_ptr<scalar_t>();
    const scalar_t* __restrict__ wp = w.data_ptr<scalar_t>();
    scalar_t* __restrict__ dtp = dt.data_ptr<scalar_t>();
    const scalar_t m = mean.data_ptr<scalar_t>()[0], is = invstd.data_ptr<scalar_t>()[0];
    const scalar_t gamma = bn_w.data_ptr<scalar_t>()[0];
    // through the gate and BN (batch statistics): N*H*W values, one fixed order
    if (gate == 0) {
      _Pragma("omp simd") for (int64_t q = 0; q < count; ++q)
        dtp[q] = dgp[q] * gp[q] * (scalar_t(1) - gp[q]);
    } else {
      _Pragma("omp simd") for (int64_t q = 0; q < count; ++q)
        dtp[q] = (gp[q] > scalar_t(0) && gp[q] < scalar_t(1)) ? dgp[q] / scalar_t(6) : scalar_t(0);
    }
    scalar_t sum_du = 0, sum_du_xhat = 0;
    for (int64_t q = 0; q < count; ++q) {
      sum_du += dtp[q];
      sum_du_xhat += dtp[q] * (tp[q] - m) * is;
    }
    dbn_w.data_ptr<scalar_t>()[0] = sum_du_xhat;
    dbn_b.data_ptr<scalar_t>()[0] = sum_du;
    const scalar_t mean_du = sum_du / scalar_t(count), mean_du_xhat = sum_du_xhat / scalar_t(count);
    _Pragma("omp simd") for (int64_t q = 0; q < count; ++q)
      dtp[q] = gamma * is * (dtp[q] - mean_du - (tp[q] - m) * is * mean_du_xhat);
    // through the conv: the descriptor's gradient, a row at a time
    scalar_t* __restrict__ dsp = ds.data_ptr<scalar_t>();
    at::parallel_for(0, n * 2 * h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {  // r = (sample * 2 + channel) * h + row
        const int64_t ii = r % h, c = (r / h) % 2, smp = r / (2 * h);
        scalar_t* dsr = dsp + r * wd;
        std::fill(dsr, dsr + wd, scalar_t(0));
        for (int64_t a = 0; a < k; ++a) {
          const int64_t i = ii - a + pad;
          if (i < 0 || i >= h) continue;
          const scalar_t* dtr = dtp + (smp * h + i) * wd;
          for (int64_t b = 0; b < k; ++b) {
            const int64_t off = b - pad;  // s[ii][j + off] fed t[i][j]
            const scalar_t wv = wp[(c * k + a) * k + b];
            const int64_t j0 = std::max<int64_t>(0, off), j1 = std::min(wd, wd + off);
            _Pragma("omp simd") for (int64_t jj = j0; jj < j1; ++jj) dsr[jj] += wv * dtr[jj - off];
          }
        }
      }
    });
    // and the conv's weight: per-sample partial sums, added in order
    scalar_t* __restrict__ pp = part_w.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      // per (c, a): one row of partial sums per tap column b, summed once at the end (vector
      // code along the rows, no horizontal step per row)
      std::vector<scalar_t> rows(k * wd);
      for (int64_t smp = begin; smp < end; ++smp) {
        for (int64_t c = 0; c < 2; ++c)
          for (int64_t a = 0; a < k; ++a) {
            std::fill(rows.begin(), rows.end(), scalar_t(0));
            for (int64_t i = 0; i < h; ++i) {
              const int64_t ii = i + a - pad;
              if (ii < 0 || ii >= h) continue;
              const scalar_t* srow = sp + ((smp * 2 + c) * h + ii) * wd;
              const scalar_t* dtr = dtp + (smp * h + i) * wd;
              for (int64_t b = 0; b < k; ++b) {
                const int64_t off = b - pad;
                const int64_t j0 = std::max<int64_t>(0, -off), j1 = std::min(wd, wd - off);
                scalar_t* acc = rows.data() + b * wd;
                _Pragma("omp simd") for (int64_t j = j0; j < j1; ++j) acc[j] += dtr[j] * srow[j + off];
              }
            }
            for (int64_t b = 0; b < k; ++b) {
              scalar_t sum = 0;
              for (int64_t j = 0; j < wd; ++j) sum += rows[b * wd + j];
              pp[smp * 2 * k * k + (c * k + a) * k + b] = sum;
            }
          }
      }
    });
    scalar_t* __restrict__ dwp = dw.data_ptr<scalar_t>();
    for (int64_t smp = 0; smp < n; ++smp)
      for (int64_t q = 0; q < 2 * k * k; ++q) dwp[q] += pp[smp * 2 * k * k + q];
  });
  return {ds, dw, dbn_w, dbn_b};
}

// A channel gate's gradient: sum over H, W of dy * x (N x C), one read of dy and x.
Tensor channel_gate_grad(const Tensor& dy, const Tensor& x) {
  check_map(dy, "dy");
  check_map(x, "x");
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
              "dy must match x");
  const int64_t n = x.size(0), hw = x.size(1) * x.size(2), c = x.size(3);
  Tensor dgc = at::empty({n, c}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_gate_grad", [&] {
    const scalar_t* __restrict__ dp = dy.data_ptr<scalar_t>();
    const scalar_t* __restrict__ xp = x.data_ptr<scalar_t>();
    scalar_t* __restrict__ gp = dgc.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t smp = begin; smp < end; ++smp) {
        scalar_t* acc = gp + smp * c;
        std::fill(acc, acc + c, scalar_t(0));
        for (int64_t q = 0; q < hw; ++q) {
          const int64_t off = (smp * hw + q) * c;
          _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) acc[k] += dp[off + k] * xp[off + k];
        }
      }
    });
  });
  return dgc;
}

// A channel gate's input gradient: dx = dy * gc + dmean / (H W), one read of dy, one write.
Tensor channel_input_grad(const Tensor& dy, const Tensor& gc, const Tensor& dmean) {
  check_map(dy, "dy");
  const int64_t n = dy.size(0), h = dy.size(1), w = dy.size(2), c = dy.size(3);
  check_like(gc, dy, {n, c}, "gc");
  check_like(dmean, dy, {n, c}, "dmean");
  Tensor dx = at::empty_like(dy);
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "channel_input_grad", [&] {
    const scalar_t* __restrict__ dp = dy.data_ptr<scalar_t>();
    const scalar_t* __restrict__ gp = gc.data_ptr<scalar_t>();
    const scalar_t* __restrict__ mp = dmean.data_ptr<scalar_t>();
    scalar_t* __restrict__ op = dx.data_ptr<scalar_t>();
    const scalar_t inv_hw = scalar_t(1) / scalar_t(h * w);
    at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* g = gp + (r / h) * c;
        const scalar_t* m = mp + (r / h) * c;
        for (int64_t j = 0; j < w; ++j) {
          const int64_t off = (r * w + j) * c;
          _Pragma("omp simd") for (int64_t k = 0; k < c; ++k)
            op[off + k] = dp[off + k] * g[k] + m[k] * inv_hw;
        }
      }
    });
  });
  return dx;
}

}  // namespace caprobe_kernels
