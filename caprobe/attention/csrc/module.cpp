// The Python bindings of caprobe's native attention kernels (kernels.h).
#include <torch/extension.h>

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace caprobe_kernels;
  m.def("strip_means", &strip_means);
  m.def("combine_into", &combine_into);
  m.def("gate_grads", &gate_grads);
  m.def("ca_gates_forward", &ca_gates_forward);
  m.def("ca_gates_backward", &ca_gates_backward);
  m.def("cbam_channel_pool", &cbam_channel_pool);
  m.def("cbam_spatial_pool", &cbam_spatial_pool);
  m.def("cbam_product", &cbam_product);
  m.def("cbam_product_grads", &cbam_product_grads);
  m.def("cbam_spatial_pool_grad", &cbam_spatial_pool_grad);
  m.def("cbam_input_grad", &cbam_input_grad);
  m.def("cbam_spatial_gate_forward", &cbam_spatial_gate_forward);
  m.def("cbam_spatial_gate_backward", &cbam_spatial_gate_backward);
  m.def("channel_gate_grad", &channel_gate_grad);
  m.def("channel_input_grad", &channel_input_grad);
}
