// caprobe's native CPU kernels for the attention modules' training steps: the declarations
// that module.cpp binds, and the checks every kernel makes of its arguments.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

namespace caprobe_kernels {

using at::Tensor;

inline void check_map(const Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous(), name, " must be a contiguous NHWC map");
}

inline void check_strip(const Tensor& t, int64_t n, int64_t len, int64_t c, const char* name) {
  TORCH_CHECK(t.dim() == 3 && t.is_contiguous() && t.size(0) == n && t.size(1) == len &&
              t.size(2) == c, name, " must be a contiguous strip of shape [", n, ", ", len,
              ", ", c, "]");
}

// Coordinate Attention (strip_kernels.cpp)
Tensor strip_means(const Tensor& x, bool rows, bool cols, bool clamp6);
void combine_into(Tensor out, const Tensor& a, const c10::optional<Tensor>& gh,
                  const c10::optional<Tensor>& gw, const c10::optional<Tensor>& eh,
                  const c10::optional<Tensor>& ew, double eh_scale, double ew_scale,
                  const c10::optional<Tensor>& relu6_out);
std::vector<Tensor> gate_grads(const Tensor& dy, const Tensor& x, const c10::optional<Tensor>& gh,
                               const c10::optional<Tensor>& gw, bool means);
std::vector<Tensor> ca_gates_forward(const Tensor& z, int64_t rows_h, const Tensor& w1,
                                     const Tensor& b1, const Tensor& bn_w, const Tensor& bn_b,
                                     double eps, const Tensor& wg, const Tensor& bg,
                                     int64_t act, int64_t gate);
std::vector<Tensor> ca_gates_backward(const Tensor& dgates, const Tensor& gates, const Tensor& z,
                                      int64_t rows_h, const Tensor& w1, const Tensor& f,
                                      const Tensor& a, const Tensor& mean, const Tensor& invstd,
                                      const Tensor& bn_w, const Tensor& bn_b, const Tensor& wg,
                                      int64_t act, int64_t gate);

// CBAM and the channel gates (gate_kernels.cpp)
std::vector<Tensor> cbam_channel_pool(const Tensor& x);
std::vector<Tensor> cbam_spatial_pool(const Tensor& x, const Tensor& gc);
Tensor cbam_product(const Tensor& x, const Tensor& gc, const Tensor& gs);
std::vector<Tensor> cbam_product_grads(const Tensor& dy, const Tensor& x, const Tensor& gc,
                                       const Tensor& gs);
Tensor cbam_spatial_pool_grad(const Tensor& x, const Tensor& ds, const Tensor& index_s);
Tensor cbam_input_grad(const Tensor& dy, const Tensor& gs, const Tensor& gc, const Tensor& ds,
                       const Tensor& index_s, const Tensor& dmean, const Tensor& dmax,
                       const Tensor& index_c);
std::vector<Tensor> cbam_spatial_gate_forward(const Tensor& s, const Tensor& w,
                                              const Tensor& bn_w, const Tensor& bn_b,
                                              double eps, int64_t gate);
std::vector<Tensor> cbam_spatial_gate_backward(const Tensor& dgs, const Tensor& gs,
                                               const Tensor& s, const Tensor& t, const Tensor& w,
                                               const Tensor& mean, const Tensor& invstd,
                                               const Tensor& bn_w, int64_t gate);
Tensor channel_gate_grad(const Tensor& dy, const Tensor& x);
Tensor channel_input_grad(const Tensor& dy, const Tensor& gc, const Tensor& dmean);

}  // namespace caprobe_kernels
