// Memory-file helpers that Node cannot do itself: the data extents of a
// sparse file (lseek SEEK_DATA/SEEK_HOLE) and punching holes where whole
// pages are zero (fallocate PUNCH_HOLE).
#include "common.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>

#include <vector>

namespace hearth {
namespace {

std::vector<std::pair<uint64_t, uint64_t>> Extents(int fd, uint64_t size) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  off_t pos = 0;
  while (uint64_t(pos) < size) {
    off_t data = lseek(fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole remains
      if (errno == EINVAL) {      // no SEEK_DATA support: the whole file is data
        out.clear();
        out.emplace_back(0, size);
        return out;
      }
      throw SysError("lseek SEEK_DATA", errno);
    }
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) throw SysError("lseek SEEK_HOLE", errno);
    if (!out.empty() && out.back().first + out.back().second == uint64_t(data)) out.back().second += uint64_t(hole - data);
    else out.emplace_back(uint64_t(data), uint64_t(hole - data));
    pos = hole;
  }
  return out;
}

Napi::Value DataExtents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "dataExtents(path: string)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) throw Napi::Error::New(env, SysError("open " + path, errno).what());
  struct stat sb;
  if (fstat(fd.get(), &sb) != 0) throw Napi::Error::New(env, SysError("fstat " + path, errno).what());
  std::vector<std::pair<uint64_t, uint64_t>> ex;
  try {
    ex = Extents(fd.get(), uint64_t(sb.st_size));
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
  Napi::Float64Array a = Napi::Float64Array::New(env, ex.size() * 2);
  for (size_t i = 0; i < ex.size(); i++) {
    a[i * 2] = double(ex[i].first);
    a[i * 2 + 1] = double(ex[i].second);
  }
  return a;
}

bool AllZero(const uint8_t* p, size_t n) {
  const uint64_t* q = reinterpret_cast<const uint64_t*>(p);
  for (size_t i = 0; i < n / 8; i++)
    if (q[i]) return false;
  return true;
}

Napi::Value PunchZeroPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString()) throw Napi::TypeError::New(env, "punchZeroPages(path: string, pageSize: number)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  uint64_t page = ToU64(info[1], "pageSize");
  if (page < 4096 || (page & (page - 1))) throw Napi::RangeError::New(env, "pageSize must be a power of two >= 4096");
  return RunOnThread(env, "hearth-uffd-punch", [path, page]() -> Completion {
    Fd fd(open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd.valid()) throw SysError("open " + path, errno);
    struct stat sb;
    if (fstat(fd.get(), &sb) != 0) throw SysError("fstat", errno);
    uint64_t size = uint64_t(sb.st_size);
    const uint64_t chunk = std::max<uint64_t>(page, 1 << 20);
    std::vector<uint8_t> buf(chunk);
    uint64_t punched = 0, scanned = 0;
    for (auto [off, len] : Extents(fd.get(), size)) {
      uint64_t start = (off + page - 1) / page * page;
      uint64_t end = (off + len) / page * page;
      uint64_t run_start = 0, run_len = 0;
      auto flush = [&]() {
        if (!run_len) return;
        if (fallocate(fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(run_start), off_t(run_len)) != 0)
          throw SysError("fallocate PUNCH_HOLE", errno);
        punched += run_len;
        run_len = 0;
      };
      for (uint64_t pos = start; pos < end; pos += chunk) {
        uint64_t n = std::min(chunk, end - pos);
        uint64_t got = 0;
        while (got < n) {
          ssize_t r = pread(fd.get(), buf.data() + got, n - got, off_t(pos + got));
          if (r < 0) {
            if (errno == EINTR) continue;
            throw SysError("pread", errno);
          }
          if (r == 0) throw std::runtime_error("unexpected end of file");
          got += uint64_t(r);
        }
        scanned += n;
        for (uint64_t p = 0; p < n; p += page) {
          if (AllZero(buf.data() + p, page)) {
            if (!run_len) run_start = pos + p;
            run_len += page;
          } else {
            flush();
          }
        }
      }
      flush();
    }
    if (fsync(fd.get()) != 0) throw SysError("fsync", errno);
    return [punched, scanned](Napi::Env env) -> Napi::Value {
      Napi::Object o = Napi::Object::New(env);
      o.Set("punchedBytes", double(punched));
      o.Set("scannedBytes", double(scanned));
      return o;
    };
  });
}

}  // namespace

void InitFiles(Napi::Env env, Napi::Object exports) {
  exports.Set("dataExtents", Napi::Function::New(env, DataExtents, "dataExtents"));
  exports.Set("punchZeroPages", Napi::Function::New(env, PunchZeroPages, "punchZeroPages"));
}

}  // namespace hearth
