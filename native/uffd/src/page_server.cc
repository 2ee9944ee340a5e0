// The fault loop: one native thread per served VM (never the JS event loop).
//
// It owns the userfaultfd Firecracker sent, polls it together with the
// handshake connection (whose hang-up means Firecracker exited) and an
// eventfd (stop / test hooks), and answers:
//   - UFFD_EVENT_PAGEFAULT: UFFDIO_COPY of the page from the mmap'd memory
//     file, or a zero page (UFFDIO_ZEROPAGE; for hugetlb pages a UFFDIO_COPY
//     from a zero buffer, as hugetlbfs has no zeropage ioctl) when the page
//     was never written (the caller's data bitmap says it is a hole) or was
//     removed by the balloon;
//   - UFFD_EVENT_REMOVE: marks the range removed; later faults there get zero
//     pages, never file contents (docs/uffd.md, "Faults and balloon removals").
// All pending events are drained before any fault is served (a pending
// REMOVE makes every ioctl fail with EAGAIN). EEXIST means another vCPU's
// fault or the prefetcher got there first (the range is woken, to be safe);
// EAGAIN defers the fault until more events were read. Between faults the
// thread copies the caller's prefetch list (the recorded working set) in
// runs of up to 64 pages, and optionally every remaining page, after which
// it can unregister the regions so the VM no longer needs a handler.
#include "common.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <array>
#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

namespace hearth {
namespace {

struct Region {
  uint64_t base, size, offset;
};

enum class Outcome { kDone, kPartial, kExists, kAgain, kGone, kPeerExited };
struct Result {
  Outcome outcome;
  uint64_t bytes;
};

struct Fault {
  uint64_t addr;
  uint64_t t_read;
};

struct Event {
  std::string kind;
  std::string reason;
  std::string message;
  double a = 0, b = 0;
};

constexpr int kBuckets = 40;
constexpr uint64_t kRunPages4K = 64;

inline bool BitGet(const std::vector<uint8_t>& bm, uint64_t i) { return (bm[i >> 3] >> (i & 7)) & 1; }
inline void BitSet(std::vector<uint8_t>& bm, uint64_t i) { bm[i >> 3] |= uint8_t(1u << (i & 7)); }

class PageServer : public Napi::ObjectWrap<PageServer> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "PageServer",
                       {InstanceMethod("stats", &PageServer::Stats), InstanceMethod("stop", &PageServer::Stop),
                        InstanceMethod("setRecording", &PageServer::SetRecording),
                        InstanceMethod("takeTouched", &PageServer::TakeTouched),
                        InstanceMethod("debugCrash", &PageServer::DebugCrash)});
  }

  explicit PageServer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PageServer>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "PageServer(options)");
    Napi::Object o = info[0].As<Napi::Object>();
    // Take the fds first, so that they are closed on any validation error below.
    uffd_.reset(int(ToU64(o.Get("uffd"), "uffd")));
    Napi::Value conn = o.Get("conn");
    if (conn.IsNumber() && conn.As<Napi::Number>().Int32Value() >= 0) conn_.reset(conn.As<Napi::Number>().Int32Value());

    page_size_ = ToU64(o.Get("pageSize"), "pageSize");
    if (page_size_ < 4096 || (page_size_ & (page_size_ - 1)) != 0)
      throw Napi::RangeError::New(env, "pageSize must be a power of two >= 4096");
    std::string mem_path = o.Get("memoryPath").As<Napi::String>().Utf8Value();
    mem_fd_.reset(open(mem_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!mem_fd_.valid()) throw Napi::Error::New(env, SysError("open " + mem_path, errno).what());
    struct stat sb;
    if (fstat(mem_fd_.get(), &sb) != 0) throw Napi::Error::New(env, SysError("fstat", errno).what());
    file_size_ = uint64_t(sb.st_size);
    if (file_size_ == 0 || file_size_ % page_size_ != 0)
      throw Napi::RangeError::New(env, "memory file size " + std::to_string(file_size_) + " is not a multiple of the page size");
    void* m = mmap(nullptr, file_size_, PROT_READ, MAP_PRIVATE, mem_fd_.get(), 0);
    if (m == MAP_FAILED) throw Napi::Error::New(env, SysError("mmap memory file", errno).what());
    mem_ = static_cast<uint8_t*>(m);
    file_pages_ = file_size_ / page_size_;

    Napi::Array regions = o.Get("regions").As<Napi::Array>();
    for (uint32_t i = 0; i < regions.Length(); i++) {
      Napi::Object r = regions.Get(i).As<Napi::Object>();
      Region reg{ToU64(r.Get("base"), "region.base"), ToU64(r.Get("size"), "region.size"), ToU64(r.Get("offset"), "region.offset")};
      if (reg.base % page_size_ || reg.size % page_size_ || reg.offset % page_size_ || reg.size == 0)
        throw Napi::RangeError::New(env, "region " + std::to_string(i) + " is not aligned to the page size");
      if (reg.offset + reg.size > file_size_ || reg.offset + reg.size < reg.offset)
        throw Napi::RangeError::New(env, "region " + std::to_string(i) + " extends past the end of the memory file");
      regions_.push_back(reg);
    }
    if (regions_.empty()) throw Napi::RangeError::New(env, "no memory regions");

    Napi::Value bm = o.Get("dataBitmap");
    if (bm.IsTypedArray() || bm.IsBuffer()) {
      Napi::Uint8Array a = bm.As<Napi::Uint8Array>();
      if (a.ByteLength() * 8 < file_pages_) throw Napi::RangeError::New(env, "dataBitmap is shorter than the memory file");
      data_bitmap_.assign(a.Data(), a.Data() + a.ByteLength());
      has_bitmap_ = true;
    }
    Napi::Value pf = o.Get("prefetch");
    if (pf.IsTypedArray()) {
      Napi::Uint32Array a = pf.As<Napi::Uint32Array>();
      prefetch_.reserve(a.ElementLength());
      for (size_t i = 0; i < a.ElementLength(); i++)
        if (a[i] < file_pages_) prefetch_.push_back(a[i]);
    }
    populate_all_ = o.Get("populateAll").ToBoolean();
    detach_when_populated_ = o.Get("detachWhenPopulated").ToBoolean();
    recording_ = o.Get("record").ToBoolean();
    removed_.assign((file_pages_ + 7) / 8, 0);
    touched_bm_.assign((file_pages_ + 7) / 8, 0);

    if (page_size_ != 4096) {
      void* z = mmap(nullptr, page_size_, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (z == MAP_FAILED) throw Napi::Error::New(env, SysError("mmap zero buffer", errno).what());
      zero_buf_ = static_cast<uint8_t*>(z);
    }
    wake_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_.valid()) throw Napi::Error::New(env, SysError("eventfd", errno).what());

    Napi::Value cb = o.Get("onEvent");
    if (!cb.IsFunction()) throw Napi::TypeError::New(env, "onEvent must be a function");
    tsfn_ = Napi::ThreadSafeFunction::New(env, cb.As<Napi::Function>(), "hearth-uffd-events", 0, 1);
    // Kept referenced: a serving page server is work in progress (its events must be delivered); the
    // thread releases the function when it ends, after which the process may exit.
    start_ns_ = NowNs();
    running_ = true;
    thread_ = std::thread([this] { Loop(); });
  }

  ~PageServer() override {
    StopThread();
    Cleanup();
  }

 private:
  // ---- configuration (immutable once the thread runs)
  Fd uffd_, conn_, mem_fd_, wake_;
  uint8_t* mem_ = nullptr;
  uint8_t* zero_buf_ = nullptr;
  uint64_t file_size_ = 0, file_pages_ = 0, page_size_ = 4096;
  std::vector<Region> regions_;
  std::vector<uint8_t> data_bitmap_;
  bool has_bitmap_ = false;
  std::vector<uint32_t> prefetch_;
  bool populate_all_ = false, detach_when_populated_ = false;

  // ---- worker state
  std::thread thread_;
  Napi::ThreadSafeFunction tsfn_;
  std::vector<uint8_t> removed_;
  uint64_t prefetch_pos_ = 0;
  uint64_t populate_pos_ = 0;
  bool prefetch_reported_ = false;
  uint64_t prefetch_t0_ = 0;
  uint64_t start_ns_ = 0;
  bool stopped_joined_ = false;

  // ---- shared with the JS thread
  std::atomic<bool> running_{false}, stop_requested_{false}, crash_requested_{false}, recording_{false};
  std::atomic<uint64_t> faults_{0}, copied_pages_{0}, zero_pages_{0}, bytes_copied_{0}, eexist_{0}, eagain_{0}, enoent_{0};
  std::atomic<uint64_t> remove_events_{0}, removed_bytes_{0}, prefetched_pages_{0}, populated_pages_{0}, unexpected_events_{0};
  std::atomic<uint64_t> first_fault_ns_{0}, last_fault_ns_{0}, sum_latency_ns_{0}, max_latency_ns_{0};
  std::array<std::atomic<uint64_t>, kBuckets> hist_{};
  std::mutex touched_mu_;
  std::vector<uint32_t> touched_;
  std::vector<uint8_t> touched_bm_;  // worker only
  std::string exit_reason_, exit_error_;
  std::mutex exit_mu_;

  // ------------------------------------------------------------------ loop

  void Loop() {
    std::string reason = "stopped", error;
    try {
      Run(reason);
    } catch (const std::exception& e) {
      reason = "error";
      error = e.what();
    }
    {
      std::lock_guard<std::mutex> g(exit_mu_);
      exit_reason_ = reason;
      exit_error_ = error;
    }
    // The uffd is useless now; closing it early lets the kernel release the
    // registration if nobody else holds it (Firecracker does: its faults then
    // hang until the owner kills it, see docs/uffd.md).
    uffd_.reset();
    conn_.reset();
    running_ = false;
    Emit(Event{"exit", reason, error});
    tsfn_.Release();
  }

  void Run(std::string& reason) {
    std::vector<Fault> pending;
    for (;;) {
      if (stop_requested_) { reason = "stopped"; return; }
      if (crash_requested_) throw std::runtime_error("injected crash (testing hook)");
      bool background = prefetch_pos_ < prefetch_.size() || (populate_all_ && populate_pos_ < file_pages_);
      int timeout = !pending.empty() ? 1 : (background ? 0 : -1);
      struct pollfd p[3] = {{uffd_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}, {conn_.get(), POLLIN | POLLRDHUP, 0}};
      int np = conn_.valid() ? 3 : 2;
      int n = poll(p, nfds_t(np), timeout);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw SysError("poll", errno);
      }
      if (p[1].revents & POLLIN) {
        uint64_t v;
        (void)!read(wake_.get(), &v, sizeof(v));
        continue;  // flags are checked at the top
      }
      if (np == 3 && p[2].revents) {
        if (p[2].revents & (POLLHUP | POLLRDHUP | POLLERR)) { reason = "peer-closed"; return; }
        char b[256];
        ssize_t r = recv(conn_.get(), b, sizeof(b), MSG_DONTWAIT);  // Firecracker sends nothing more; discard
        if (r == 0) { reason = "peer-closed"; return; }
      }
      if (p[0].revents & (POLLERR | POLLHUP)) { reason = "peer-closed"; return; }
      if (p[0].revents & POLLIN) ReadEvents(pending);
      if (!pending.empty()) {
        if (!ServePending(pending)) { reason = "peer-exited"; return; }
      }
      if (pending.empty() && background) {
        if (!BackgroundStep()) { reason = "peer-exited"; return; }
        if (populate_all_ && detach_when_populated_ && populate_pos_ >= file_pages_ && prefetch_pos_ >= prefetch_.size()) {
          // Everything is resident: serve what is still queued, then let the kernel take over.
          ReadEvents(pending);
          if (!pending.empty()) continue;
          for (const Region& r : regions_) {
            struct uffdio_range range = {r.base, r.size};
            if (ioctl(uffd_.get(), UFFDIO_UNREGISTER, &range) != 0 && errno != ENOENT && errno != ESRCH)
              throw SysError("UFFDIO_UNREGISTER", errno);
          }
          Emit(Event{"populated", "", "", double(populated_pages_.load()), double(NowNs() - start_ns_)});
          reason = "detached";
          return;
        }
      }
    }
  }

  void ReadEvents(std::vector<Fault>& pending) {
    struct uffd_msg msgs[64];
    for (;;) {
      ssize_t n = read(uffd_.get(), msgs, sizeof(msgs));
      if (n < 0) {
        if (errno == EAGAIN) return;
        if (errno == EINTR) continue;
        throw SysError("read userfaultfd", errno);
      }
      if (n == 0) return;
      uint64_t t = NowNs();
      size_t count = size_t(n) / sizeof(struct uffd_msg);
      for (size_t i = 0; i < count; i++) {
        const struct uffd_msg& m = msgs[i];
        switch (m.event) {
          case UFFD_EVENT_PAGEFAULT:
            faults_.fetch_add(1, std::memory_order_relaxed);
            if (first_fault_ns_.load(std::memory_order_relaxed) == 0) first_fault_ns_ = t - start_ns_ + 1;
            pending.push_back(Fault{m.arg.pagefault.address & ~(page_size_ - 1), t});
            break;
          case UFFD_EVENT_REMOVE:
            MarkRemoved(m.arg.remove.start, m.arg.remove.end);
            break;
          default:
            unexpected_events_.fetch_add(1, std::memory_order_relaxed);
            break;
        }
      }
      if (count < 64) return;
    }
  }

  void MarkRemoved(uint64_t start, uint64_t end) {
    remove_events_.fetch_add(1, std::memory_order_relaxed);
    start &= ~(page_size_ - 1);
    end = (end + page_size_ - 1) & ~(page_size_ - 1);
    for (const Region& r : regions_) {
      uint64_t s = std::max(start, r.base), e = std::min(end, r.base + r.size);
      if (s >= e) continue;
      removed_bytes_.fetch_add(e - s, std::memory_order_relaxed);
      for (uint64_t a = s; a < e; a += page_size_) BitSet(removed_, (r.offset + (a - r.base)) / page_size_);
    }
  }

  // Serves queued faults in order; stops at the first EAGAIN (a REMOVE is
  // pending: read it first). Returns false if Firecracker's mm is gone.
  bool ServePending(std::vector<Fault>& pending) {
    size_t i = 0;
    for (; i < pending.size(); i++) {
      const Fault& f = pending[i];
      const Region* r = Find(f.addr);
      if (!r) {
        char buf[64];
        snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(f.addr));
        throw std::runtime_error(std::string("page fault at ") + buf + " outside every memory region");
      }
      uint64_t off = r->offset + (f.addr - r->base);
      uint64_t page = off / page_size_;
      // Recorded before the copy wakes the faulting thread, so that whoever
      // it tells next ("ready") finds the page in the working set.
      if (recording_.load(std::memory_order_relaxed) && !BitGet(touched_bm_, page)) {
        BitSet(touched_bm_, page);
        std::lock_guard<std::mutex> g(touched_mu_);
        touched_.push_back(uint32_t(page));
      }
      Result res = ServeRun(f.addr, page, 1);
      if (res.outcome == Outcome::kAgain) {
        eagain_.fetch_add(1, std::memory_order_relaxed);
        break;
      }
      if (res.outcome == Outcome::kPeerExited) return false;
      if (res.outcome == Outcome::kExists) {
        eexist_.fetch_add(1, std::memory_order_relaxed);
        struct uffdio_range range = {f.addr, page_size_};
        ioctl(uffd_.get(), UFFDIO_WAKE, &range);
      } else if (res.outcome == Outcome::kGone) {
        enoent_.fetch_add(1, std::memory_order_relaxed);
      }
      uint64_t lat = NowNs() - f.t_read;
      sum_latency_ns_.fetch_add(lat, std::memory_order_relaxed);
      if (lat > max_latency_ns_.load(std::memory_order_relaxed)) max_latency_ns_ = lat;
      int b = lat ? 63 - __builtin_clzll(lat) : 0;
      hist_[size_t(std::min(b, kBuckets - 1))].fetch_add(1, std::memory_order_relaxed);
      last_fault_ns_ = NowNs() - start_ns_;
    }
    pending.erase(pending.begin(), pending.begin() + long(i));
    return true;
  }

  const Region* Find(uint64_t addr) const {
    for (const Region& r : regions_)
      if (addr >= r.base && addr - r.base < r.size) return &r;
    return nullptr;
  }

  const Region* FindByPage(uint64_t page) const {
    uint64_t off = page * page_size_;
    for (const Region& r : regions_)
      if (off >= r.offset && off - r.offset < r.size) return &r;
    return nullptr;
  }

  bool IsZero(uint64_t page) const { return BitGet(removed_, page) || (has_bitmap_ && !BitGet(data_bitmap_, page)); }

  // Fills `npages` file pages starting at `page` (all in one region, all of one
  // kind) at host address `addr`.
  Result ServeRun(uint64_t addr, uint64_t page, uint64_t npages) {
    uint64_t len = npages * page_size_;
    bool zero = IsZero(page);
    Result res;
    if (zero && page_size_ == 4096) {
      struct uffdio_zeropage z = {{addr, len}, 0, 0};
      if (ioctl(uffd_.get(), UFFDIO_ZEROPAGE, &z) == 0) res = {Outcome::kDone, len};
      else res = Classify(errno, z.zeropage);
      if (res.outcome == Outcome::kDone || res.outcome == Outcome::kPartial)
        zero_pages_.fetch_add(res.bytes / page_size_, std::memory_order_relaxed);
      return res;
    }
    if (zero) {
      // hugetlbfs has no UFFDIO_ZEROPAGE: copy from a zero buffer, one page at a time.
      len = page_size_;
      struct uffdio_copy c = {addr, reinterpret_cast<uint64_t>(zero_buf_), len, 0, 0};
      if (ioctl(uffd_.get(), UFFDIO_COPY, &c) == 0) res = {Outcome::kDone, len};
      else res = Classify(errno, c.copy);
      if (res.outcome == Outcome::kDone) zero_pages_.fetch_add(1, std::memory_order_relaxed);
      return res;
    }
    struct uffdio_copy c = {addr, reinterpret_cast<uint64_t>(mem_ + page * page_size_), len, 0, 0};
    if (ioctl(uffd_.get(), UFFDIO_COPY, &c) == 0) res = {Outcome::kDone, len};
    else res = Classify(errno, c.copy);
    if (res.outcome == Outcome::kDone || res.outcome == Outcome::kPartial) {
      copied_pages_.fetch_add(res.bytes / page_size_, std::memory_order_relaxed);
      bytes_copied_.fetch_add(res.bytes, std::memory_order_relaxed);
    }
    return res;
  }

  Result Classify(int err, int64_t done) {
    if (done > 0) return {Outcome::kPartial, uint64_t(done)};
    if (done < 0) err = int(-done);
    switch (err) {
      case EEXIST: return {Outcome::kExists, 0};
      case EAGAIN: return {Outcome::kAgain, 0};
      case ENOENT: return {Outcome::kGone, 0};   // range no longer registered
      case ESRCH: return {Outcome::kPeerExited, 0};  // Firecracker's mm is gone
      default: throw SysError(page_size_ == 4096 ? "UFFDIO_COPY/ZEROPAGE" : "UFFDIO_COPY (hugetlb)", err);
    }
  }

  // One bounded chunk of prefetch (or background population). Returns false
  // if Firecracker's mm is gone.
  bool BackgroundStep() {
    bool prefetching = prefetch_pos_ < prefetch_.size();
    if (prefetching && prefetch_t0_ == 0) prefetch_t0_ = NowNs();
    auto page_at = [&](uint64_t i) -> uint64_t { return prefetching ? prefetch_[i] : i; };
    uint64_t& pos = prefetching ? prefetch_pos_ : populate_pos_;
    uint64_t end = prefetching ? prefetch_.size() : file_pages_;
    uint64_t max_run = page_size_ == 4096 ? kRunPages4K : 1;
    // Skip pages outside every region.
    const Region* r = nullptr;
    while (pos < end && !(r = FindByPage(page_at(pos)))) pos++;
    if (r) {
      uint64_t p0 = page_at(pos);
      bool zero = IsZero(p0);
      uint64_t n = 1;
      while (n < max_run && pos + n < end && page_at(pos + n) == p0 + n && FindByPage(p0 + n) == r && IsZero(p0 + n) == zero) n++;
      uint64_t addr = r->base + (p0 * page_size_ - r->offset);
      Result res = ServeRun(addr, p0, n);
      switch (res.outcome) {
        case Outcome::kDone: pos += n; Count(prefetching, n); break;
        case Outcome::kPartial: pos += res.bytes / page_size_; Count(prefetching, res.bytes / page_size_); break;
        case Outcome::kExists: case Outcome::kGone: pos += 1; break;  // already there / not registered
        case Outcome::kAgain: eagain_.fetch_add(1, std::memory_order_relaxed); break;  // read events first
        case Outcome::kPeerExited: return false;
      }
    }
    if (prefetching && pos >= end && !prefetch_reported_) {
      prefetch_reported_ = true;
      Emit(Event{"prefetched", "", "", double(prefetched_pages_.load()), double(NowNs() - prefetch_t0_)});
    }
    return true;
  }

  void Count(bool prefetching, uint64_t n) {
    (prefetching ? prefetched_pages_ : populated_pages_).fetch_add(n, std::memory_order_relaxed);
  }

  void Emit(Event ev) {
    auto* e = new Event(std::move(ev));
    napi_status st = tsfn_.NonBlockingCall(e, [](Napi::Env env, Napi::Function cb, Event* e) {
      Napi::Object info = Napi::Object::New(env);
      if (!e->reason.empty()) info.Set("reason", e->reason);
      if (!e->message.empty()) info.Set("error", e->message);
      if (e->kind == "prefetched" || e->kind == "populated") {
        info.Set("pages", e->a);
        info.Set("ns", e->b);
      }
      std::string kind = e->kind;
      delete e;
      try {
        cb.Call({Napi::String::New(env, kind), info});
      } catch (...) {
        // An exception in the JS listener must not unwind into the runtime.
      }
    });
    if (st != napi_ok) delete e;
  }

  // ------------------------------------------------------------------ JS methods

  void StopThread() {
    if (thread_.joinable()) {
      stop_requested_ = true;
      uint64_t one = 1;
      if (wake_.valid()) (void)!write(wake_.get(), &one, sizeof(one));
      thread_.join();
    }
  }

  void Cleanup() {
    if (mem_) munmap(mem_, file_size_);
    mem_ = nullptr;
    if (zero_buf_) munmap(zero_buf_, page_size_);
    zero_buf_ = nullptr;
    uffd_.reset();
    conn_.reset();
    mem_fd_.reset();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    StopThread();
    Cleanup();
    return info.Env().Undefined();
  }

  Napi::Value DebugCrash(const Napi::CallbackInfo& info) {
    crash_requested_ = true;
    uint64_t one = 1;
    if (wake_.valid()) (void)!write(wake_.get(), &one, sizeof(one));
    return info.Env().Undefined();
  }

  Napi::Value SetRecording(const Napi::CallbackInfo& info) {
    recording_ = info.Length() > 0 && info[0].ToBoolean();
    return info.Env().Undefined();
  }

  Napi::Value TakeTouched(const Napi::CallbackInfo& info) {
    std::vector<uint32_t> out;
    {
      std::lock_guard<std::mutex> g(touched_mu_);
      out.swap(touched_);
    }
    Napi::Uint32Array a = Napi::Uint32Array::New(info.Env(), out.size());
    if (!out.empty()) std::memcpy(a.Data(), out.data(), out.size() * sizeof(uint32_t));
    return a;
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    auto num = [&](const char* k, uint64_t v) { o.Set(k, Napi::Number::New(env, double(v))); };
    o.Set("running", Napi::Boolean::New(env, running_.load()));
    num("pageSize", page_size_);
    num("filePages", file_pages_);
    num("faults", faults_);
    num("copiedPages", copied_pages_);
    num("zeroPages", zero_pages_);
    num("bytesCopied", bytes_copied_);
    num("eexist", eexist_);
    num("eagain", eagain_);
    num("enoent", enoent_);
    num("removeEvents", remove_events_);
    num("removedBytes", removed_bytes_);
    num("prefetchedPages", prefetched_pages_);
    num("prefetchTotal", prefetch_.size());
    num("populatedPages", populated_pages_);
    num("unexpectedEvents", unexpected_events_);
    num("firstFaultNs", first_fault_ns_ ? first_fault_ns_ - 1 : 0);
    num("lastFaultNs", last_fault_ns_);
    num("latencySumNs", sum_latency_ns_);
    num("latencyMaxNs", max_latency_ns_);
    num("uptimeNs", NowNs() - start_ns_);
    Napi::Array h = Napi::Array::New(env, kBuckets);
    for (int i = 0; i < kBuckets; i++) h.Set(uint32_t(i), Napi::Number::New(env, double(hist_[size_t(i)].load())));
    o.Set("latencyLog2Ns", h);
    {
      std::lock_guard<std::mutex> g(exit_mu_);
      if (!exit_reason_.empty()) o.Set("exitReason", exit_reason_);
      if (!exit_error_.empty()) o.Set("error", exit_error_);
    }
    return o;
  }
};

}  // namespace

Napi::Function InitPageServer(Napi::Env env) { return PageServer::Init(env); }

}  // namespace hearth
