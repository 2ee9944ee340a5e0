// Test-only: plays Firecracker's side of the Uffd backend, exactly as
// docs/uffd.md, "The handshake", describes it: anonymous private guest memory (optionally
// hugetlb 2 MiB), a userfaultfd with UFFD_FEATURE_EVENT_REMOVE registered in
// MISSING mode on every region, then one sendmsg of the JSON region list with
// the uffd as SCM_RIGHTS over a connection that stays open. Reading or
// writing the memory faults through whatever page server holds the uffd;
// madvise(MADV_DONTNEED) produces UFFD_EVENT_REMOVE as a balloon would.
// Exposed as `testing.FakeVmm`; the daemon never uses it.
#include "common.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

#include <algorithm>
#include <thread>
#include <vector>

#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif

namespace hearth {
namespace {

struct Mapping {
  uint8_t* addr;
  uint64_t size;
  uint64_t offset;
};

class FakeVmm : public Napi::ObjectWrap<FakeVmm> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "FakeVmm",
                       {InstanceMethod("read", &FakeVmm::Read), InstanceMethod("write", &FakeVmm::Write),
                        InstanceMethod("touch", &FakeVmm::Touch), InstanceMethod("dontneed", &FakeVmm::DontNeed),
                        InstanceMethod("disconnect", &FakeVmm::Disconnect), InstanceMethod("close", &FakeVmm::Close),
                        InstanceAccessor("handshake", &FakeVmm::GetHandshake, nullptr),
                        InstanceAccessor("size", &FakeVmm::GetSize, nullptr)});
  }

  explicit FakeVmm(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FakeVmm>(info) {
    Napi::Env env = info.Env();
    Napi::Object o = info[0].As<Napi::Object>();
    std::string path = o.Get("socketPath").As<Napi::String>().Utf8Value();
    page_size_ = o.Has("pageSize") ? ToU64(o.Get("pageSize"), "pageSize") : 4096;
    bool huge = page_size_ == (2u << 20);
    std::string fields = o.Has("fields") ? o.Get("fields").As<Napi::String>().Utf8Value() : "both";
    bool send_fd = !o.Has("sendFd") || o.Get("sendFd").ToBoolean();
    Napi::Array sizes = o.Get("regionSizes").As<Napi::Array>();

    uffd_.reset(int(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
    if (!uffd_.valid()) throw Napi::Error::New(env, SysError("userfaultfd", errno).what());
    struct uffdio_api api = {UFFD_API, UFFD_FEATURE_EVENT_REMOVE, 0};
    if (ioctl(uffd_.get(), UFFDIO_API, &api) != 0) throw Napi::Error::New(env, SysError("UFFDIO_API", errno).what());

    std::string json = "[";
    uint64_t offset = 0;
    for (uint32_t i = 0; i < sizes.Length(); i++) {
      uint64_t size = ToU64(sizes.Get(i), "regionSizes[]");
      int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
      if (huge) flags |= MAP_HUGETLB | (21 << MAP_HUGE_SHIFT);
      void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, -1, 0);
      if (m == MAP_FAILED) throw Napi::Error::New(env, SysError(huge ? "mmap MAP_HUGETLB" : "mmap", errno).what());
      maps_.push_back(Mapping{static_cast<uint8_t*>(m), size, offset});
      struct uffdio_register reg = {{reinterpret_cast<uint64_t>(m), size}, UFFDIO_REGISTER_MODE_MISSING, 0};
      if (ioctl(uffd_.get(), UFFDIO_REGISTER, &reg) != 0) throw Napi::Error::New(env, SysError("UFFDIO_REGISTER", errno).what());
      if (i) json += ",";
      json += "{\"base_host_virt_addr\":" + std::to_string(reinterpret_cast<uint64_t>(m)) + ",\"size\":" + std::to_string(size) +
              ",\"offset\":" + std::to_string(offset);
      if (fields == "both" || fields == "page_size") json += ",\"page_size\":" + std::to_string(page_size_);
      if (fields == "both" || fields == "page_size_kib") json += ",\"page_size_kib\":" + std::to_string(page_size_);
      json += "}";
      offset += size;
    }
    json += "]";
    total_ = offset;
    handshake_ = json;

    struct sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof(addr.sun_path)) throw Napi::RangeError::New(env, "socket path too long");
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    sock_.reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock_.valid()) throw Napi::Error::New(env, SysError("socket", errno).what());
    if (connect(sock_.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) != 0)
      throw Napi::Error::New(env, SysError("connect " + path, errno).what());
    struct iovec iov = {const_cast<char*>(json.data()), json.size()};
    struct msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(struct cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
    if (send_fd) {
      msg.msg_control = cbuf;
      msg.msg_controllen = sizeof(cbuf);
      struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      int fd = uffd_.get();
      std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    if (sendmsg(sock_.get(), &msg, MSG_NOSIGNAL) != ssize_t(json.size()))
      throw Napi::Error::New(env, SysError("sendmsg", errno).what());
    // Firecracker keeps its own copy of the uffd, so its faults hang forever if
    // the handler dies. In-process tests drop theirs: when the handler's copy
    // is then closed, the kernel releases the registration and a blocked fault
    // completes (with a zero page) instead of hanging the test process.
    if (o.Has("keepUffd") && !o.Get("keepUffd").ToBoolean()) uffd_.reset();
  }

  ~FakeVmm() override { Unmap(); }

 private:
  Fd uffd_, sock_;
  std::vector<Mapping> maps_;
  uint64_t page_size_ = 4096, total_ = 0;
  std::string handshake_;

  void Unmap() {
    for (auto& m : maps_) munmap(m.addr, m.size);
    maps_.clear();
  }

  uint8_t* At(Napi::Env env, uint64_t off, uint64_t len) {
    for (auto& m : maps_)
      if (off >= m.offset && off + len <= m.offset + m.size) return m.addr + (off - m.offset);
    throw Napi::RangeError::New(env, "range is not inside one region (or the VM was closed)");
  }

  Napi::Value GetHandshake(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), handshake_); }
  Napi::Value GetSize(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(total_)); }

  // Reads guest memory by memory-file offset; the range may span regions.
  Napi::Value Read(const Napi::CallbackInfo& info) {
    uint64_t off = ToU64(info[0], "offset"), len = ToU64(info[1], "length");
    if (off + len > total_ || off + len < off) throw Napi::RangeError::New(info.Env(), "read past the end of guest memory");
    Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(info.Env(), len);
    uint64_t done = 0;
    while (done < len) {
      for (auto& m : maps_) {
        uint64_t pos = off + done;
        if (pos < m.offset || pos >= m.offset + m.size) continue;
        uint64_t n = std::min(len - done, m.offset + m.size - pos);
        std::memcpy(out.Data() + done, m.addr + (pos - m.offset), n);
        done += n;
        break;
      }
      if (maps_.empty()) throw Napi::RangeError::New(info.Env(), "the VM was closed");
    }
    return out;
  }

  Napi::Value Write(const Napi::CallbackInfo& info) {
    uint64_t off = ToU64(info[0], "offset");
    Napi::Buffer<uint8_t> b = info[1].As<Napi::Buffer<uint8_t>>();
    uint8_t* p = At(info.Env(), off, b.Length());
    std::memcpy(p, b.Data(), b.Length());
    return info.Env().Undefined();
  }

  Napi::Value DontNeed(const Napi::CallbackInfo& info) {
    uint64_t off = ToU64(info[0], "offset"), len = ToU64(info[1], "length");
    uint8_t* p = At(info.Env(), off, len);
    if (madvise(p, len, MADV_DONTNEED) != 0) throw Napi::Error::New(info.Env(), SysError("madvise", errno).what());
    return info.Env().Undefined();
  }

  // touch({offset?, length?, threads?, copy?, write?, order?: 'seq'|'random', seed?})
  // Faults every page of the range from `threads` native threads; resolves to
  // {elapsedNs, latencyNs: Float64Array (per page, range order), data?: Buffer}.
  Napi::Value Touch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = info.Length() > 0 && info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(env);
    uint64_t off = o.Has("offset") ? ToU64(o.Get("offset"), "offset") : 0;
    uint64_t len = o.Has("length") ? ToU64(o.Get("length"), "length") : total_ - off;
    uint64_t threads = o.Has("threads") ? ToU64(o.Get("threads"), "threads") : 1;
    bool copy = o.Has("copy") && o.Get("copy").ToBoolean();
    bool write = o.Has("write") && o.Get("write").ToBoolean();
    bool random = o.Has("order") && o.Get("order").As<Napi::String>().Utf8Value() == "random";
    uint64_t seed = o.Has("seed") ? ToU64(o.Get("seed"), "seed") : 1;
    if (off % page_size_ || len % page_size_ || off + len > total_) throw Napi::RangeError::New(env, "touch range must be page aligned and inside memory");
    if (threads < 1 || threads > 64) throw Napi::RangeError::New(env, "threads must be 1..64");
    uint64_t npages = len / page_size_;
    std::vector<uint8_t*> addrs(npages);
    for (uint64_t i = 0; i < npages; i++) addrs[i] = At(env, off + i * page_size_, page_size_);
    uint64_t ps = page_size_;
    return RunOnThread(env, "hearth-uffd-touch", [addrs, npages, threads, copy, write, random, seed, ps]() -> Completion {
      std::vector<uint64_t> order(npages);
      for (uint64_t i = 0; i < npages; i++) order[i] = i;
      if (random) {
        uint64_t x = seed | 1;
        for (uint64_t i = npages; i > 1; i--) {
          x ^= x << 13; x ^= x >> 7; x ^= x << 17;
          std::swap(order[i - 1], order[x % i]);
        }
      }
      auto lat = std::make_shared<std::vector<double>>(npages);
      auto data = std::make_shared<std::vector<uint8_t>>(copy ? npages * ps : 0);
      uint64_t t0 = NowNs();
      std::vector<std::thread> ts;
      for (uint64_t t = 0; t < threads; t++) {
        ts.emplace_back([&, t] {
          for (uint64_t k = t; k < npages; k += threads) {
            uint64_t i = order[k];
            volatile uint8_t* p = addrs[i];
            uint64_t s = NowNs();
            if (write) p[0] = uint8_t(p[0] + 1);
            else (void)p[0];
            (*lat)[i] = double(NowNs() - s);
            if (copy) std::memcpy(data->data() + i * ps, addrs[i], ps);
          }
        });
      }
      for (auto& th : ts) th.join();
      double elapsed = double(NowNs() - t0);
      return [lat, data, elapsed, copy](Napi::Env env) -> Napi::Value {
        Napi::Object r = Napi::Object::New(env);
        r.Set("elapsedNs", elapsed);
        Napi::Float64Array a = Napi::Float64Array::New(env, lat->size());
        if (!lat->empty()) std::memcpy(a.Data(), lat->data(), lat->size() * sizeof(double));
        r.Set("latencyNs", a);
        if (copy) r.Set("data", Napi::Buffer<uint8_t>::Copy(env, data->data(), data->size()));
        return r;
      };
    });
  }

  Napi::Value Disconnect(const Napi::CallbackInfo& info) {
    sock_.reset();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    sock_.reset();
    Unmap();
    uffd_.reset();
    return info.Env().Undefined();
  }
};

// Benchmark baseline: pread(2) every page of a file, one page per call, in
// sequential or shuffled order; per-read latencies like FakeVmm.touch.
Napi::Value PreadPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Object o = info.Length() > 1 && info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env);
  uint64_t ps = o.Has("pageSize") ? ToU64(o.Get("pageSize"), "pageSize") : 4096;
  bool random = o.Has("order") && o.Get("order").As<Napi::String>().Utf8Value() == "random";
  uint64_t seed = o.Has("seed") ? ToU64(o.Get("seed"), "seed") : 1;
  return RunOnThread(env, "hearth-uffd-pread", [path, ps, random, seed]() -> Completion {
    Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) throw SysError("open " + path, errno);
    off_t size = lseek(fd.get(), 0, SEEK_END);
    uint64_t npages = uint64_t(size) / ps;
    std::vector<uint64_t> order(npages);
    for (uint64_t i = 0; i < npages; i++) order[i] = i;
    if (random) {
      uint64_t x = seed | 1;
      for (uint64_t i = npages; i > 1; i--) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        std::swap(order[i - 1], order[x % i]);
      }
    }
    auto lat = std::make_shared<std::vector<double>>(npages);
    std::vector<uint8_t> buf(ps);
    uint64_t t0 = NowNs();
    for (uint64_t k = 0; k < npages; k++) {
      uint64_t s = NowNs();
      if (pread(fd.get(), buf.data(), ps, off_t(order[k] * ps)) != ssize_t(ps)) throw SysError("pread", errno ? errno : EIO);
      (*lat)[order[k]] = double(NowNs() - s);
    }
    double elapsed = double(NowNs() - t0);
    return [lat, elapsed](Napi::Env env) -> Napi::Value {
      Napi::Object r = Napi::Object::New(env);
      r.Set("elapsedNs", elapsed);
      Napi::Float64Array a = Napi::Float64Array::New(env, lat->size());
      if (!lat->empty()) std::memcpy(a.Data(), lat->data(), lat->size() * sizeof(double));
      r.Set("latencyNs", a);
      return r;
    };
  });
}

}  // namespace

Napi::Function InitFakeVmm(Napi::Env env) { return FakeVmm::Init(env); }
Napi::Function InitPreadPages(Napi::Env env) { return Napi::Function::New(env, PreadPages, "preadPages"); }

}  // namespace hearth
