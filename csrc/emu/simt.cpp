// The SIMT emulator's scheduler (see simt.h): fibers for the threads of a block, barriers and
// warp exchanges resolved when every fiber has stopped, launch limits from the nvcc build.
#include "emu/simt.h"

#include <dlfcn.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FO_EMU_ASAN 1
#endif
#if defined(FOCALOPS_EMULATE_TSAN)
#include <sanitizer/tsan_interface.h>
// The scheduler's own bookkeeping is not instrumented: fibers and the scheduler hand it over at
// every switch, which TSan does not see (the switches are unsynchronised on purpose, so that
// only barriers, warp operations and launch boundaries order the CUDA threads).
#define FO_EMU_SCHEDULER __attribute__((no_sanitize("thread")))
#else
#define FO_EMU_SCHEDULER
#endif

// The static __shared__ variables of every kernel (one section; the linker defines its bounds).
extern "C" char __start_fo_emu_shared[] __attribute__((weak));
extern "C" char __stop_fo_emu_shared[] __attribute__((weak));

// Switching between fibers: on x86-64 a stack switch that saves the callee-saved registers and
// the FP control words (no system call: ucontext's swapcontext saves the signal mask, one
// syscall per switch, and the emulator switches at every barrier and shuffle); ucontext
// elsewhere.
#if defined(__x86_64__)
extern "C" void fo_emu_switch(void** save_sp, void* new_sp);
asm(R"(
  .text
  .globl fo_emu_switch
  .hidden fo_emu_switch
  .type fo_emu_switch, @function
fo_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fo_emu_switch, .-fo_emu_switch
)");
#define FO_EMU_FAST_SWITCH 1
#endif

namespace fo_emu {
namespace {

#if defined(FO_EMU_FAST_SWITCH)
struct Context {
  void* sp = nullptr;
};
// A fresh context that starts `entry` on the stack [stack, stack + bytes).
FO_EMU_SCHEDULER void make_context(Context* c, char* stack, size_t bytes, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t{15};
  auto* slot = reinterpret_cast<uint64_t*>(top - 16);
  slot[0] = reinterpret_cast<uint64_t>(entry);  // fo_emu_switch's `ret` goes here (rsp = 8 mod 16 after it)
  uint64_t* regs = slot - 7;                    // rbp, rbx, r12-r15 (zero) and the control words
  for (int i = 1; i < 7; ++i) regs[i] = 0;
  uint32_t mxcsr = 0;
  uint16_t fpucw = 0;
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(mxcsr), "=m"(fpucw));
  std::memcpy(&regs[0], &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(&regs[0]) + 4, &fpucw, 2);
  c->sp = regs;
}
FO_EMU_SCHEDULER inline void switch_context(Context* from, Context* to) { fo_emu_switch(&from->sp, to->sp); }
#else
struct Context {
  ucontext_t uc;
};
FO_EMU_SCHEDULER void make_context(Context* c, char* stack, size_t bytes, void (*entry)()) {
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack;
  c->uc.uc_stack.ss_size = bytes;
  c->uc.uc_link = nullptr;
  makecontext(&c->uc, entry, 0);
}
FO_EMU_SCHEDULER inline void switch_context(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }
#endif

struct Resources {
  const char* name;  // mangled, as nvcc and g++ both name it
  int registers;
  int shared;       // static shared bytes
  int max_threads;  // __launch_bounds__ (0: none)
};
const Resources kResources[] = {
#include "emu/kernel_resources.inc"
};

// sm_90 limits (CUDA programming guide, compute capability 9.0).
constexpr int kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxGridYZ = 65535;
constexpr int kDefaultSharedLimit = 48 * 1024;
constexpr int kOptInSharedLimit = 227 * 1024;
constexpr int kSharedPerSm = 228 * 1024;
constexpr int kRegistersPerSm = 65536;
constexpr int kThreadsPerSm = 2048;
constexpr int kBlocksPerSm = 32;

#if defined(FO_EMU_ASAN) || defined(FOCALOPS_EMULATE_TSAN)
constexpr size_t kStackBytes = size_t{1} << 20;
#else
constexpr size_t kStackBytes = size_t{256} << 10;
#endif

enum class State { kRunnable, kBlockBarrier, kWarpOp, kExited };

struct Fiber {
  Context ctx;
  ThreadState ts;
  int linear = 0;
  State state = State::kExited;
  Site site{nullptr, 0};
  int op = 0;
  int pred = 0;
  unsigned mask = 0;
  uint64_t bits = 0;
  int arg = 0;
  uint64_t result = 0;
  char* stack = nullptr;
#if defined(FO_EMU_ASAN)
  void* fake_stack = nullptr;
#endif
#if defined(FOCALOPS_EMULATE_TSAN)
  void* tsan = nullptr;
#endif
};

struct Scheduler {
  std::vector<Fiber> fibers;
  Context main_ctx;
  Fiber* cur = nullptr;
  BlockState block{};
  const std::function<void()>* body = nullptr;
  const char* kernel = "?";
  bool aborted = false;
  cudaError_t error = cudaSuccess;   // unread, as cudaGetLastError returns it
  cudaError_t failed = cudaSuccess;  // the last failure, which `message` describes
  std::string message;
  std::map<const void*, int> max_dynamic;
  uint64_t launches = 0;
#if defined(FO_EMU_ASAN)
  const void* main_bottom = nullptr;
  size_t main_size = 0;
#endif
#if defined(FOCALOPS_EMULATE_TSAN)
  void* main_tsan = nullptr;
  // The launch boundaries: the host's work before the launch is ordered before every thread
  // (launch_begin), every thread before the host's work after it (launch_end). Blocks are
  // ordered one after the other too (block_end): they reuse the same static shared memory,
  // which TSan cannot be told is new for each block. So TSan checks the threads of a block
  // against each other; between blocks, the shuffled block order and the tests' values do.
  char launch_begin = 0;
  char launch_end = 0;
  char block_end = 0;
  // A barrier (warp operation) orders what its threads did before it with what they do after
  // it: they release one sync object on arrival and acquire it when released. Consecutive
  // barriers of a block (of a warp) alternate between two objects, so that a thread released
  // early, which runs on to the next barrier, never orders its accesses with those of threads
  // still to resume from the last one.
  char block_sync[2] = {};
  char warp_sync[32][2] = {};
  unsigned block_epoch = 0;
  unsigned warp_epoch[32] = {};
#endif
};

thread_local Scheduler t_sched;

FO_EMU_SCHEDULER bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

FO_EMU_SCHEDULER std::string where(const Site& s) {
  const char* slash = std::strrchr(s.file, '/');
  return std::string(slash != nullptr ? slash + 1 : s.file) + ":" + std::to_string(s.line);
}

FO_EMU_SCHEDULER void fail(Scheduler& s, cudaError_t code, const std::string& what) {
  if (s.aborted) return;
  s.aborted = true;
  s.error = code;
  s.failed = code;
  s.message = std::string("emulated CUDA: ") + what + " (kernel " + s.kernel + ", block (" +
              std::to_string(s.block.idx.x) + "," + std::to_string(s.block.idx.y) + "," +
              std::to_string(s.block.idx.z) + "))";
}

// Fiber -> scheduler. `exiting`: the fiber never resumes.
FO_EMU_SCHEDULER void to_scheduler(Scheduler& s, Fiber* f, bool exiting) {
#if defined(FO_EMU_ASAN)
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f->fake_stack, s.main_bottom, s.main_size);
#endif
#if defined(FOCALOPS_EMULATE_TSAN)
  __tsan_switch_to_fiber(s.main_tsan, __tsan_switch_to_fiber_no_sync);
#endif
  switch_context(&f->ctx, &s.main_ctx);
#if defined(FO_EMU_ASAN)
  __sanitizer_finish_switch_fiber(f->fake_stack, &s.main_bottom, &s.main_size);
#endif
  (void)exiting;
}

// Scheduler -> fiber, back when it stops.
FO_EMU_SCHEDULER void to_fiber(Scheduler& s, Fiber* f) {
  s.cur = f;
#if defined(FO_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f->stack, kStackBytes);
#endif
#if defined(FOCALOPS_EMULATE_TSAN)
  __tsan_switch_to_fiber(f->tsan, __tsan_switch_to_fiber_no_sync);
#endif
  switch_context(&s.main_ctx, &f->ctx);
#if defined(FO_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  s.cur = nullptr;
}

FO_EMU_SCHEDULER void fiber_entry() {
  Scheduler& s = t_sched;
  Fiber* f = s.cur;
#if defined(FO_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &s.main_bottom, &s.main_size);
#endif
#if defined(FOCALOPS_EMULATE_TSAN)
  __tsan_acquire(&s.launch_begin);
  __tsan_acquire(&s.block_end);
#endif
  (*s.body)();
#if defined(FOCALOPS_EMULATE_TSAN)
  __tsan_release(&s.launch_end);
  __tsan_release(&s.block_end);
#endif
  f->state = State::kExited;
  to_scheduler(s, f, true);
}

// The current fiber waits at a block barrier (warp < 0) or a warp operation of warp `warp`.
FO_EMU_SCHEDULER Fiber* stopped_fiber(Scheduler& s, int warp) {
  Fiber* f = s.cur;
#if defined(FOCALOPS_EMULATE_TSAN)
  char* sync = warp < 0 ? &s.block_sync[s.block_epoch & 1] : &s.warp_sync[warp][s.warp_epoch[warp] & 1];
  __tsan_release(sync);
#endif
  to_scheduler(s, f, false);
#if defined(FOCALOPS_EMULATE_TSAN)
  __tsan_acquire(sync);
#endif
  (void)warp;
  return f;
}

FO_EMU_SCHEDULER const char* state_name(const Fiber& f) {
  switch (f.state) {
    case State::kExited:
      return "has exited";
    case State::kBlockBarrier:
      return "waits at a block barrier";
    case State::kWarpOp:
      return "waits at another warp operation";
    default:
      return "is running";
  }
}

// Releases the warp operations every named lane has reached. false: none could be released.
FO_EMU_SCHEDULER bool resolve_warps(Scheduler& s, int n) {
  bool released = false;
  for (int i = 0; i < n && !s.aborted; ++i) {
    Fiber& f = s.fibers[i];
    if (f.state != State::kWarpOp) continue;
    const int base = i & ~31, lane = i & 31;
    if (((f.mask >> lane) & 1u) == 0) {
      fail(s, cudaErrorLaunchFailure, "lane " + std::to_string(lane) + " calls a warp operation at " + where(f.site) +
                                          " with a mask that does not name it");
      return false;
    }
    Fiber* group[32] = {};
    for (int b = 0; b < 32; ++b) {
      if (((f.mask >> b) & 1u) == 0) continue;
      if (base + b >= n) {
        fail(s, cudaErrorLaunchFailure, "the mask of the warp operation at " + where(f.site) + " names lane " +
                                            std::to_string(b) + ", past the end of the block");
        return false;
      }
      Fiber& g = s.fibers[base + b];
      if (g.state != State::kWarpOp || !same_site(g.site, f.site) || g.mask != f.mask || g.op != f.op) {
        fail(s, cudaErrorLaunchFailure, "divergent warp operation at " + where(f.site) + ": lane " +
                                            std::to_string(b) + ", named in its mask, " +
                                            (g.state == State::kWarpOp ? "waits at " + where(g.site) : state_name(g)));
        return false;
      }
      group[b] = &g;
    }
    uint32_t ballot = 0;
    for (int b = 0; b < 32; ++b) {
      if (group[b] != nullptr && group[b]->bits != 0) ballot |= 1u << b;
    }
    for (int b = 0; b < 32; ++b) {
      Fiber* g = group[b];
      if (g == nullptr) continue;
      int src = b;
      if (f.op == kShflDown) src = b + g->arg < 32 ? b + g->arg : b;
      if (f.op == kShflXor) src = (b ^ g->arg) & 31;
      if (f.op == kBallot) {
        g->result = ballot;
      } else if (group[src] == nullptr) {
        fail(s, cudaErrorLaunchFailure, "the shuffle at " + where(f.site) + " reads lane " + std::to_string(src) +
                                            ", which is not in its mask");
        return false;
      } else {
        g->result = group[src]->bits;
      }
    }
    for (Fiber* g : group) {
      if (g != nullptr) g->state = State::kRunnable;
    }
#if defined(FOCALOPS_EMULATE_TSAN)
    ++s.warp_epoch[(base / 32) & 31];
#endif
    released = true;
  }
  return released;
}

// Releases the block barrier when every thread of the block has reached the same one.
FO_EMU_SCHEDULER bool resolve_block(Scheduler& s, int n) {
  const Fiber* first = nullptr;
  int exited = 0, pred = 0;
  for (int i = 0; i < n; ++i) {
    const Fiber& f = s.fibers[i];
    if (f.state == State::kExited) {
      ++exited;
      continue;
    }
    if (first == nullptr) first = &f;
    if (!same_site(f.site, first->site) || f.op != first->op) {
      fail(s, cudaErrorLaunchFailure, "threads of one block wait at different barriers: thread " +
                                          std::to_string(first->linear) + " at " + where(first->site) + ", thread " +
                                          std::to_string(f.linear) + " at " + where(f.site));
      return false;
    }
    pred |= f.pred;
  }
  if (first == nullptr) return false;
  if (exited > 0) {
    fail(s, cudaErrorLaunchFailure, "barrier at " + where(first->site) + " reached while " + std::to_string(exited) +
                                        " threads of the block have exited");
    return false;
  }
  for (int i = 0; i < n; ++i) {
    s.fibers[i].result = static_cast<uint64_t>(pred);
    s.fibers[i].state = State::kRunnable;
  }
#if defined(FOCALOPS_EMULATE_TSAN)
  ++s.block_epoch;
#endif
  return true;
}

FO_EMU_SCHEDULER void run_block(Scheduler& s, int n) {
  for (int i = 0; i < n; ++i) {
    Fiber& f = s.fibers[i];
    f.state = State::kRunnable;
    f.linear = i;
    f.ts.idx = uint3{static_cast<unsigned>(i) % s.block.dim.x, (static_cast<unsigned>(i) / s.block.dim.x) % s.block.dim.y,
                     static_cast<unsigned>(i) / (s.block.dim.x * s.block.dim.y)};
#if defined(FO_EMU_ASAN)
    // Frames of the fiber's last life (which never returned) leave their redzones poisoned.
    ASAN_UNPOISON_MEMORY_REGION(f.stack, kStackBytes);
#endif
    make_context(&f.ctx, f.stack, kStackBytes, fiber_entry);
  }
  for (;;) {
    for (int i = 0; i < n && !s.aborted; ++i) {
      if (s.fibers[i].state == State::kRunnable) to_fiber(s, &s.fibers[i]);
    }
    if (s.aborted) return;
    if (resolve_warps(s, n)) continue;
    if (s.aborted) return;
    bool waiting = false;
    for (int i = 0; i < n; ++i) waiting |= s.fibers[i].state == State::kWarpOp;
    if (waiting) {
      fail(s, cudaErrorLaunchFailure, "deadlock: a warp operation can never complete");
      return;
    }
    if (!resolve_block(s, n)) return;
  }
}

FO_EMU_SCHEDULER const Resources* resources_of(const void* kernel, const char** name) {
  Dl_info info{};
  *name = "?";
  if (dladdr(kernel, &info) == 0 || info.dli_sname == nullptr) return nullptr;
  *name = info.dli_sname;
  for (const Resources& r : kResources) {
    if (std::strcmp(r.name, info.dli_sname) == 0) return &r;
  }
  return nullptr;
}

FO_EMU_SCHEDULER void ensure_fibers(Scheduler& s, int n) {
  if (static_cast<int>(s.fibers.size()) >= n) return;
  const size_t old = s.fibers.size();
  s.fibers.resize(static_cast<size_t>(n));
  for (size_t i = old; i < s.fibers.size(); ++i) {
    void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "emulated CUDA: cannot map a fiber stack\n");
      std::abort();
    }
    s.fibers[i].stack = static_cast<char*>(p);
#if defined(FOCALOPS_EMULATE_TSAN)
    s.fibers[i].tsan = __tsan_create_fiber(0);
#endif
  }
}

FO_EMU_SCHEDULER uint64_t seed() {
  const char* env = std::getenv("FOCALOPS_EMU_SEED");
  return env != nullptr ? std::strtoull(env, nullptr, 10) : 0x5eedull;
}

}  // namespace

FO_EMU_SCHEDULER ThreadState& this_thread() { return t_sched.cur->ts; }
FO_EMU_SCHEDULER const BlockState& this_block() { return t_sched.block; }

FO_EMU_SCHEDULER int sync_block(Site site, int pred, int op) {
  Scheduler& s = t_sched;
  Fiber* f = s.cur;
  f->state = State::kBlockBarrier;
  f->site = site;
  f->op = op;
  f->pred = pred;
  stopped_fiber(s, -1);
  return static_cast<int>(f->result);
}

FO_EMU_SCHEDULER uint64_t warp_op(Site site, int kind, unsigned mask, uint64_t bits, int arg, int width) {
  Scheduler& s = t_sched;
  Fiber* f = s.cur;
  (void)width;
  f->state = State::kWarpOp;
  f->site = site;
  f->op = kind;
  f->mask = mask;
  f->bits = bits;
  f->arg = arg;
  stopped_fiber(s, f->linear / 32);
  return f->result;
}

FO_EMU_SCHEDULER void device_assert(const char* cond, const char* file, int line, const char* func) {
  Scheduler& s = t_sched;
  Fiber* f = s.cur;
  fail(s, cudaErrorAssert,
       std::string("device-side assertion `") + cond + "` failed in " + func + " at " + where(Site{file, line}) +
           " (thread " + std::to_string(f->linear) + ")");
  f->state = State::kExited;
#if defined(FOCALOPS_EMULATE_TSAN)
  __tsan_release(&s.launch_end);
#endif
  to_scheduler(s, f, true);
  std::abort();  // never resumed
}

FO_EMU_SCHEDULER cudaError_t last_error(bool clear) {
  Scheduler& s = t_sched;
  const cudaError_t e = s.error;
  if (clear && e != cudaSuccess) s.error = cudaSuccess;
  return e;
}

FO_EMU_SCHEDULER const char* error_string(cudaError_t e) {
  Scheduler& s = t_sched;
  if (e == s.failed) return s.message.c_str();
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorLaunchOutOfResources:
      return "too many resources requested for launch";
    case cudaErrorAssert:
      return "device-side assert triggered";
    default:
      return "unspecified launch failure";
  }
}

FO_EMU_SCHEDULER cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  const char* name = nullptr;
  const Resources* r = resources_of(kernel, &name);
  const int stat = r != nullptr ? r->shared : 0;
  if (bytes < 0 || stat + bytes > kOptInSharedLimit) return cudaErrorInvalidValue;
  t_sched.max_dynamic[kernel] = bytes;
  return cudaSuccess;
}

FO_EMU_SCHEDULER cudaError_t occupancy(int* blocks, const void* kernel, int threads, size_t dynamic_shared) {
  const char* name = nullptr;
  const Resources* r = resources_of(kernel, &name);
  if (r == nullptr || threads <= 0) return cudaErrorInvalidValue;
  const int warps = (threads + 31) / 32;
  const int regs_per_warp = ((r->registers * 32 + 255) / 256) * 256;
  int n = std::min(kBlocksPerSm, kThreadsPerSm / (warps * 32));
  if (regs_per_warp > 0) n = std::min(n, kRegistersPerSm / (regs_per_warp * warps));
  const int smem = r->shared + static_cast<int>(dynamic_shared) + 1024;  // 1 KiB reserved per block
  n = std::min(n, kSharedPerSm / smem);
  *blocks = std::max(n, 0);
  return cudaSuccess;
}

FO_EMU_SCHEDULER void launch(const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared, const std::function<void()>& body) {
  Scheduler& s = t_sched;
  if (s.error != cudaSuccess) return;  // an unread error stops later launches
  s.aborted = false;
  const Resources* r = resources_of(kernel, &s.kernel);
  s.block = BlockState{uint3{0, 0, 0}, block, grid, nullptr};
  const int64_t threads = int64_t{block.x} * block.y * block.z;
  auto refuse = [&](cudaError_t code, const std::string& why) { fail(s, code, "launch refused: " + why); };
  if (r == nullptr) {
    return refuse(cudaErrorInvalidValue, "kernel not in csrc/emu/kernel_resources.inc (regenerate it with "
                                         "csrc/emu/kernel_resources.py after building the CUDA kernels)");
  }
  if (threads < 1 || threads > kMaxThreadsPerBlock || block.z > 64) {
    return refuse(cudaErrorInvalidConfiguration, "block of " + std::to_string(threads) + " threads");
  }
  if (r->max_threads > 0 && threads > r->max_threads) {
    return refuse(cudaErrorLaunchOutOfResources, "block of " + std::to_string(threads) +
                                                     " threads above __launch_bounds__(" +
                                                     std::to_string(r->max_threads) + ")");
  }
  if (int64_t{r->registers} * threads > kRegistersPerSm) {
    return refuse(cudaErrorLaunchOutOfResources, "registers: " + std::to_string(r->registers) + " x " +
                                                     std::to_string(threads) + " threads");
  }
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.x > 0x7fffffffu || grid.y > kMaxGridYZ || grid.z > kMaxGridYZ) {
    return refuse(cudaErrorInvalidConfiguration, "grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) +
                                                     ", " + std::to_string(grid.z) + ")");
  }
  const auto opt_in = s.max_dynamic.find(kernel);
  const int64_t dyn = static_cast<int64_t>(dynamic_shared);
  const int64_t limit = opt_in != s.max_dynamic.end() ? r->shared + opt_in->second : kDefaultSharedLimit;
  if (r->shared + dyn > limit) {
    return refuse(cudaErrorInvalidValue, std::to_string(r->shared) + " B static + " + std::to_string(dyn) +
                                             " B dynamic shared memory, above the kernel's limit of " +
                                             std::to_string(limit) + " B");
  }
  const int n = static_cast<int>(threads);
  ensure_fibers(s, n);
  unsigned char* smem = dynamic_shared > 0 ? static_cast<unsigned char*>(std::malloc(dynamic_shared)) : nullptr;
  s.block.dynamic_shared = smem;
  s.body = &body;
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  std::vector<uint64_t> order(blocks);
  for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed() + s.launches++));
#if defined(FOCALOPS_EMULATE_TSAN)
  if (s.main_tsan == nullptr) s.main_tsan = __tsan_get_current_fiber();
  __tsan_release(&s.launch_begin);
#endif
  for (const uint64_t b : order) {
    s.block.idx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                        static_cast<unsigned>(b / (uint64_t{grid.x} * grid.y))};
    if (__stop_fo_emu_shared - __start_fo_emu_shared > 0) {
      std::memset(__start_fo_emu_shared, 0xFF, static_cast<size_t>(__stop_fo_emu_shared - __start_fo_emu_shared));
    }
    if (smem != nullptr) std::memset(smem, 0xFF, dynamic_shared);
    run_block(s, n);
    if (s.aborted) break;
  }
#if defined(FOCALOPS_EMULATE_TSAN)
  __tsan_acquire(&s.launch_end);
  if (s.aborted) {  // the threads left waiting released what they did at their barrier
    for (char& sync : s.block_sync) __tsan_acquire(&sync);
    for (auto& warp : s.warp_sync) {
      for (char& sync : warp) __tsan_acquire(&sync);
    }
  }
#endif
  std::free(smem);
  s.body = nullptr;
}

}  // namespace fo_emu
