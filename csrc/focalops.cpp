// The focalops operator library: every schema, nothing else. Kernels register themselves in
// csrc/cpu/*.cpp and csrc/cuda/*.cu; autograd and fake kernels are added from Python.
#include <Python.h>
#include <torch/library.h>

#include "cpu/stub.h"

// `import focalops._C` loads this library and runs the registrations below. Every op is reached
// through torch.ops.focalops (which keeps torch.compile and opcheck working and lets the
// extension use the limited Python API); the module itself only names the CPU capability.
namespace {
PyObject* cpu_capability(PyObject*, PyObject*) {
  return PyUnicode_FromString(focalops::cpu::capability_name(focalops::cpu::capability()));
}
PyMethodDef methods[] = {
    {"cpu_capability", cpu_capability, METH_NOARGS, "The CPU kernels in use: 'default', 'avx2' or 'avx512'."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  focalops::cpu::capability();  // chosen once, when the library loads
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(focalops, m) {
  // Sigmoid focal loss. targets: float (dense, shape of inputs) or int64 class indices
  // (shape inputs.shape[:-1]; -1 background, ignore_index skipped). reduce=True returns the
  // 0-d sum in float32 (float64 for float64 inputs); reduce=False the elementwise loss.
  m.def("sigmoid_focal_loss(Tensor inputs, Tensor targets, float alpha, float gamma, int ignore_index, bool reduce) -> Tensor");
  m.def(
      "_sigmoid_focal_loss_backward(Tensor grad, Tensor inputs, Tensor targets, float alpha, float gamma, int ignore_index, "
      "bool reduce) -> Tensor");
  // CPU only: the forward and the gradient in one pass (the CPU eager training step; on a GPU
  // the extra write and read of the gradient cost more than recomputing it).
  m.def(
      "_sigmoid_focal_loss_with_grad(Tensor inputs, Tensor targets, float alpha, float gamma, int ignore_index, "
      "bool reduce) -> (Tensor, Tensor)");

  // Boxes (x1, y1, x2, y2), anchor assignment and box coding. The coders' anchors hold M rows of
  // 4 that repeat along the other operand's rows (e.g. deltas [B, A, 4] with anchors [A, 4]).
  // retinanet_targets: the label of every matched box must be >= 0 (and < num_classes if given).
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def("assign(Tensor anchors, Tensor gt_boxes, Tensor gt_counts, float fg_iou, float bg_iou, bool allow_low_quality) -> Tensor");
  m.def("encode_boxes(Tensor gt, Tensor anchors, float[] weights) -> Tensor");
  m.def("decode_boxes(Tensor deltas, Tensor anchors, float[] weights, float clamp) -> Tensor");
  m.def("_decode_boxes_backward(Tensor grad, Tensor deltas, Tensor anchors, float[] weights, float clamp) -> Tensor");
  m.def(
      "retinanet_targets(Tensor matched, Tensor gt_boxes, Tensor gt_labels, Tensor anchors, float[] weights, "
      "int? num_classes=None) -> (Tensor, Tensor, Tensor)");

  // NMS (greedy, decreasing score, ties by lower index; IoU in float32) -> int64 kept indices,
  // and RetinaNet post-processing padded to detections_per_img -> (boxes, scores, labels, counts).
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def(
      "postprocess(Tensor cls_logits, Tensor box_deltas, Tensor anchors, SymInt[] level_sizes, Tensor image_sizes, "
      "float score_thresh, int topk_candidates, float nms_thresh, int detections_per_img) -> (Tensor, Tensor, Tensor, Tensor)");
}
