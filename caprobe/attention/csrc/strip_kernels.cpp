// One-pass CPU kernels for Coordinate Attention's map-sized steps on channels-last maps.
//
// Every map here is the NHWC view of a channels-last N x C x H x W tensor (contiguous), every
// strip an N x H x C or N x W x C tensor (contiguous). Each kernel reads and writes the map
// once, channels innermost (vectorised). Reductions run one sample per task
// (at::parallel_for over N) in a fixed order, so they do not depend on the thread count.
#include "kernels.h"

#include <algorithm>
#include <cmath>

namespace caprobe_kernels {

// The means over W (N x H x C) and over H (N x W x C) of an NHWC map, written as the rows of
// one (N*H + N*W) x C tensor (rows first, then columns); either part may be left out. With
// ``clamp6``, the block's ReLU6 before the attention in the same pass: x is clamped to [0, 6]
// in place and the means are those of the clamped map.
Tensor strip_means(const Tensor& x, bool rows, bool cols, bool clamp6) {
  check_map(x, "x");
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  const int64_t row_len = rows ? n * h : 0, col_len = cols ? n * w : 0;
  Tensor out = at::empty({row_len + col_len, c}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "strip_means", [&] {
    scalar_t* __restrict__ xp = x.data_ptr<scalar_t>();
    scalar_t* __restrict__ zh = out.data_ptr<scalar_t>();
    scalar_t* zw = zh + row_len * c;
    const scalar_t inv_w = scalar_t(1) / scalar_t(w), inv_h = scalar_t(1) / scalar_t(h);
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        scalar_t* xs = xp + s * h * w * c;
        scalar_t* col = cols ? zw + s * w * c : nullptr;
        if (cols) std::fill(col, col + w * c, scalar_t(0));
        for (int64_t i = 0; i < h; ++i) {
          scalar_t* xr = xs + i * w * c;
          scalar_t* row = rows ? zh + (s * h + i) * c : nullptr;
          if (rows) std::fill(row, row + c, scalar_t(0));
          for (int64_t j = 0; j < w; ++j) {
            scalar_t* v = xr + j * c;
            if (clamp6) _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) {
              const scalar_t t = v[k];  // torch.clamp's rule: NaN stays NaN
              v[k] = t < scalar_t(0) ? scalar_t(0) : (t > scalar_t(6) ? scalar_t(6) : t);
            }
            if (rows) _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) row[k] += v[k];
            if (cols) { scalar_t* cj = col + j * c; _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) cj[k] += v[k]; }
          }
          if (rows) _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) row[k] *= inv_w;
        }
        if (cols) for (int64_t k = 0; k < w * c; ++k) col[k] *= inv_h;
      }
    });
  });
  return out;
}

// out = a * gh * gw [+ eh * eh_scale] [+ ew * ew_scale], written into the NHWC map ``out``
// (a: an NHWC map; gh, eh: N x H x C strips, broadcast over W; gw, ew: N x W x C, broadcast
// over H; one gate may be absent). The gate product (a = x) and the input's whole gradient
// (a = dy, eh = dz^h with scale 1 / W, ew = dz^w with scale 1 / H) are each one pass. With
// ``relu6_out`` (the NHWC output of the ReLU6 fused into strip_means), the sum is the
// gradient at the ReLU6's output and ``out`` the one at its input: kept where 0 < relu6_out
// < 6, zero elsewhere (hardtanh_backward's rule, read from the output).
void combine_into(Tensor out, const Tensor& a, const c10::optional<Tensor>& gh,
                  const c10::optional<Tensor>& gw, const c10::optional<Tensor>& eh,
                  const c10::optional<Tensor>& ew, double eh_scale, double ew_scale,
                  const c10::optional<Tensor>& relu6_out) {
  check_map(out, "out");
  const int64_t n = out.size(0), h = out.size(1), w = out.size(2), c = out.size(3);
  check_map(a, "a");
  TORCH_CHECK(a.sizes() == out.sizes() && a.scalar_type() == out.scalar_type(),
              "a must match out");
  TORCH_CHECK(gh || gw, "combine_into needs a gate");
  if (gh) check_strip(*gh, n, h, c, "gh");
  if (gw) check_strip(*gw, n, w, c, "gw");
  if (eh) check_strip(*eh, n, h, c, "eh");
  if (ew) check_strip(*ew, n, w, c, "ew");
  if (relu6_out) {
    check_map(*relu6_out, "relu6_out");
    TORCH_CHECK(relu6_out->sizes() == out.sizes() && relu6_out->scalar_type() == out.scalar_type(),
                "relu6_out must match out");
  }
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "combine_into", [&] {
    const scalar_t* __restrict__ mp = relu6_out ? relu6_out->data_ptr<scalar_t>() : nullptr;
    const scalar_t* __restrict__ ap = a.data_ptr<scalar_t>();
    const scalar_t* __restrict__ ghp = gh ? gh->data_ptr<scalar_t>() : nullptr;
    const scalar_t* __restrict__ gwp = gw ? gw->data_ptr<scalar_t>() : nullptr;
    const scalar_t* __restrict__ ehp = eh ? eh->data_ptr<scalar_t>() : nullptr;
    const scalar_t* __restrict__ ewp = ew ? ew->data_ptr<scalar_t>() : nullptr;
    scalar_t* __restrict__ op = out.data_ptr<scalar_t>();
    const scalar_t sh = scalar_t(eh_scale), sw = scalar_t(ew_scale);
    at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {  // r = s * h + i: one row of the map
        const int64_t s = r / h;
        const scalar_t* gr = ghp ? ghp + r * c : nullptr;
        const scalar_t* er = ehp ? ehp + r * c : nullptr;
        for (int64_t j = 0; j < w; ++j) {
          const int64_t off = (r * w + j) * c;
          const scalar_t* gc = gwp ? gwp + (s * w + j) * c : nullptr;
          const scalar_t* ec = ewp ? ewp + (s * w + j) * c : nullptr;
          scalar_t* o = op + off;
          const scalar_t* av = ap + off;
          if (gr && gc) _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) o[k] = av[k] * gr[k] * gc[k];
          else if (gr) _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) o[k] = av[k] * gr[k];
          else _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) o[k] = av[k] * gc[k];
          if (er) _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) o[k] += er[k] * sh;
          if (ec) _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) o[k] += ec[k] * sw;
          if (mp) {
            const scalar_t* m = mp + off;
            _Pragma("omp simd") for (int64_t k = 0; k < c; ++k)
              o[k] = (m[k] > scalar_t(0) && m[k] < scalar_t(6)) ? o[k] : scalar_t(0);
          }
        }
      }
    });
  });
}

// The gates' gradients of y = x * gh * gw (either gate may be absent): dgh = sum over W of
// dy * x * gw (N x H x C), dgw = sum over H of dy * x * gh (N x W x C), as the rows of one
// (N*H + N*W) x C tensor (dgh's first), like the gates; one pass over dy and x. With
// ``means``, also x's strip means of the strips that have a gate, in strip_means' layout and
// bit-identical to it (same sums in the same order): the gates' backward then needs no saved
// copy of them.
std::vector<Tensor> gate_grads(const Tensor& dy, const Tensor& x, const c10::optional<Tensor>& gh,
                               const c10::optional<Tensor>& gw, bool means) {
  check_map(dy, "dy");
  check_map(x, "x");
  TORCH_CHECK(dy.sizes() == x.sizes(), "dy and x must have one shape");
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  if (gh) check_strip(*gh, n, h, c, "gh");
  if (gw) check_strip(*gw, n, w, c, "gw");
  const bool want_h = gh.has_value(), want_w = gw.has_value();
  TORCH_CHECK(want_h || want_w, "gate_grads needs a gate");
  Tensor grads = at::empty({(want_h ? n * h : 0) + (want_w ? n * w : 0), c}, x.options());
  Tensor z = means ? at::empty_like(grads) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grads", [&] {
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    const scalar_t* __restrict__ xp = x.data_ptr<scalar_t>();
    const scalar_t* ghp = want_h ? gh->data_ptr<scalar_t>() : nullptr;
    const scalar_t* gwp = want_w ? gw->data_ptr<scalar_t>() : nullptr;
    scalar_t* dghp = want_h ? grads.data_ptr<scalar_t>() : nullptr;
    scalar_t* dgwp = want_w ? grads.data_ptr<scalar_t>() + (want_h ? n * h * c : 0) : nullptr;
    scalar_t* zhp = means && want_h ? z.data_ptr<scalar_t>() : nullptr;
    scalar_t* zwp = means && want_w ? z.data_ptr<scalar_t>() + (want_h ? n * h * c : 0) : nullptr;
    const scalar_t inv_w = scalar_t(1) / scalar_t(w), inv_h = scalar_t(1) / scalar_t(h);
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        scalar_t* col = want_w ? dgwp + s * w * c : nullptr;
        if (want_w) std::fill(col, col + w * c, scalar_t(0));
        scalar_t* zcol = zwp ? zwp + s * w * c : nullptr;
        if (zcol) std::fill(zcol, zcol + w * c, scalar_t(0));
        for (int64_t i = 0; i < h; ++i) {
          const int64_t r = s * h + i;
          const scalar_t* gr = want_h ? ghp + r * c : nullptr;
          scalar_t* row = want_h ? dghp + r * c : nullptr;
          if (want_h) std::fill(row, row + c, scalar_t(0));
          scalar_t* zrow = zhp ? zhp + r * c : nullptr;
          if (zrow) std::fill(zrow, zrow + c, scalar_t(0));
          for (int64_t j = 0; j < w; ++j) {
            const int64_t off = (r * w + j) * c;
            const scalar_t* dv = dyp + off;
            const scalar_t* xv = xp + off;
            if (want_h && want_w) {
              const scalar_t* gc = gwp + (s * w + j) * c;
              scalar_t* cj = col + j * c;
              _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) {
                const scalar_t pk = dv[k] * xv[k];
                row[k] += pk * gc[k];
                cj[k] += pk * gr[k];
              }
            } else if (want_h) {
              _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) row[k] += dv[k] * xv[k];
            } else {
              scalar_t* cj = col + j * c;
              _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) cj[k] += dv[k] * xv[k];
            }
            if (zrow) _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) zrow[k] += xv[k];
            if (zcol) { scalar_t* zj = zcol + j * c; _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) zj[k] += xv[k]; }
          }
          if (zrow) _Pragma("omp simd") for (int64_t k = 0; k < c; ++k) zrow[k] *= inv_w;
        }
        if (zcol) for (int64_t k = 0; k < w * c; ++k) zcol[k] *= inv_h;
      }
    });
  });
  if (means) return {grads, z};
  return {grads};
}

// CA's gates on the strips, forward and backward, in one call each (training mode, BN on
// batch statistics). z: R x C strip means; w1: mip x C, b1: mip (F1); bn_w, bn_b: mip;
// wg: k x mip x C and bg: k x C, the gate convs' weights transposed (k = 1 or 2; with two,
// rows [0, rows_h) use the first, the H gate conv, the rest the second); act: 0 relu,
// 1 relu6, 2 hswish, 3 silu; gate: 0 sigmoid, 1 hsigmoid. Rows run in fixed blocks of
// kRowBlock and every sum over rows adds the blocks' partial sums in order, so the results do
// not depend on the thread count.
constexpr int64_t kRowBlock = 64;

template <typename T> inline T act_fwd(int act, T v) {
  switch (act) {
    case 0: return v > T(0) ? v : T(0);
    case 1: return std::min(std::max(v, T(0)), T(6));
    case 2: return v * std::min(std::max(v + T(3), T(0)), T(6)) / T(6);
    default: return v / (T(1) + std::exp(-v));
  }
}

// d act / d v, as PyTorch's backward kernels define it at the kinks
template <typename T> inline T act_grad(int act, T v) {
  switch (act) {
    case 0: return v > T(0) ? T(1) : T(0);
    case 1: return (v > T(0) && v < T(6)) ? T(1) : T(0);
    case 2: return v < T(-3) ? T(0) : (v <= T(3) ? v / T(3) + T(0.5) : T(1));
    default: { const T s = T(1) / (T(1) + std::exp(-v)); return s * (T(1) + v * (T(1) - s)); }
  }
}

std::vector<Tensor> ca_gates_forward(const Tensor& z, int64_t rows_h, const Tensor& w1,
                                     const Tensor& b1, const Tensor& bn_w, const Tensor& bn_b,
                                     double eps, const Tensor& wg, const Tensor& bg,
                                     int64_t act, int64_t gate) {
  TORCH_CHECK(z.dim() == 2 && z.is_contiguous(), "z must be a contiguous R x C matrix");
  const int64_t R = z.size(0), C = z.size(1), mip = w1.size(0);
  TORCH_CHECK(R >= 2, "batch statistics need two positions or more");
  TORCH_CHECK(w1.is_contiguous() && w1.dim() == 2 && w1.size(1) == C, "w1 must be mip x C");
  for (const Tensor* t : {&b1, &bn_w, &bn_b})
    TORCH_CHECK(t->is_contiguous() && t->numel() == mip, "F1's bias and BN's must have mip values");
  TORCH_CHECK(wg.is_contiguous() && wg.dim() == 3 && (wg.size(0) == 1 || wg.size(0) == 2) &&
              wg.size(1) == mip && wg.size(2) == C, "wg must be k x mip x C, k = 1 or 2");
  TORCH_CHECK(bg.is_contiguous() && bg.dim() == 2 && bg.size(0) == wg.size(0) && bg.size(1) == C,
              "bg must be k x C");
  TORCH_CHECK(rows_h >= 0 && rows_h <= R, "rows_h must lie in [0, R]");
  for (const Tensor* t : {&w1, &b1, &bn_w, &bn_b, &wg, &bg})
    TORCH_CHECK(t->scalar_type() == z.scalar_type(), "every input must have z's dtype");
  Tensor f = at::empty({R, mip}, z.options());   // F1's output, before BN
  Tensor a = at::empty({R, mip}, z.options());   // after BN and the activation
  Tensor mean = at::empty({mip}, z.options()), invstd = at::empty({mip}, z.options());
  Tensor var = at::empty({mip}, z.options());    // biased batch variance
  Tensor out = at::empty({R, C}, z.options());   // the gates
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "ca_gates_forward", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* w1p = w1.data_ptr<scalar_t>();
    const scalar_t* b1p = b1.data_ptr<scalar_t>();
    const scalar_t* bwp = bn_w.data_ptr<scalar_t>();
    const scalar_t* bbp = bn_b.data_ptr<scalar_t>();
    const scalar_t* wgp = wg.data_ptr<scalar_t>();
    const scalar_t* bgp = bg.data_ptr<scalar_t>();
    scalar_t* fp = f.data_ptr<scalar_t>();
    scalar_t* ap = a.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, R, kRowBlock, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* zr = zp + r * C;
        for (int64_t j = 0; j < mip; ++j) {
          const scalar_t* wj = w1p + j * C;
          scalar_t acc = 0;
          _Pragma("omp simd reduction(+:acc)") for (int64_t k = 0; k < C; ++k) acc += zr[k] * wj[k];
          fp[r * mip + j] = acc + b1p[j];
        }
      }
    });
    scalar_t* mp = mean.data_ptr<scalar_t>();
    scalar_t* ip = invstd.data_ptr<scalar_t>();
    scalar_t* vp = var.data_ptr<scalar_t>();
    for (int64_t j = 0; j < mip; ++j) {  // R x mip values: one thread, a fixed order
      scalar_t s = 0;
      for (int64_t r = 0; r < R; ++r) s += fp[r * mip + j];
      const scalar_t m = s / scalar_t(R);
      scalar_t q = 0;
      for (int64_t r = 0; r < R; ++r) { const scalar_t d = fp[r * mip + j] - m; q += d * d; }
      mp[j] = m;
      vp[j] = q / scalar_t(R);
      ip[j] = scalar_t(1) / std::sqrt(vp[j] + scalar_t(eps));
    }
    const int64_t k = wg.size(0);
    const int64_t blocks = (R + kRowBlock - 1) / kRowBlock;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> row(mip);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t begin = b * kRowBlock, end = std::min(R, begin + kRowBlock);
        for (int64_t r = begin; r < end; ++r) {
          for (int64_t j = 0; j < mip; ++j) {
            const scalar_t y = (fp[r * mip + j] - mp[j]) * ip[j] * bwp[j] + bbp[j];
            row[j] = act_fwd<scalar_t>(int(act), y);
            ap[r * mip + j] = row[j];
          }
          const int64_t g = (r < rows_h ? 0 : 1) % k;  // which gate conv
          const scalar_t* wgg = wgp + g * mip * C;  // mip x C
          const scalar_t* bgg = bgp + g * C;
          scalar_t* o = op + r * C;
          _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) o[c] = bgg[c];
          for (int64_t j = 0; j < mip; ++j) {
            const scalar_t aj = row[j];
            const scalar_t* wj = wgg + j * C;
            _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) o[c] += aj * wj[c];
          }
        }
        // ATen's vectorised gate on this block (run inline here: a fixed split into vectors
        // and a tail, whatever the thread count)
        Tensor block = out.narrow(0, begin, end - begin);
        if (gate == 0) block.sigmoid_(); else at::hardsigmoid_(block);
      }
    });
  });
  return {out, f, a, mean, invstd, var};
}

// The backward of ca_gates_forward: {dz, dw1, db1, dbn_w, dbn_b, dwg (k x mip x C), dbg}.
// The gates' derivatives come from their outputs (hsigmoid: 1/6 strictly inside (0, 1),
// where its input is inside (-3, 3)).
std::vector<Tensor> ca_gates_backward(const Tensor& dgates, const Tensor& gates, const Tensor& z,
                                      int64_t rows_h, const Tensor& w1, const Tensor& f,
                                      const Tensor& a, const Tensor& mean, const Tensor& invstd,
                                      const Tensor& bn_w, const Tensor& bn_b, const Tensor& wg,
                                      int64_t act, int64_t gate) {
  TORCH_CHECK(dgates.is_contiguous() && dgates.sizes() == gates.sizes() &&
              dgates.scalar_type() == gates.scalar_type(), "dgates must match the gates");
  const int64_t R = z.size(0), C = z.size(1), mip = w1.size(0), k = wg.size(0);
  const int64_t blocks = (R + kRowBlock - 1) / kRowBlock;
  Tensor da = at::empty({R, mip}, z.options());
  Tensor part_wg = at::zeros({blocks, k, mip, C}, z.options());
  Tensor part_bg = at::zeros({blocks, k, C}, z.options());
  Tensor df = at::empty({R, mip}, z.options());
  Tensor dz = at::empty({R, C}, z.options());
  Tensor part_w1 = at::zeros({blocks, mip, C}, z.options());
  Tensor dw1 = at::zeros({mip, C}, z.options()), db1 = at::zeros({mip}, z.options());
  Tensor dbn_w = at::zeros({mip}, z.options()), dbn_b = at::zeros({mip}, z.options());
  Tensor dwg = at::zeros({k, mip, C}, z.options()), dbg = at::zeros({k, C}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "ca_gates_backward", [&] {
    const scalar_t* dgp = dgates.data_ptr<scalar_t>();
    const scalar_t* gp = gates.data_ptr<scalar_t>();
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* w1p = w1.data_ptr<scalar_t>();
    const scalar_t* fp = f.data_ptr<scalar_t>();
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* mp = mean.data_ptr<scalar_t>();
    const scalar_t* ip = invstd.data_ptr<scalar_t>();
    const scalar_t* bwp = bn_w.data_ptr<scalar_t>();
    const scalar_t* bbp = bn_b.data_ptr<scalar_t>();
    const scalar_t* wgp = wg.data_ptr<scalar_t>();
    scalar_t* dap = da.data_ptr<scalar_t>();
    scalar_t* pwg = part_wg.data_ptr<scalar_t>();
    scalar_t* pbg = part_bg.data_ptr<scalar_t>();
    // 1. through the gates and the gate convs, a block of rows per task
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> dl(C);
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t r = b * kRowBlock; r < std::min(R, (b + 1) * kRowBlock); ++r) {
          const int64_t g = (r < rows_h ? 0 : 1) % k;
          const scalar_t* wgg = wgp + g * mip * C;
          scalar_t* pw = pwg + (b * k + g) * mip * C;
          scalar_t* pb = pbg + (b * k + g) * C;
          const scalar_t* dgr = dgp + r * C;
          const scalar_t* gr = gp + r * C;
          if (gate == 0) {
            _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) dl[c] = dgr[c] * gr[c] * (scalar_t(1) - gr[c]);
          } else {
            _Pragma("omp simd") for (int64_t c = 0; c < C; ++c)
              dl[c] = (gr[c] > scalar_t(0) && gr[c] < scalar_t(1)) ? dgr[c] / scalar_t(6) : scalar_t(0);
          }
          _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) pb[c] += dl[c];
          for (int64_t j = 0; j < mip; ++j) {
            const scalar_t* wj = wgg + j * C;
            const scalar_t aj = ap[r * mip + j];
            scalar_t* pwj = pw + j * C;
            scalar_t acc = 0;
            _Pragma("omp simd reduction(+:acc)") for (int64_t c = 0; c < C; ++c) {
              acc += dl[c] * wj[c];
              pwj[c] += aj * dl[c];
            }
            dap[r * mip + j] = acc;
          }
        }
      }
    });
    scalar_t* dwgp = dwg.data_ptr<scalar_t>();
    scalar_t* dbgp = dbg.data_ptr<scalar_t>();
    for (int64_t b = 0; b < blocks; ++b) {  // the blocks' partial sums, in order
      for (int64_t i = 0; i < k * mip * C; ++i) dwgp[i] += pwg[b * k * mip * C + i];
      for (int64_t i = 0; i < k * C; ++i) dbgp[i] += pbg[b * k * C + i];
    }
    // 2. through the activation and BN (batch statistics), R x mip: one thread
    scalar_t* dfp = df.data_ptr<scalar_t>();
    scalar_t* dbwp = dbn_w.data_ptr<scalar_t>();
    scalar_t* dbbp = dbn_b.data_ptr<scalar_t>();
    for (int64_t j = 0; j < mip; ++j) {
      scalar_t sum_dy = 0, sum_dy_xhat = 0;
      for (int64_t r = 0; r < R; ++r) {
        const scalar_t xhat = (fp[r * mip + j] - mp[j]) * ip[j];
        const scalar_t dy = dap[r * mip + j] * act_grad<scalar_t>(int(act), xhat * bwp[j] + bbp[j]);
        dfp[r * mip + j] = dy;
        sum_dy += dy;
        sum_dy_xhat += dy * xhat;
      }
      dbwp[j] = sum_dy_xhat;
      dbbp[j] = sum_dy;
      const scalar_t mean_dy = sum_dy / scalar_t(R), mean_dy_xhat = sum_dy_xhat / scalar_t(R);
      for (int64_t r = 0; r < R; ++r) {
        const scalar_t xhat = (fp[r * mip + j] - mp[j]) * ip[j];
        dfp[r * mip + j] = bwp[j] * ip[j] * (dfp[r * mip + j] - mean_dy - xhat * mean_dy_xhat);
      }
    }
    // 3. through F1
    scalar_t* dzp = dz.data_ptr<scalar_t>();
    scalar_t* pw1 = part_w1.data_ptr<scalar_t>();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        scalar_t* pw = pw1 + b * mip * C;
        for (int64_t r = b * kRowBlock; r < std::min(R, (b + 1) * kRowBlock); ++r) {
          scalar_t* dzr = dzp + r * C;
          const scalar_t* zr = zp + r * C;
          _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) dzr[c] = scalar_t(0);
          for (int64_t j = 0; j < mip; ++j) {
            const scalar_t d = dfp[r * mip + j];
            const scalar_t* wj = w1p + j * C;
            scalar_t* pwj = pw + j * C;
            _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) {
              dzr[c] += d * wj[c];
              pwj[c] += d * zr[c];
            }
          }
        }
      }
    });
    scalar_t* dw1p = dw1.data_ptr<scalar_t>();
    scalar_t* db1p = db1.data_ptr<scalar_t>();
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t i = 0; i < mip * C; ++i) dw1p[i] += pw1[b * mip * C + i];
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < mip; ++j) db1p[j] += dfp[r * mip + j];
  });
  return {dz, dw1, db1, dbn_w, dbn_b, dwg, dbg};
}

}  // namespace caprobe_kernels
