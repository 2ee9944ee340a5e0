// Shared helpers for the hearth_uffd addon (see docs/uffd.md).
#pragma once

#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include <time.h>
#include <unistd.h>

namespace hearth {

// An OS error with the failing call and errno in the message, e.g.
// "recvmsg: Connection reset by peer (ECONNRESET)".
class SysError : public std::runtime_error {
 public:
  SysError(const std::string& what, int err)
      : std::runtime_error(what + ": " + std::strerror(err) + " (" + ErrnoName(err) + ")"), err_(err) {}
  int err() const { return err_; }
  static std::string ErrnoName(int err);

 private:
  int err_;
};

inline uint64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

// Owns a file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// Runs `work` on a dedicated thread (never the libuv pool: it may block for
// as long as a guest takes to fault) and settles the returned promise on the
// JS thread. `work` returns a completion that builds the JS value; an
// exception thrown by `work` rejects the promise with its message.
using Completion = std::function<Napi::Value(Napi::Env)>;
Napi::Promise RunOnThread(Napi::Env env, const char* name, std::function<Completion()> work);

uint64_t ToU64(const Napi::Value& v, const char* what);

Napi::Function InitPageServer(Napi::Env env);
Napi::Function InitListener(Napi::Env env);
Napi::Function InitFakeVmm(Napi::Env env);
Napi::Function InitPreadPages(Napi::Env env);
void InitFiles(Napi::Env env, Napi::Object exports);

}  // namespace hearth
