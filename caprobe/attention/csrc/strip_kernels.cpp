// One-pass CPU kernels for Coordinate Attention's map-sized steps on channels-last maps.
//
// Every map here is the NHWC view of a channels-last N x C x H x W tensor (contiguous), every
// strip an N x H x C or N x W x C tensor (contiguous). Each kernel reads and writes the map
// once, channels innermost (vectorised). Reductions run one sample per task
// (at::parallel_for over N) in a fixed order, so they do not depend on the thread count.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <vector>

namespace {

using at::Tensor;

void check_map(const Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous(), name, " must be a contiguous NHWC map");
}

void check_strip(const Tensor& t, int64_t n, int64_t len, int64_t c, const char* name) {
  TORCH_CHECK(t.dim() == 3 && t.is_contiguous() && t.size(0) == n && t.size(1) == len &&
              t.size(2) == c, name, " must be a contiguous strip of shape [", n, ", ", len,
              ", ", c, "]");
}

// The means over W (N x H x C) and over H (N x W x C) of an NHWC map, written as the rows of
// one (N*H + N*W) x C tensor (rows first, then columns); either part may be left out.
Tensor strip_means(const Tensor& x, bool rows, bool cols) {
  check_map(x, "x");
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  const int64_t row_len = rows ? n * h : 0, col_len = cols ? n * w : 0;
  Tensor out = at::empty({row_len + col_len, c}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "strip_means", [&] {
    const scalar_t* __restrict__ xp = x.data_ptr<scalar_t>();
    scalar_t* __restrict__ zh = out.data_ptr<scalar_t>();
    scalar_t* zw = zh + row_len * c;
    const scalar_t inv_w = scalar_t(1) / scalar_t(w), inv_h = scalar_t(1) / scalar_t(h);
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        const scalar_t* xs = xp + s * h * w * c;
        scalar_t* col = cols ? zw + s * w * c : nullptr;
        if (cols) std::fill(col, col + w * c, scalar_t(0));
        for (int64_t i = 0; i < h; ++i) {
          const scalar_t* xr = xs + i * w * c;
          scalar_t* row = rows ? zh + (s * h + i) * c : nullptr;
          if (rows) std::fill(row, row + c, scalar_t(0));
          for (int64_t j = 0; j < w; ++j) {
            const scalar_t* v = xr + j * c;
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
// (a = dy, eh = dz^h with scale 1 / W, ew = dz^w with scale 1 / H) are each one pass.
void combine_into(Tensor out, const Tensor& a, const c10::optional<Tensor>& gh,
                  const c10::optional<Tensor>& gw, const c10::optional<Tensor>& eh,
                  const c10::optional<Tensor>& ew, double eh_scale, double ew_scale) {
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
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "combine_into", [&] {
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
        }
      }
    });
  });
}

// The gates' gradients of y = x * gh * gw (either gate may be absent): dgh = sum over W of
// dy * x * gw (N x H x C), dgw = sum over H of dy * x * gh (N x W x C); one pass over dy, x.
std::vector<Tensor> gate_grads(const Tensor& dy, const Tensor& x,
                               const c10::optional<Tensor>& gh,
                               const c10::optional<Tensor>& gw) {
  check_map(dy, "dy");
  check_map(x, "x");
  TORCH_CHECK(dy.sizes() == x.sizes(), "dy and x must have one shape");
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  if (gh) check_strip(*gh, n, h, c, "gh");
  if (gw) check_strip(*gw, n, w, c, "gw");
  const bool want_h = gh.has_value(), want_w = gw.has_value();
  Tensor dgh = want_h ? at::empty({n, h, c}, x.options()) : Tensor();
  Tensor dgw = want_w ? at::empty({n, w, c}, x.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gate_grads", [&] {
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    const scalar_t* __restrict__ xp = x.data_ptr<scalar_t>();
    const scalar_t* ghp = want_h ? gh->data_ptr<scalar_t>() : nullptr;
    const scalar_t* gwp = want_w ? gw->data_ptr<scalar_t>() : nullptr;
    scalar_t* dghp = want_h ? dgh.data_ptr<scalar_t>() : nullptr;
    scalar_t* dgwp = want_w ? dgw.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> p(c);
      for (int64_t s = begin; s < end; ++s) {
        scalar_t* col = want_w ? dgwp + s * w * c : nullptr;
        if (want_w) std::fill(col, col + w * c, scalar_t(0));
        for (int64_t i = 0; i < h; ++i) {
          const int64_t r = s * h + i;
          const scalar_t* gr = want_h ? ghp + r * c : nullptr;
          scalar_t* row = want_h ? dghp + r * c : nullptr;
          if (want_h) std::fill(row, row + c, scalar_t(0));
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
          }
        }
      }
    });
  });
  return {dgh, dgw};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("strip_means", &strip_means);
  m.def("combine_into", &combine_into);
  m.def("gate_grads", &gate_grads);
}
