// hearth_uffd: a userfaultfd page server for Firecracker's Uffd memory backend,
// as a Node-API addon. The policy (which pages, prefetch order, accounting,
// supervision) lives in TypeScript (src/memory/uffd/); this file wires the
// native pieces: handshake listener, page server, file helpers and a
// test-only stand-in for Firecracker's side (FakeVmm).
#include "common.h"

#include <thread>

namespace hearth {

std::string SysError::ErrnoName(int err) {
  switch (err) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(EBADF) E(EAGAIN) E(ENOMEM) E(EACCES) E(EFAULT)
    E(EBUSY) E(EEXIST) E(EINVAL) E(ENFILE) E(EMFILE) E(ENOSPC) E(EPIPE) E(ERANGE) E(ENOSYS)
    E(ENOTSOCK) E(EADDRINUSE) E(ECONNRESET) E(ETIMEDOUT) E(ECONNREFUSED) E(ENAMETOOLONG) E(EOPNOTSUPP)
#undef E
    default: return "errno " + std::to_string(err);
  }
}

uint64_t ToU64(const Napi::Value& v, const char* what) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t x = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(v.Env(), std::string(what) + " does not fit in 64 bits");
    return x;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d < 0 || d > 9007199254740991.0 || d != static_cast<double>(static_cast<uint64_t>(d)))
      throw Napi::RangeError::New(v.Env(), std::string(what) + " must be a non-negative integer");
    return static_cast<uint64_t>(d);
  }
  throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a bigint or a number");
}

namespace {
struct Settle {
  Completion done;
  std::string error;
  std::shared_ptr<Napi::Promise::Deferred> deferred;
};
}  // namespace

Napi::Promise RunOnThread(Napi::Env env, const char* name, std::function<Completion()> work) {
  auto deferred = std::make_shared<Napi::Promise::Deferred>(env);
  auto tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), name, 0, 1);
  std::thread([tsfn, deferred, work = std::move(work)]() mutable {
    auto* s = new Settle{nullptr, "", deferred};
    try {
      s->done = work();
    } catch (const std::exception& e) {
      s->error = e.what();
      if (s->error.empty()) s->error = "native error";
    }
    napi_status st = tsfn.BlockingCall(s, [](Napi::Env env, Napi::Function, Settle* s) {
      if (!s->error.empty()) {
        s->deferred->Reject(Napi::Error::New(env, s->error).Value());
      } else {
        try {
          s->deferred->Resolve(s->done(env));
        } catch (const Napi::Error& e) {
          s->deferred->Reject(e.Value());
        } catch (const std::exception& e) {
          s->deferred->Reject(Napi::Error::New(env, e.what()).Value());
        }
      }
      delete s;
    });
    if (st != napi_ok) delete s;  // environment is shutting down
    tsfn.Release();
  }).detach();
  return deferred->Promise();
}

}  // namespace hearth

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("PageServer", hearth::InitPageServer(env));
  exports.Set("Listener", hearth::InitListener(env));
  hearth::InitFiles(env, exports);
  Napi::Object testing = Napi::Object::New(env);
  testing.Set("FakeVmm", hearth::InitFakeVmm(env));
  testing.Set("preadPages", hearth::InitPreadPages(env));
  exports.Set("testing", testing);
  return exports;
}

NODE_API_MODULE(hearth_uffd, Init)
