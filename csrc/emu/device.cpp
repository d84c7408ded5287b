// The emulated CUDA device: PyTorch's PrivateUse1 backend ("privateuseone") whose memory is host
// memory. The focalops CUDA launchers (csrc/cuda/*.cu, built with FOCALOPS_EMULATE) are its
// kernels for our ops; every other ATen op runs the CPU kernel on the same memory (a boxed
// fallback that re-tags the tensors, no copies), so the launchers' own sorts, top-k and gathers,
// and the tests' tensor code, run unchanged. One device, one stream, no events.
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "emu/runtime.h"

namespace focalops {
namespace gpu {

int multiprocessors() {
  static const int sms = [] {
    const char* env = std::getenv("FOCALOPS_EMU_SMS");
    const int v = env != nullptr ? std::atoi(env) : 0;
    return v > 0 ? v : 2;
  }();
  return sms;
}

}  // namespace gpu

namespace {

constexpr auto kEmu = c10::DeviceType::PrivateUse1;

void release_storage(void* ctx) { delete static_cast<c10::Storage*>(ctx); }

// The same memory as t, as a tensor of `device` (sizes, strides and storage offset kept). The
// new storage holds a reference to t's, so either may outlive the other.
at::Tensor retag(const at::Tensor& t, c10::Device device) {
  c10::Storage src = t.storage();
  // A re-tagged storage refers to the one it came from: go back to that, not one level deeper.
  if (src.data_ptr().get_deleter() == &release_storage) {
    const auto* inner = static_cast<const c10::Storage*>(src.data_ptr().get_context());
    if (inner->device() == device) src = *inner;
  }
  if (src.device() != device) {
    void* data = src.mutable_data();
    c10::DataPtr ptr(data, new c10::Storage(src), &release_storage, device);
    src = c10::Storage(c10::Storage::use_byte_size_t(), src.nbytes(), std::move(ptr), nullptr, false);
  }
  const auto key = device.is_cpu() ? c10::DispatchKey::CPU : c10::DispatchKey::PrivateUse1;
  at::Tensor out = at::detail::make_tensor<c10::TensorImpl>(std::move(src), c10::DispatchKeySet(key), t.dtype());
  out.unsafeGetTensorImpl()->set_sizes_and_strides(t.sizes(), t.strides(), t.storage_offset());
  return out;
}

bool on_emu(const at::Tensor& t) { return t.defined() && t.device().type() == kEmu; }

c10::IValue to_cpu(const c10::IValue& v, bool* seen) {
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    if (!on_emu(t)) return v;
    *seen = true;
    return retag(t, c10::Device(c10::kCPU));
  }
  if (v.isTensorList()) {
    auto list = v.toTensorList();
    c10::List<at::Tensor> out;
    for (const at::Tensor& t : list) {
      *seen |= on_emu(t);
      out.push_back(on_emu(t) ? retag(t, c10::Device(c10::kCPU)) : t);
    }
    return out;
  }
  if (v.isList()) {  // Tensor?[] (index, index_put)
    auto list = v.toList();
    c10::impl::GenericList out(list.elementType());
    for (const c10::IValue& e : list) out.push_back(to_cpu(e, seen));
    return out;
  }
  return v;
}

c10::IValue to_emu(const c10::IValue& v) {
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    return t.defined() && t.device().is_cpu() ? c10::IValue(retag(t, c10::Device(kEmu, 0))) : v;
  }
  if (v.isTensorList()) {
    c10::List<at::Tensor> out;
    for (const at::Tensor& t : v.toTensorList()) out.push_back(t.defined() && t.device().is_cpu() ? retag(t, c10::Device(kEmu, 0)) : t);
    return out;
  }
  return v;
}

// resize_ of an emulated tensor: in place when its storage is large enough, else onto a larger
// copy of it (a CPU resize of a re-tagged view would reallocate only the view's storage).
void resize_emu(const at::Tensor& t, c10::IntArrayRef size) {
  c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  int64_t numel = 1;
  for (const int64_t d : size) {
    TORCH_CHECK(d >= 0, "resize_: negative size ", d);
    numel *= d;
  }
  const size_t need = static_cast<size_t>(t.storage_offset() + numel) * t.itemsize();
  if (need > t.storage().nbytes()) {
    at::Tensor fresh = at::empty({static_cast<int64_t>(need)}, at::TensorOptions().dtype(at::kByte));
    if (t.storage().nbytes() > 0) std::memcpy(fresh.data_ptr(), t.storage().data(), t.storage().nbytes());
    impl->set_storage_keep_dtype(retag(fresh, c10::Device(kEmu, 0)).storage());
  }
  impl->set_sizes_contiguous(size);
}

// The three ops a backend must provide itself: copies between devices and resize_.
bool device_op(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const std::string& name = op.schema().name();
  const auto cpu = [](const at::Tensor& t) { return on_emu(t) ? retag(t, c10::Device(c10::kCPU)) : t; };
  if (name == "aten::_copy_from" || name == "aten::_copy_from_and_resize") {
    const size_t n = op.schema().arguments().size();
    const at::Tensor self = (*stack)[stack->size() - n].toTensor();
    const at::Tensor dst = (*stack)[stack->size() - n + 1].toTensor();
    if (name == "aten::_copy_from_and_resize" && on_emu(dst)) resize_emu(dst, self.sizes());
    cpu(dst).copy_(cpu(self));
    torch::jit::drop(*stack, n);
    torch::jit::push(*stack, dst);
    return true;
  }
  if (name == "aten::resize_") {
    const size_t n = op.schema().arguments().size();
    const at::Tensor self = (*stack)[stack->size() - n].toTensor();
    const std::vector<int64_t> size = (*stack)[stack->size() - n + 1].toIntVector();
    resize_emu(self, size);
    torch::jit::drop(*stack, n);
    torch::jit::push(*stack, self);
    return true;
  }
  return false;
}

// Every ATen op on emulated tensors: the CPU kernel on the same memory. Results go back to the
// emulated device when the op was asked for it (a `device` argument) or, without one, when an
// input was on it; an output that is an input written in place is returned as that input.
void cpu_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  if (device_op(op, stack)) return;
  const auto& schema = op.schema();
  const size_t n_args = schema.arguments().size();
  const auto args_begin = stack->end() - static_cast<std::ptrdiff_t>(n_args);
  const std::vector<c10::IValue> originals(args_begin, stack->end());
  bool seen = false;
  int device_arg = -1;  // -1: none; 0: cpu or other; 1: emulated
  for (auto it = args_begin; it != stack->end(); ++it) {
    if (it->isDevice()) {
      const bool emu = it->toDevice().type() == kEmu;
      device_arg = emu ? 1 : 0;
      if (emu) *it = c10::Device(c10::kCPU);
    } else {
      *it = to_cpu(*it, &seen);
    }
  }
  const std::vector<c10::IValue> aliases(args_begin, stack->end());
  op.callBoxed(stack);
  // Written arguments the CPU kernel resized (out= ops) or gave new memory: the emulated tensor
  // takes the CPU view's memory and shape.
  for (size_t a = 0; a < n_args; ++a) {
    const auto* ai = schema.arguments()[a].alias_info();
    if (ai == nullptr || !ai->isWrite() || !originals[a].isTensor() || !on_emu(originals[a].toTensor())) continue;
    const at::Tensor& orig = originals[a].toTensor();
    const at::Tensor& view = aliases[a].toTensor();
    if (view.data_ptr() == orig.data_ptr() && view.sizes() == orig.sizes() && view.strides() == orig.strides()) continue;
    c10::TensorImpl* impl = orig.unsafeGetTensorImpl();
    impl->set_storage_keep_dtype(retag(view, c10::Device(kEmu, 0)).storage());
    impl->set_sizes_and_strides(view.sizes(), view.strides(), view.storage_offset());
  }
  const bool back = device_arg == 1 || (device_arg == -1 && seen);
  const auto& returns = schema.returns();
  const auto ret_begin = stack->end() - static_cast<std::ptrdiff_t>(returns.size());
  for (size_t r = 0; r < returns.size(); ++r) {
    c10::IValue& v = *(ret_begin + static_cast<std::ptrdiff_t>(r));
    const auto* alias = returns[r].alias_info();
    if (alias != nullptr && alias->isWrite()) {
      // The input it aliases (out= and in-place ops): the same emulated tensor object.
      for (size_t a = 0; a < n_args; ++a) {
        const auto* ai = schema.arguments()[a].alias_info();
        if (ai != nullptr && ai->isWrite() && ai->beforeSets() == alias->beforeSets()) {
          v = originals[a];
          break;
        }
      }
      continue;
    }
    if (back) v = to_emu(v);
  }
}

struct EmuGuard final : c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override { return kEmu; }
  c10::Device exchangeDevice(c10::Device) const override { return c10::Device(kEmu, 0); }
  c10::Device getDevice() const override { return c10::Device(kEmu, 0); }
  void setDevice(c10::Device d) const override {
    TORCH_CHECK(d.index() <= 0, "the emulated CUDA device has one device, index 0; got ", d);
  }
  void uncheckedSetDevice(c10::Device) const noexcept override {}
  c10::Stream getStream(c10::Device d) const override { return c10::Stream(c10::Stream::DEFAULT, c10::Device(kEmu, 0)); }
  c10::Stream exchangeStream(c10::Stream s) const override { return s; }
  c10::DeviceIndex deviceCount() const noexcept override { return 1; }
  bool queryStream(const c10::Stream&) const override { return true; }
  void synchronizeStream(const c10::Stream&) const override {}
  void synchronizeDevice(const c10::DeviceIndex) const override {}
  void recordDataPtrOnStream(const c10::DataPtr&, const c10::Stream&) const override {}
};
C10_REGISTER_GUARD_IMPL(PrivateUse1, EmuGuard);

struct EmuHooks final : at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  const at::Generator& getDefaultGenerator(c10::DeviceIndex) const override {
    return at::detail::getDefaultCPUGenerator();
  }
  at::Device getDeviceFromPtr(void*) const override { return c10::Device(kEmu, 0); }
  c10::DeviceIndex deviceCount() const override { return 1; }
  c10::DeviceIndex getCurrentDevice() const override { return 0; }
};

const bool kHooksRegistered = [] {
  at::RegisterPrivateUse1HooksInterface(new EmuHooks());
  return true;
}();

}  // namespace
}  // namespace focalops

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&focalops::cpu_fallback>());
}

// `import focalops._C_emu` loads this library: the registrations above run. Its one function,
// multiprocessors(), is the emulated SM count (FOCALOPS_EMU_SMS), which sizes the launchers'
// grids: the tests size inputs past one grid from it.
extern "C" {
static PyObject* emu_multiprocessors(PyObject*, PyObject*) {
  return PyLong_FromLong(focalops::gpu::multiprocessors());
}

PyObject* PyInit__C_emu(void) {
  static PyMethodDef methods[] = {
      {"multiprocessors", emu_multiprocessors, METH_NOARGS, "The emulated device's multiprocessor count."},
      {nullptr, nullptr, 0, nullptr}};
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_emu", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}
