// The Python bindings of caprobe's native attention kernels (kernels.h).
#include <torch/extension.h>

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace caprobe_kernels;
  m.def("strip_means", &strip_means, py::arg("x"), py::arg("rows"), py::arg("cols"),
        py::arg("clamp6") = false);
  m.def("combine_into", &combine_into, py::arg("out"), py::arg("a"), py::arg("gh"), py::arg("gw"),
        py::arg("eh"), py::arg("ew"), py::arg("eh_scale"), py::arg("ew_scale"),
        py::arg("relu6_out") = py::none());
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
